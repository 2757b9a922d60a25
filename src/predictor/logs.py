"""Logging set-up, done when a command runs (never at import)."""

from __future__ import annotations

import logging
import sys

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(verbose: bool = False, plain: bool | None = None) -> None:
    """Rich's columns, wrapped to the terminal's width (or COLUMNS), for a person running a command; plain
    lines (time, level, logger) for a service's log file (``plain``; default: when stderr is no terminal and
    no width is set).

    Rich lays each record out as a table: ~4 ms per line, paid by a service for every access-log line."""
    import os

    level = logging.DEBUG if verbose else logging.INFO
    if plain is None:
        plain = not sys.stderr.isatty() and "COLUMNS" not in os.environ
    if not plain:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(rich_tracebacks=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Libraries that narrate every step at INFO drown what our own stages say.
    for noisy in (
        *("mlflow", "alembic", "urllib3", "httpx", "sentence_transformers", "bentoml", "filelock"),
        *("distributed", "tornado", "lightgbm", "model2vec", "skeletoken", "tokenizers", "transformers"),
    ):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    quiet_lightgbm()
    if not verbose:
        import os
        import warnings

        # MLflow sets up its own loggers when first imported (later than this), at MLFLOW_LOGGING_LEVEL.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # Hints MLflow gives on every registration (an integer column, a dataset source it resolved), for
        # its developers rather than ours: shown with --verbose.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\..*)?")


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


# Where BentoML logs every failed request, with a traceback and pydantic's ``input_value`` (parts of the
# rejected input: 11 of 16 card digits reached the log).
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


def rejected_request(record: logging.LogRecord) -> bool:
    """A request the caller got wrong becomes one WARNING line naming the fields and reasons, never the values;
    a fault of ours (5xx) keeps its traceback."""
    if not record.exc_info or record.exc_info[1] is None:
        return True
    error = record.exc_info[1]
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('type', 'invalid')}"
            for e in error.errors(include_input=False, include_context=False)
        )
        reason = f"{error.error_count()} invalid field(s): {problems}"
    else:
        status = getattr(getattr(error, "error_code", None), "value", 500)
        if status >= 500:
            return True
        reason = f"{status} {type(error).__name__}"
    record.msg, record.args = "rejected %s: %s", (record.args[0] if record.args else "request", reason)
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    record.exc_info = record.exc_text = None
    return True


def quiet_rejections() -> None:
    """Install ``rejected_request`` on BentoML's request logger (once per process)."""
    logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if rejected_request not in logger.filters:
        logger.addFilter(rejected_request)
