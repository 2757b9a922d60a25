"""Logging set-up, done when a command runs (never at import)."""

from __future__ import annotations

import logging

from rich.logging import RichHandler


def setup(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(rich_tracebacks=False, show_path=False)],
        force=True,
    )
    # Libraries that narrate every step at INFO drown what our own stages say.
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "sentence_transformers", "bentoml", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
