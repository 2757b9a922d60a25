"""Closing the loop: the follow-up experiment's arms, what was sent, what happened, and what it prevented."""
