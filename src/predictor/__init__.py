"""Repeat-contact predictor: which closed contacts will come back, with what, when, and what to do first."""

__version__ = "0.1.0"
