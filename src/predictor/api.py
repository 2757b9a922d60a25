"""Request and response types of the scoring service, with explicit limits on every field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$"
ISSUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
MAX_TRANSCRIPT_CHARS = 20_000
MAX_SECONDS = 7 * 24 * 3600.0
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


class ContactIn(BaseModel):
    """One contact at close, as the ticketing system knows it. History comes from the contact store."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    contact_id: str = Field(pattern=ID_PATTERN, description="Unique id of the contact (letters, digits, _.:@-).")
    customer_id: str = Field(pattern=ID_PATTERN, description="Id of the customer.")
    opened_at: AwareDatetime = Field(description="When the contact opened, ISO-8601 with a time zone.")
    closed_at: AwareDatetime = Field(description="When the contact closed, ISO-8601 with a time zone.")
    channel: Literal["phone", "chat", "email", "social"] = Field(description="Channel of the contact.")
    issue: str = Field(pattern=ISSUE_PATTERN, description="Primary issue code; unknown codes are scored as 'other'.")
    transcript: str = Field(
        "", max_length=MAX_TRANSCRIPT_CHARS, description="Conversation text (redacted before storage); may be empty."
    )
    agent_id: str = Field(pattern=ID_PATTERN, description="Agent who handled the contact.")
    handle_seconds: float = Field(
        ge=0, le=MAX_SECONDS, allow_inf_nan=False, strict=True, description="Handle time in seconds."
    )
    hold_seconds: float = Field(
        0.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False, strict=True, description="Hold time in seconds."
    )
    transfers: int = Field(0, ge=0, le=100, strict=True, description="Number of transfers.")
    queue: str = Field("", max_length=128, description="Queue or skill group (optional).")
    csat: float | None = Field(
        None, ge=1, le=5, allow_inf_nan=False, description="Satisfaction score 1-5; omit the field when unknown."
    )

    @field_validator("csat", mode="before")
    @classmethod
    def _csat_omitted_not_null(cls, value: Any) -> Any:
        # The published OpenAPI schema (OpenAPI 3.0 via BentoML) has no null: say "omit it", consistently.
        if value is None:
            raise ValueError("csat: omit the field when the score is unknown (null is not accepted)")
        return value

    @field_validator("opened_at", "closed_at")
    @classmethod
    def _plausible_time(cls, value: datetime, info: ValidationInfo) -> datetime:
        # A contact at close happened in the recent past: year 1 or 9999 is a broken caller, not a contact.
        now = datetime.now(UTC)
        if not EARLIEST <= value <= now + timedelta(days=1):
            raise ValueError(f"{info.field_name} must lie between {EARLIEST:%Y-%m-%d} and tomorrow")
        return value

    @model_validator(mode="after")
    def _closed_after_opened(self) -> ContactIn:
        if self.closed_at < self.opened_at:
            raise ValueError("closed_at is before opened_at")
        return self


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
    reason: str = Field(description="Why (or why not) to act.")


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


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    contacts: list[dict[str, Any]] = Field(
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
    body = {k: row[k] for k in ("contact_id", "customer_id", "channel", "issue", "transcript", "agent_id", "queue")}
    csat = row.get("csat")
    body.update(
        opened_at=row["opened_at"].isoformat(),
        closed_at=row["closed_at"].isoformat(),
        handle_seconds=float(row["handle_seconds"]),
        hold_seconds=float(row["hold_seconds"]),
        transfers=int(row["transfers"]),
    )
    if csat is not None and csat == csat:  # unknown (None or NaN): omitted
        body["csat"] = float(csat)
    return body
