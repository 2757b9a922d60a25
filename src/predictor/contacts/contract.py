"""The contact: its fields declared once.

Everything that describes a contact is derived from ``CONTACT_FIELDS``: the file schema (``schema``: which
columns are required, how each is parsed, the pandera contract of validated contacts), the service's request
model (``api.ContactIn``), the contact store's table (``store``), the MLflow model's signature (``registry``),
the simulator's columns and the README's field table (a test holds the README to ``markdown_table()``).
Adding a column is one entry here plus what reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What a field holds decides how it is parsed, checked, typed and stored.
ID, CODE, TIME, CHANNEL, TEXT, LABEL, SECONDS, COUNT, SCORE = (
    "id", "code", "time", "channel", "text", "label", "seconds", "count", "score",
)  # fmt: skip
TEXT_KINDS = (ID, CODE, CHANNEL, TEXT, LABEL)  # held as str once validated
FLOAT_KINDS = (SECONDS, SCORE)  # held as float (a score may be missing)
CSAT_RANGE: tuple[float, float] = (1.0, 5.0)


@dataclass(frozen=True)
class ContactField:
    name: str
    kind: str
    required: bool  # a column every file must have (a value may still be empty where the kind allows)
    description: str
    example: Any
    # What the service assumes when a caller leaves the field out (None: the caller must send it).
    api_default: Any = None


CONTACT_FIELDS: tuple[ContactField, ...] = (
    ContactField("contact_id", ID, True, "Unique id of the contact (string). Duplicates: the first valid row is "
                 "kept, the rest rejected.", "C0001234"),
    ContactField("customer_id", ID, True, "Id of the customer; links contacts of the same person.", "U000042"),
    ContactField("opened_at", TIME, True, "When the contact opened; ISO-8601 with a time zone (or a zone declared "
                 "with `--assume-timezone` / the mapping).", "2026-03-02T09:00:00Z"),
    ContactField("closed_at", TIME, True, "When the contact closed; not before `opened_at`.", "2026-03-02T09:12:00Z"),
    ContactField("channel", CHANNEL, True, "`phone`, `chat`, `email` or `social`.", "chat"),
    ContactField("issue", CODE, True, "Primary issue code set by the agent (lower-cased; any taxonomy; a code the "
                 "model never saw is scored as unknown).", "billing_question"),
    ContactField("transcript", TEXT, True, "Conversation text, may be empty (phone without speech-to-text, exports "
                 "without text); redacted before it is stored.", "Customer: Hi, my bill is higher than usual.",
                 api_default=""),
    ContactField("agent_id", ID, True, "Agent who handled the contact.", "A017"),
    ContactField("handle_seconds", SECONDS, True, "Handle time in seconds, ≥ 0.", 420.0),
    ContactField("hold_seconds", SECONDS, True, "Hold time in seconds, ≥ 0.", 0.0, api_default=0.0),
    ContactField("transfers", COUNT, True, "Number of transfers, whole number ≥ 0.", 0, api_default=0),
    ContactField("queue", LABEL, False, "Queue or skill group.", "consumer", api_default=""),
    ContactField("csat", SCORE, False, "Satisfaction score, 1–5 (null or left out when unknown).", 4.0),
    ContactField("language", LABEL, False, "ISO 639-1 code of the contact's language (`ru`, `sr-Latn` → `sr`); "
                 "when blank or left out it is read off the transcript (en, ru, be, sr in either script, uk).",
                 "en", api_default=""),
)  # fmt: skip

FIELDS: dict[str, ContactField] = {f.name: f for f in CONTACT_FIELDS}
# What the feature function reads of a contact's history (the contacts it describes it reads whole): the
# store fetches only these, from an index holding them all, never the rows and their transcripts.
HISTORY_FIELDS: tuple[str, ...] = (
    "contact_id", "customer_id", "opened_at", "closed_at", "issue", "agent_id", "transfers",
)  # fmt: skip
# Agents' closed windows, as the feature function reads them, may come pooled: a row standing for this many
# windows (their repeats summed); a row without it stands for one.
WINDOW_COUNT = "windows"


def names(*kinds: str, required: bool | None = None) -> tuple[str, ...]:
    """Field names in contract order, of the given kinds (all without) and requiredness (either without)."""
    return tuple(
        f.name
        for f in CONTACT_FIELDS
        if (not kinds or f.kind in kinds) and (required is None or f.required == required)
    )


def example() -> dict[str, Any]:
    """One valid contact, every field filled (the MLflow input example, the API docs)."""
    return {f.name: f.example for f in CONTACT_FIELDS}


def markdown_table() -> str:
    """The README's field table."""
    rows = ["| field | required | meaning |", "|---|---|---|"]
    for f in CONTACT_FIELDS:
        required = ("yes (may be empty)" if f.kind == TEXT else "yes") if f.required else "no"
        rows.append(f"| `{f.name}` | {required} | {f.description} |")
    return "\n".join(rows)
