"""Proactive follow-up: what to tell the customer, on which channel, and how soon.

``FollowUpPlan`` is the interface the service uses. Today it reads an editable scripts file; the mined
next-issue-avoidance plan provides the same ``recommend`` and drops in without touching the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SCRIPTS = Path("data/followup_scripts.yaml")


@dataclass(frozen=True)
class FollowUp:
    act: bool
    next_issue: str | None
    repeat_type: str | None  # explicit = same issue again, implicit = an adjacent issue
    message: str | None
    channel: str
    send_within_hours: float
    reason: str


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

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> FollowUpPlan:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return cls(
            scripts={str(k): str(v).strip() for k, v in (raw.get("scripts") or {}).items()},
            same_issue=str(raw.get("same_issue", "")).strip(),
            version=f"scripts-{raw.get('version', 1)}",
            **overrides,
        )

    def recommend(
        self,
        *,
        repeat_probability: float,
        next_issue: str | None,
        contact_issue: str,
        contact_channel: str,
        hours_to_repeat_median: float,
    ) -> FollowUp:
        channel = self.channel or contact_channel
        window = min(
            self.max_send_within_hours, max(self.min_send_within_hours, self.lead_fraction * hours_to_repeat_median)
        )
        window = round(window, 1)
        repeat_type = None if next_issue is None else ("explicit" if next_issue == contact_issue else "implicit")
        if next_issue == contact_issue:
            message = self.same_issue.replace("{issue}", contact_issue.replace("_", " ")) or None
        else:
            message = self.scripts.get(next_issue or "")
        if repeat_probability < self.act_threshold:
            return FollowUp(
                False,
                next_issue,
                repeat_type,
                message,
                channel,
                window,
                f"risk {repeat_probability:.0%} is below the follow-up threshold {self.act_threshold:.0%}",
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
        )
