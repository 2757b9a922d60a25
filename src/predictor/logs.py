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
    for noisy in (
        *("mlflow", "alembic", "urllib3", "httpx", "sentence_transformers", "bentoml", "filelock"),
        *("distributed", "tornado", "lightgbm"),
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_lightgbm()


def quiet_lightgbm() -> None:
    """LightGBM's native log (distributed training narrates every socket it binds) to Python's, at WARNING."""
    import lightgbm

    logger = logging.getLogger("lightgbm")
    logger.setLevel(logging.WARNING)
    if _drop_n_jobs_notice not in logger.filters:  # called once per command and per Dask worker
        logger.addFilter(_drop_n_jobs_notice)
    lightgbm.register_logger(logger)
    # Still printed: the socket set-up of distributed training, logged by the library before it reads any
    # parameter, in each worker's training thread (LightGBM's log callback is per thread).


def _drop_n_jobs_notice(record: logging.LogRecord) -> bool:
    """lightgbm.dask sets each worker's threads itself, and warns so on every fit."""
    return "n_jobs will be ignored" not in record.getMessage()
