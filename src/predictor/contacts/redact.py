"""PII redaction of contact text: applied before a transcript is stored and before it is embedded."""

from __future__ import annotations

import re

_PII_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Bounded parts, tried only where a run of address characters starts: linear time on any input (the
    # unbounded form took seconds on one long run of letters or digits, quadratic in its length).
    (re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}"), "[EMAIL]"),
    (re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), "[CARD]"),
    # A phone number has a leading + or separators; a bare run of digits is an account-like number.
    (re.compile(r"(?<![\w])(?:\+\d[\d ()-]{6,}\d|\(?\d{2,5}\)?[ -]\d{3,4}[ -]?\d{3,4})\b"), "[PHONE]"),
    (re.compile(r"\b\d{6,}\b"), "[NUMBER]"),
)


def redact(text: str) -> str:
    """Replace e-mail addresses, card-, phone- and account-like numbers by placeholders."""
    for pattern, placeholder in _PII_PATTERNS:
        text = pattern.sub(placeholder, text)
    return text
