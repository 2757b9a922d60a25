"""Request and response types of the scoring service, with explicit limits on every field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from predictor.config import CHANNELS, ServiceConfig, get_settings
from predictor.contacts import contract

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$"
ISSUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"


def _max_transcript_chars() -> int:
    """``PREDICTOR_SERVICE__MAX_TRANSCRIPT_CHARS`` as the service process starts (the request model is built
    once, at import); a bad environment is reported by the command that reads it, not here."""
    from pydantic import ValidationError

    try:
        return get_settings().service.max_transcript_chars
    except ValidationError:
        return ServiceConfig.model_fields["max_transcript_chars"].default


MAX_TRANSCRIPT_CHARS = _max_transcript_chars()
MAX_LABEL_CHARS = 128
MAX_SECONDS = 7 * 24 * 3600.0
MAX_TRANSFERS = 100
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def _request_field(f: contract.ContactField) -> tuple[Any, Any]:
    """A contract field as the service accepts it: type, limits, default, description, example."""
    default = f.api_default if f.api_default is not None else ...
    common: dict[str, Any] = {"description": f.description, "examples": [f.example]}
    if f.kind == contract.ID:
        return str, Field(default, pattern=ID_PATTERN, **common)
    if f.kind == contract.CODE:
        return str, Field(default, pattern=ISSUE_PATTERN, **common)
    if f.kind == contract.TIME:
        return AwareDatetime, Field(default, **common)
    if f.kind == contract.CHANNEL:
        return Literal[tuple(CHANNELS)], Field(default, **common)
    if f.kind == contract.TEXT:
        return str, Field(default, max_length=MAX_TRANSCRIPT_CHARS, **common)
    if f.kind == contract.LABEL:
        return str, Field(default, max_length=MAX_LABEL_CHARS, **common)
    if f.kind == contract.SECONDS:
        return float, Field(default, ge=0, le=MAX_SECONDS, allow_inf_nan=False, strict=True, **common)
    if f.kind == contract.COUNT:
        return int, Field(default, ge=0, le=MAX_TRANSFERS, strict=True, **common)
    if f.kind == contract.SCORE:
        low, high = contract.CSAT_RANGE
        return float | None, Field(None, ge=low, le=high, allow_inf_nan=False, strict=True, **common)
    raise ValueError(f"no request type for the contract kind {f.kind!r} ({f.name})")


class _ContactChecks(BaseModel):
    """The rules across fields, and those a field type cannot say; the fields come from the contract."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    @field_validator(*contract.names(contract.TIME), mode="before", check_fields=False)
    @classmethod
    def _time_is_text(cls, value: Any, info: ValidationInfo) -> Any:
        # One rule for every field: JSON numbers for numbers, ISO-8601 text for times (pydantic would read a
        # number as Unix seconds, a different contract from the files').
        if not isinstance(value, str | datetime):
            raise ValueError(f"{info.field_name} must be an ISO-8601 time with a zone, e.g. 2026-03-02T09:00:00Z")
        return value

    @field_validator(*contract.names(contract.TIME), check_fields=False)
    @classmethod
    def _plausible_time(cls, value: datetime, info: ValidationInfo) -> datetime:
        # A contact at close happened in the recent past: year 1 or 9999 is a broken caller, not a contact.
        now = datetime.now(UTC)
        if not EARLIEST <= value <= now + timedelta(days=1):
            raise ValueError(f"{info.field_name} must lie between {EARLIEST:%Y-%m-%d} and tomorrow")
        return value

    @model_validator(mode="after")
    def _closed_after_opened(self) -> _ContactChecks:
        if self.closed_at < self.opened_at:
            raise ValueError("closed_at is before opened_at")
        return self


ContactIn = create_model(
    "ContactIn",
    __base__=_ContactChecks,
    __doc__="One contact at close, as the ticketing system knows it. History comes from the contact store.",
    __module__=__name__,
    **{f.name: _request_field(f) for f in contract.CONTACT_FIELDS},
)


class ContentConflict(ValueError):
    """A contact id already scored with other content: the stored answer is not this contact's (HTTP 409)."""

    def __init__(self, contact_id: str) -> None:
        super().__init__(
            f"contact_id {contact_id!r} was already scored with other content (customer, times, channel, issue, "
            "transcript, ...): a retry must send the same contact; a new contact needs a new contact_id"
        )
        self.contact_id = contact_id

    def __reduce__(self) -> tuple[type, tuple[str]]:  # rebuilt from its id when sent between processes
        return type(self), (self.contact_id,)


class OutOfTime(RuntimeError):
    """The request's time budget ran out before this contact was scored: nothing of it was stored (503)."""

    def __init__(self, budget_s: float) -> None:
        super().__init__(
            f"not scored: the request's time budget of {budget_s:g} s ran out first (nothing was stored for "
            "it); send it again, or in a smaller batch"
        )
        self.budget_s = budget_s

    def __reduce__(self) -> tuple[type, tuple[float]]:
        return type(self), (self.budget_s,)


class NextIssue(BaseModel):
    issue: str = Field(description="Issue code the customer is likely to come back with.")
    probability: float = Field(description="Probability of this issue, given that the customer comes back.")
    repeat_type: Literal["explicit", "implicit"] = Field(
        description="explicit: the same issue again; implicit: an adjacent issue (preventable by telling them now)."
    )


class HoursToRepeat(BaseModel):
    median: float = Field(description="Median hours from close to the repeat, if the customer comes back.")
    p90: float = Field(description="90th percentile of the hours to the repeat.")


class Reason(BaseModel):
    feature: str = Field(description="Feature name.")
    description: str = Field(description="What it means, in words.")
    direction: Literal["raises risk", "lowers risk"]
    weight: float = Field(description="Contribution to the score (log-odds of the uncalibrated booster).")


class FollowUpOut(BaseModel):
    act: bool = Field(description="Whether to send a proactive follow-up.")
    next_issue: str | None = Field(description="The issue the follow-up addresses.")
    repeat_type: Literal["explicit", "implicit"] | None = None
    message: str | None = Field(description="What to tell the customer (from the follow-up plan).")
    channel: str = Field(description="Where to send it: the contact's own channel unless configured.")
    send_within_hours: float = Field(description="Send within this many hours (before the typical repeat, <= 24).")
    send_by: datetime = Field(description="Send by this time (UTC): the contact's close plus send_within_hours.")
    reason: str = Field(description="Why (or why not) to act.")
    language: str = Field(
        "en",
        description="Language of the message (ISO 639-1): the contact's own where the plan has the message in it "
        "(Serbian in the script the customer wrote in), else English.",
    )
    held_out: bool = Field(
        False,
        description="The customer is in the experiment's control group: a follow-up was due, but send nothing "
        "(act is false), so the effect of follow-ups can be measured.",
    )
    experiment: str | None = Field(
        None, description="The hold-out experiment this contact counts in (when a follow-up was due), else null."
    )


class ScoreResponse(BaseModel):
    contact_id: str
    model_version: str = Field(description="Registered model version that produced the score.")
    repeat_probability: float = Field(description="Calibrated probability of a repeat contact within the window.")
    risk_band: Literal["low", "medium", "high"]
    next_issues: list[NextIssue] = Field(description="Top 3 likely next issues.")
    hours_to_repeat: HoursToRepeat
    reasons: list[Reason] = Field(description="The features that moved the score most.")
    follow_up: FollowUpOut
    warnings: list[str] = Field(default_factory=list, description="Things the caller should know (e.g. unknown issue).")
    replayed: bool = Field(False, description="True when this contact was already scored: the stored answer.")


class FollowUpIn(BaseModel):
    """A follow-up the ticketing system sent for a scored contact."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    contact_id: str = Field(pattern=ID_PATTERN, description="The scored contact the follow-up was sent for.")
    sent_at: AwareDatetime = Field(description="When it was sent; ISO-8601 with a time zone.")
    channel: Literal[tuple(CHANNELS)] = Field(description="Where it was sent.")  # type: ignore[valid-type]
    template: str = Field(
        "", max_length=MAX_LABEL_CHARS, description="Which message or template was sent (a name, not the text)."
    )

    @field_validator("sent_at", mode="before")
    @classmethod
    def _time_is_text(cls, value: Any) -> Any:
        if not isinstance(value, str | datetime):
            raise ValueError("sent_at must be an ISO-8601 time with a zone, e.g. 2026-03-02T10:00:00Z")
        return value

    @field_validator("sent_at")
    @classmethod
    def _plausible_time(cls, value: datetime) -> datetime:
        if not EARLIEST <= value <= datetime.now(UTC) + timedelta(days=1):
            raise ValueError(f"sent_at must lie between {EARLIEST:%Y-%m-%d} and tomorrow")
        return value


class FollowUpReceipt(BaseModel):
    contact_id: str
    recorded: bool = Field(description="True when this report was stored now; false when it was already stored.")
    replayed: bool = Field(False, description="True when the same report had been received before.")
    held_out: bool = Field(description="The contact's customer was held out: this follow-up breaks the hold-out.")
    warnings: list[str] = Field(default_factory=list)


class UnknownContact(LookupError):
    """A follow-up for a contact the store does not hold (HTTP 404)."""

    def __init__(self, contact_id: str) -> None:
        super().__init__(f"contact_id {contact_id!r} is not in the contact store: score it first (POST /score)")


class FollowUpConflict(ValueError):
    """A follow-up already reported for this contact with other content (HTTP 409)."""

    def __init__(self, contact_id: str) -> None:
        super().__init__(
            f"contact_id {contact_id!r} already has a follow-up reported with another sent_at, channel or "
            "template: one follow-up per contact; a retry must send the same report"
        )


class FollowUpTooEarly(ValueError):
    """A follow-up sent before its contact closed (HTTP 409, naming sent_at: the report is valid on its own,
    at odds with the stored contact)."""

    def __init__(self, contact_id: str, closed_at: datetime) -> None:
        super().__init__(f"sent_at: before contact {contact_id!r} closed ({closed_at.isoformat()})")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Items are checked one by one (an item that is not even an object is reported like any bad item).
    contacts: list[Any] = Field(
        min_length=1,
        description="Contacts at close, each shaped like the /score body. Invalid items are reported one by one.",
    )


class ItemError(BaseModel):
    field: str
    message: str


class BatchItem(BaseModel):
    index: int = Field(description="Position in the request.")
    contact_id: str | None
    ok: bool
    result: ScoreResponse | None = None
    errors: list[ItemError] = Field(default_factory=list)


class BatchResponse(BaseModel):
    results: list[BatchItem]
    scored: int
    rejected: int


def item_errors(exc: Any) -> list[ItemError]:
    """pydantic's errors as (field, message) pairs; a whole-object error names the fields in its message."""
    out = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error.get("loc", ())) or "body"
        out.append(ItemError(field=loc, message=error.get("msg", "invalid")))
    return out


def contact_json(row: dict[str, Any]) -> dict[str, Any]:
    """A validated contact (a row of the schema's frame) as the JSON body of /score."""
    body: dict[str, Any] = {}
    for f in contract.CONTACT_FIELDS:
        value = row.get(f.name)
        if f.kind == contract.TIME:
            body[f.name] = value.isoformat()
        elif f.kind in contract.FLOAT_KINDS:
            if value is not None and value == value:  # an unknown score (None or NaN) is omitted
                body[f.name] = float(value)
        elif f.kind == contract.COUNT:
            body[f.name] = int(value)
        else:
            body[f.name] = value
    return body


def contact_example() -> dict[str, Any]:
    """A valid /score body, from the contract's examples (the Swagger page's "Try it out" sends it), under
    ids no real contact has."""
    return {**{f.name: f.example for f in contract.CONTACT_FIELDS}, "contact_id": "example-1", "customer_id": "example"}


def follow_up_example() -> dict[str, Any]:
    """A /follow_ups body for the contact of ``contact_example`` (the Swagger page sends it after that one)."""
    return {
        "contact_id": "example-1",
        "sent_at": "2026-03-02T09:30:00Z",
        "channel": "chat",
        "template": "payment-check",
    }


def openapi(spec: dict[str, Any], bodies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """BentoML's OpenAPI 3.0 document, made to say what the server does.

    pydantic writes an optional field as ``anyOf [..., {"type": "null"}]``, which OpenAPI 3.0 does not know
    (clients and fuzzers read it as "never null"): it becomes ``nullable``. The accepted time range, which a
    schema cannot state, goes into each time field's description. Request bodies are required, with a valid
    example each (``bodies``: route -> example), and titles name the models, not BentoML's wrappers."""
    _normalise(spec)
    _rename_wrappers(spec)
    low, high = f"{EARLIEST:%Y-%m-%d}", "tomorrow (UTC)"
    for route, example in bodies.items():
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None or "requestBody" not in operation:
            continue
        body = operation["requestBody"]
        body["required"] = True
        media = body.get("content", {}).get("application/json", {})
        media["example"] = example
        properties = media.get("schema", {}).get("properties", {})
        for name in (*contract.names(contract.TIME), "sent_at"):
            if name in properties:
                properties[name]["description"] += f" Accepted from {low} to {high}, as ISO-8601 text."
        for name in contract.names(contract.SCORE):
            if name in properties:
                properties[name]["nullable"] = True
    return spec


def _rename_wrappers(spec: dict[str, Any]) -> None:
    """BentoML files each route's body and answer a second time as "<Model>IODescriptor": under the model's
    name where that is free, and not at all where the model is there already (they are inlined in the route)."""
    schemas = spec.get("components", {}).get("schemas", {})
    text = json.dumps(spec.get("paths", {}))
    for key in [k for k in schemas if k.endswith("IODescriptor")]:
        name = key.removesuffix("IODescriptor")
        if name not in schemas:
            schemas[name] = schemas.pop(key)
        elif f"#/components/schemas/{key}" not in text:
            del schemas[key]
    encoded = json.dumps(spec).replace('IODescriptor"', '"')
    spec.clear()
    spec.update(json.loads(encoded))


def _normalise(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _normalise(item)
        return
    if not isinstance(node, dict):
        return
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            node.update(rest[0])
        else:
            node["anyOf" if len(rest) > 1 else "allOf"] = rest
        node["nullable"] = True
    if isinstance(node.get("title"), str):
        node["title"] = node["title"].removesuffix("IODescriptor")
    for value in node.values():
        _normalise(value)
