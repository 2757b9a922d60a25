"""Who is held out of follow-ups: a randomised control group, deterministic per customer and experiment.

A hash of the experiment's name and the customer id is as good as a coin for assignment (it knows nothing of
the customer) and needs no state: every replica of the service, a re-run, and the analysis agree on a
customer's arm, and a customer keeps it for the whole experiment period.
"""

from __future__ import annotations

import hashlib

TREATED = "treated"
HELD_OUT = "held_out"


def position(customer_id: str, experiment: str) -> float:
    """The customer's uniform draw in [0, 1) for this experiment."""
    digest = hashlib.sha256(f"{experiment}\0{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm(customer_id: str, experiment: str, holdout_share: float) -> str:
    """``HELD_OUT`` for a ``holdout_share`` of customers, ``TREATED`` for the rest."""
    return HELD_OUT if position(customer_id, experiment) < holdout_share else TREATED
