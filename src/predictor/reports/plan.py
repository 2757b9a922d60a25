"""Proactive follow-up: what to tell the customer, on which channel, and how soon.

``FollowUpPlan`` is the interface the service uses. Today it reads an editable scripts file; the mined
next-issue-avoidance plan provides the same ``recommend`` and drops in without touching the service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from predictor.config import ServiceConfig
from predictor.contacts.language import ENGLISH, SERBIAN, SERBIAN_LATIN, to_serbian_latin
from predictor.contacts.schema import fingerprint


@dataclass(frozen=True)
class FollowUp:
    act: bool
    next_issue: str | None
    repeat_type: str | None  # explicit = same issue again, implicit = an adjacent issue
    message: str | None
    channel: str
    send_within_hours: float
    reason: str
    language: str = ENGLISH  # what the message is written in (ISO 639-1)


@dataclass(frozen=True)
class Messages:
    """The messages of one language: the generic check-in, the check-in per issue, the script per next issue."""

    same_issue: str
    check_ins: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Messages:
        return cls(
            same_issue=str(raw.get("same_issue", "")).strip(),
            check_ins={str(k): str(v).strip() for k, v in (raw.get("check_ins") or {}).items()},
            scripts={str(k): str(v).strip() for k, v in (raw.get("scripts") or {}).items()},
        )


@dataclass
class FollowUpPlan:
    scripts: dict[str, str]
    same_issue: str
    act_threshold: float = 0.4
    max_send_within_hours: float = 24.0
    min_send_within_hours: float = 1.0
    lead_fraction: float = 0.5  # send by half the typical time to repeat, so it lands first
    channel: str | None = None  # None: the contact's own channel (consistent with how they reached us)
    version: str = "scripts-1"
    check_ins: dict[str, str] = field(default_factory=dict)  # the same issue again, written for each issue
    timing: dict[tuple[str, str], float] = field(default_factory=dict)  # from a mined plan, if one is given
    # The messages in other languages, by ISO 639-1 code; English (the fields above) is the fallback.
    translations: dict[str, Messages] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> FollowUpPlan:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        english = Messages.from_dict(raw)
        return cls(
            scripts=english.scripts,
            same_issue=english.same_issue,
            check_ins=english.check_ins,
            version=f"scripts-{raw.get('version', 1)}",
            translations={str(k): Messages.from_dict(v or {}) for k, v in (raw.get("languages") or {}).items()},
            **overrides,
        )

    def message_for(self, next_issue: str, contact_issue: str) -> str | None:
        """The script for a likely next issue (the same issue again: its check-in, else the generic one), or
        None: a gap."""
        if next_issue == contact_issue:
            if contact_issue in self.check_ins:
                return self.check_ins[contact_issue]
            return self.same_issue.replace("{issue}", contact_issue.replace("_", " ")) or None
        return self.scripts.get(next_issue)

    def localised(self, next_issue: str, contact_issue: str, language: str) -> tuple[str | None, str]:
        """The message in the customer's ``language`` (``sr-Latn``: Serbian, transliterated) and the language
        it is in: the English message where the plan has none in that language."""
        code = SERBIAN if language == SERBIAN_LATIN else language
        messages = self.translations.get(code)
        if messages is not None:
            if next_issue == contact_issue:
                text = messages.check_ins.get(contact_issue) or messages.same_issue or None
            else:
                text = messages.scripts.get(next_issue)
            if text:
                return (to_serbian_latin(text) if language == SERBIAN_LATIN else text), code
        return self.message_for(next_issue, contact_issue), ENGLISH

    def with_mined_plan(self, path: str | Path) -> FollowUpPlan:
        """Take the send-within timing of each primary -> secondary pair from a mined plan file."""
        plan = yaml.safe_load(Path(path).read_text())
        timing = {
            (p["issue"], s["issue"]): float(s["send_within_hours"]) for p in plan["primaries"] for s in p["secondaries"]
        }
        return FollowUpPlan(**{**self.__dict__, "timing": timing, "version": plan["version"]})

    def recommend(
        self,
        *,
        repeat_probability: float,
        next_issue: str | None,
        contact_issue: str,
        contact_channel: str,
        hours_to_repeat_median: float,
        language: str = ENGLISH,
    ) -> FollowUp:
        """What to do about one contact; the message in the customer's ``language`` (as ``language.written``
        gives it) where the plan has it, else in English."""
        channel = self.channel or contact_channel
        window = min(
            self.max_send_within_hours, max(self.min_send_within_hours, self.lead_fraction * hours_to_repeat_median)
        )
        window = round(window, 1)
        repeat_type = None if next_issue is None else ("explicit" if next_issue == contact_issue else "implicit")
        message, language = self.localised(next_issue, contact_issue, language) if next_issue else (None, ENGLISH)
        mined = self.timing.get((contact_issue, next_issue or ""))
        if mined is not None:  # the mined plan knows when this pair typically comes back
            window = round(min(window, mined), 1)
        if repeat_probability < self.act_threshold:
            return FollowUp(
                False,
                next_issue,
                repeat_type,
                message,
                channel,
                window,
                f"risk {repeat_probability:.0%} is below the follow-up threshold {self.act_threshold:.0%}",
                language,
            )
        if message is None:
            return FollowUp(
                False,
                next_issue,
                repeat_type,
                None,
                channel,
                window,
                f"no script for '{next_issue}' yet: add one to the scripts file",
                language,
            )
        return FollowUp(
            True,
            next_issue,
            repeat_type,
            message,
            channel,
            window,
            f"risk {repeat_probability:.0%}; likely next: {next_issue} ({repeat_type}), "
            f"typically within {hours_to_repeat_median:.0f} h",
            language,
        )


# -- the mined next-issue-avoidance plan ---------------------------------------------------------------


def follow_up_plan(service: ServiceConfig, mined: Path | None = None) -> FollowUpPlan:
    """The follow-up plan the service answers with: its scripts, threshold and channel, and the mined plan's
    timing: ``mined``, the plan stored with the model version in use, or (a version registered without one)
    the file at ``plan_path`` when it exists. The report recommends from the same plan, so the two agree."""
    plan = FollowUpPlan.from_yaml(
        service.scripts_path, act_threshold=service.follow_up_threshold, channel=service.follow_up_channel
    )
    source = mined if mined is not None else Path(service.plan_path)
    if source.exists():
        plan = plan.with_mined_plan(source)
    return plan


def mine_to_file(
    labelled: pd.DataFrame, service: ServiceConfig, out: str | Path, top_primaries: int = 15, min_cell: int = 20
) -> tuple[dict[str, Any], Path]:
    """Mine the plan from labelled contacts against the configured scripts and write it (``mine``)."""
    scripts = FollowUpPlan.from_yaml(service.scripts_path)
    mined = mine(labelled, scripts, top_primaries=top_primaries, min_cell=min_cell)
    return mined, write_plan(mined, out)


def mine(
    labelled: pd.DataFrame,
    scripts: FollowUpPlan,
    *,
    top_primaries: int = 15,
    min_cell: int = 20,
    max_send_within_hours: float = 24.0,
    lead_fraction: float = 0.5,
) -> dict[str, Any]:
    """Mine the plan from labelled history (contacts whose window has closed).

    For the primary issues that cause most repeat volume: which issues follow (explicit = the same again,
    implicit = adjacent), their shares, when they follow (median and 75th-percentile hours), the script
    to use, and how soon to send it. Cells with fewer than ``min_cell`` repeats are flagged, and a missing
    script is listed as a gap to fill rather than skipped.
    """
    known = labelled[labelled["window_complete"]]
    repeats = known[known["is_repeat"].astype(bool)]
    total_repeats = len(repeats)
    by_primary = repeats.groupby("issue").size().sort_values(ascending=False)
    primaries = []
    gaps: list[dict[str, str]] = []
    for issue, count in by_primary.head(top_primaries).items():
        contacts = int((known["issue"] == issue).sum())
        group = repeats[repeats["issue"] == issue]
        secondaries = []
        for next_issue, cell in group.groupby("next_issue"):
            hours = cell["hours_to_repeat"]
            repeat_type = "explicit" if next_issue == issue else "implicit"
            message = scripts.message_for(str(next_issue), str(issue))
            median = float(hours.median())
            entry = {
                "issue": str(next_issue),
                "repeat_type": repeat_type,
                "repeats": len(cell),
                "share": round(len(cell) / len(group), 4),
                "median_hours": round(median, 1),
                "p75_hours": round(float(hours.quantile(0.75)), 1),
                "low_volume": len(cell) < min_cell,
                "script": message,
                "script_missing": message is None,
                "channel": "same as the primary contact",
                "send_within_hours": round(min(max_send_within_hours, max(1.0, lead_fraction * median)), 1),
            }
            if message is None:
                gaps.append({"primary": str(issue), "secondary": str(next_issue), "low_volume": len(cell) < min_cell})
            secondaries.append(entry)
        secondaries.sort(key=lambda e: -e["repeats"])
        primaries.append(
            {
                "issue": str(issue),
                "contacts": contacts,
                "repeats": int(count),
                "repeat_rate": round(int(count) / max(contacts, 1), 4),
                "share_of_all_repeats": round(int(count) / max(total_repeats, 1), 4),
                "explicit_share": round(float((group["repeat_type"] == "explicit").mean()), 4),
                "secondaries": secondaries,
            }
        )
    # Of the contacts mined, by id alone: a cluster's narrow labels and a full log give the same version.
    digest = fingerprint(known, columns=("contact_id",))
    return {
        "version": f"plan-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}-{digest[:8]}",
        "generated_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "data": {
            "contacts_with_closed_window": len(known),
            "repeats": total_repeats,
            "period_start": str(known["closed_at"].min()),
            "period_end": str(known["closed_at"].max()),
        },
        "min_cell": min_cell,
        "primaries": primaries,
        "gaps": gaps,
    }


def write_plan(plan: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=110))
    return path
