"""The scoring service: ticketing systems call it when a contact closes.

    bentoml serve service.service:Predictor --port 3000

Loads the MLflow champion (or the version pinned by PREDICTOR_SERVICE__MODEL_VERSION) once, keeps the
embedder warm, and answers each contact with its repeat risk, likely next issues and the follow-up to send.
The logic lives in `predictor.serving.scorer`; this file only wires it to HTTP.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from http import HTTPStatus

import bentoml
from starlette.responses import JSONResponse

from predictor import logs
from predictor.config import get_settings
from predictor.serving.api import (
    BatchRequest,
    BatchResponse,
    ContactIn,
    ContentConflict,
    FollowUpConflict,
    FollowUpIn,
    FollowUpReceipt,
    FollowUpTooEarly,
    OutOfTime,
    ScoreResponse,
    UnknownContact,
    contact_example,
    follow_up_example,
    openapi,
)
from predictor.serving.devserver import auth_notice
from predictor.serving.guard import BodyLimits, GuardMiddleware, bound_header_time, bucket_unknown_paths

# Read by the tokenizers library at each call (ServiceConfig.parallel_tokenizer).
TOKENIZER_THREADS = "TOKENIZERS_PARALLELISM"


def _token() -> str | None:
    secret = get_settings().api_token
    return secret.get_secret_value() if secret else None


def _error(status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer in the documented shape ({"error": ...}); BentoML's own exceptions wrap a 4xx body in
    a list and replace any 5xx message by a generic one."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _limits() -> BodyLimits:
    service = get_settings().service
    return BodyLimits(max_bytes=int(service.max_body_mb * 2**20), idle_timeout_s=service.body_timeout_s)


@bentoml.service(name="repeat-contact-predictor", traffic={"timeout": 120})
class Predictor:
    def __init__(self) -> None:
        started = time.perf_counter()
        from predictor.model.lean import lightgbm_alone

        lightgbm_alone()  # this process only scores: the model's lean copy needs no scikit-learn (~1.5 s)
        from predictor.serving.scorer import Scorer

        logs.setup(plain=True)  # a log file: one plain line per record
        self.settings = get_settings()
        os.environ[TOKENIZER_THREADS] = "true" if self.settings.service.parallel_tokenizer else "false"
        log = logging.getLogger(__name__)
        if notice := auth_notice(self.settings.api_token):
            log.warning(notice)
        self.scorer = Scorer.from_settings(self.settings)
        sklearn = "scikit-learn loaded: a model without a lean copy" if "sklearn" in sys.modules else "no scikit-learn"
        tokenizer = "every core" if os.environ[TOKENIZER_THREADS] == "true" else "one thread"
        log.info("worker ready in %.1f s (model version %s; %s; tokenizing on %s)", time.perf_counter() - started,
                 self.scorer.model_version, sklearn, tokenizer)  # fmt: skip

    @bentoml.on_shutdown
    def stop_helpers(self) -> None:
        """The batch helper processes stop with the worker (they would at its exit anyway: their pipe closes)."""
        logging.getLogger(__name__).info("worker stopping: its batch helpers too")
        self.scorer.close()

    def __is_ready__(self) -> bool:
        return self.scorer is not None

    @bentoml.api
    def score(self, contact: ContactIn, /) -> ScoreResponse:
        """Score one contact at close (a retry of the same contact gets the stored answer; the same
        contact_id with other content is a 409)."""
        try:
            return self.scorer.score(contact, self.scorer.deadline())
        except ContentConflict as conflict:
            return _error(HTTPStatus.CONFLICT, str(conflict))
        except OutOfTime as late:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(late), {"Retry-After": "1"})

    @bentoml.api
    def score_batch(self, request: BatchRequest, /) -> BatchResponse:
        """Score many contacts in one call (one embedding batch); bad items are reported one by one."""
        limit = self.settings.service.max_batch
        if len(request.contacts) > limit:
            return _error(
                HTTPStatus.BAD_REQUEST, f"contacts: at most {limit} contacts per call, got {len(request.contacts)}"
            )
        return self.scorer.score_batch(request.contacts, self.scorer.deadline())

    @bentoml.api(route="/follow_ups")
    def follow_ups(self, report: FollowUpIn, /) -> FollowUpReceipt:
        """Report a follow-up sent for a scored contact: the experiment's as-treated arm and the outcomes
        report read it. Once per contact: the same report again is a replay, another one a 409."""
        try:
            return self.scorer.record_follow_up(report, self.scorer.deadline())
        except UnknownContact as unknown:
            return _error(HTTPStatus.NOT_FOUND, str(unknown))
        except FollowUpConflict as conflict:
            return _error(HTTPStatus.CONFLICT, str(conflict))
        except FollowUpTooEarly as early:
            # Valid on its own, at odds with the stored contact (as a second report with other content is).
            return _error(HTTPStatus.CONFLICT, str(early))
        except OutOfTime as late:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(late), {"Retry-After": "1"})


ROUTES = frozenset(api.route for api in Predictor.apis.values())
bound_header_time(get_settings().service.header_timeout_s)
logs.quiet_rejections()  # a bad request: one WARNING line with field names, never the values
bucket_unknown_paths(ROUTES)  # before BentoML builds the app: its metrics must not label by raw path
Predictor.add_asgi_middleware(
    GuardMiddleware,
    token=_token,
    routes=ROUTES,
    protect_metrics=lambda: get_settings().service.protect_metrics,
    responses={
        "/score": {
            409: "The contact_id was already scored with other content (named in the error).",
            503: "The request's time budget ran out before the contact was scored (nothing stored): retry.",
        },
        "/follow_ups": {
            404: "The contact_id is not in the contact store (score it first).",
            409: "A follow-up with another sent_at, channel or template was already reported for this contact, "
            "or sent_at is before the contact closed (the error names the field).",
            503: "The request's time budget ran out first (nothing stored): retry.",
        },
    },
    limits=_limits,
    spec=lambda spec: openapi(
        spec,
        {
            "/score": contact_example(),
            "/score_batch": {"contacts": [contact_example()]},
            "/follow_ups": follow_up_example(),
        },
    ),
)
