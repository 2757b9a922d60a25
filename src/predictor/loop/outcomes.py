"""What happened after scoring: live model quality, and what the follow-ups prevented (or caused).

Everything is read from the contact store: the contacts the service scored (and what it told the caller),
the later contacts of the same customers (scored too, or bulk-loaded), and the follow-ups reported as sent.
A scored contact's outcome is derived with the training labels' own rules (``labels.derive``: the data end,
transfer continuations, censoring), so a window still open is never read as "no repeat".

Prevention is measured on the experiment's randomised arms (``predictor.loop.assignment``): among contacts
for which a follow-up was due, the repeat rate of the held-out customers against the treated ones. The
difference is the effect of recommending a follow-up (intention to treat: what the policy does, including
follow-ups the ticketing system never sent and contacts the follow-ups themselves prompted); as-treated
compares those that were sent against those that were not, and is not randomised (shown beside, never alone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from predictor.config import LabelConfig
from predictor.contacts.labels import DataEnd, data_end, derive
from predictor.contacts.store import CONTACT_COLUMNS, ContactStore
from predictor.loop.assignment import HELD_OUT, TREATED
from predictor.model.evaluate import Z95, expected_calibration_error, wilson

EARLY_HOURS = 48.0  # a contact within this of the close (or of a follow-up) may be one the follow-up prompted
MIN_GROUP_ARM = 5  # a group's comparison needs at least this many closed windows in each arm
MIN_AUC_ROWS = 20
RISK_BANDS = ("low", "medium", "high")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class ArmComparison:
    """Repeat rates of two groups and their difference (``first`` minus ``second``) with a 95% interval."""

    first: str
    second: str
    n_first: int
    n_second: int
    rate_first: float
    rate_second: float
    difference: Interval

    @property
    def relative(self) -> float:
        """The difference as a share of the first group's rate (held out: the share of repeats prevented)."""
        return self.difference.estimate / self.rate_first if self.rate_first > 0 else float("nan")


@dataclass
class Outcomes:
    data_end: DataEnd
    scored: int  # contacts the service scored
    closed: int  # of which the window has closed (outcome known)
    quality: dict[str, float]  # AUC, ECE, predicted and realised rate over the closed windows
    by_week: pd.DataFrame
    by_band: pd.DataFrame
    experiment: str | None
    counted: int  # contacts that count in the experiment (a follow-up was due), windows closed or not
    held_out_share: float
    itt: ArmComparison | None  # held out minus treated: repeats prevented per contact with a follow-up due
    as_treated: ArmComparison | None  # not sent minus sent (not randomised)
    early: ArmComparison | None  # treated minus held out, repeats within EARLY_HOURS of the close
    prompted_after_send: int  # repeats that opened within EARLY_HOURS after a sent follow-up
    sent: int
    sent_to_held_out: int
    by_group: pd.DataFrame
    needed: int | None  # contacts with a closed window needed for the interval to exclude zero, at this effect
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        """What the experiment shows, in one sentence (the report's and the command line's)."""
        if self.itt is None:
            return "not measured yet: the experiment has no closed windows in both arms"
        d = self.itt.difference
        if d.low > 0:
            return (
                f"follow-ups prevent {self.itt.relative:.0%} of repeats among the contacts they are due for "
                f"({d.estimate * 100:+.1f} points, 95% interval {d.low * 100:+.1f} to {d.high * 100:+.1f})"
            )
        if d.high < 0:
            return "follow-ups cause more repeats than they prevent (the whole interval is below zero)"
        return "no effect shown yet: the 95% interval of the difference includes zero"

    def as_dict(self) -> dict[str, Any]:
        def frame(f: pd.DataFrame) -> list[dict[str, Any]]:
            return json_safe(f.to_dict("records"))

        return json_safe(
            {
                "data_end": self.data_end.at.isoformat(),
                "scored": self.scored,
                "closed": self.closed,
                "quality": self.quality,
                "by_week": frame(self.by_week),
                "by_band": frame(self.by_band),
                "experiment": self.experiment,
                "counted": self.counted,
                "held_out_share": self.held_out_share,
                "itt": _comparison(self.itt),
                "as_treated": _comparison(self.as_treated),
                "early_repeats": _comparison(self.early),
                "prompted_after_send": self.prompted_after_send,
                "sent": self.sent,
                "sent_to_held_out": self.sent_to_held_out,
                "by_group": frame(self.by_group),
                "needed_contacts": self.needed,
                "notes": self.notes,
            }
        )


def _comparison(c: ArmComparison | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {**asdict(c), "relative": c.relative}


def json_safe(value: Any) -> Any:
    """NaN and infinities as null; numpy scalars and timestamps as plain values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def realised(store: ContactStore, labels: LabelConfig) -> tuple[pd.DataFrame, DataEnd]:
    """Every stored contact with its answer, its follow-up (if reported) and its outcome as known now."""
    frame = store.scored()
    contacts = frame[list(CONTACT_COLUMNS)]
    end = data_end(contacts, labels)
    labelled = derive(contacts, labels, end.at)
    for column in ("is_repeat", "censored", "hours_to_repeat", "window_complete", "continues_previous"):
        frame[column] = labelled[column].to_numpy()
    sent = store.follow_ups()
    frame = frame.merge(sent[["contact_id", "sent_at"]], on="contact_id", how="left")
    return frame, end


def outcomes(store: ContactStore, labels: LabelConfig) -> Outcomes:
    frame, end = realised(store, labels)
    return summarise(frame, end)


def summarise(frame: pd.DataFrame, end: DataEnd) -> Outcomes:
    notes: list[str] = []
    scored = frame[frame["scored"]]
    closed = scored[scored["window_complete"].astype(bool)]
    y = closed["is_repeat"].astype(bool).to_numpy()
    p = closed["repeat_probability"].to_numpy(dtype=float)
    quality = {"closed_windows": len(closed)}
    if len(closed):
        quality.update(
            predicted_rate=float(p.mean()), realised_rate=float(y.mean()), ece=expected_calibration_error(y, p)
        )
        quality["roc_auc"] = _auc(y, p)
    else:
        notes.append("no scored contact's window has closed yet: live quality is not known")
    by_week = _by(closed, closed["closed_at"].dt.tz_localize(None).dt.to_period("W").dt.start_time, "week")
    bands = pd.Categorical(closed["risk_band"], categories=RISK_BANDS, ordered=True)
    by_band = _by(closed, pd.Series(bands, index=closed.index), "risk_band")

    counted = scored[scored["arm"].notna()]
    experiments = counted["experiment"].dropna().unique().tolist()
    experiment = experiments[-1] if experiments else None
    if len(experiments) > 1:
        notes.append(f"contacts of {len(experiments)} experiments; the last, '{experiment}', is measured")
        counted = counted[counted["experiment"] == experiment]
    done = counted[counted["window_complete"].astype(bool)]
    treated, held = done[done["arm"] == TREATED], done[done["arm"] == HELD_OUT]
    sent = counted["sent_at"].notna()
    itt = as_treated = early = None
    needed = None
    if len(treated) and len(held):
        itt = compare(held["is_repeat"].astype(bool), treated["is_repeat"].astype(bool), "held out", "treated")
        got = done["sent_at"].notna()
        if got.any() and (~got).any():
            as_treated = compare(
                done.loc[~got, "is_repeat"].astype(bool), done.loc[got, "is_repeat"].astype(bool), "not sent", "sent"
            )
        early = compare(_early(treated), _early(held), "treated", "held out")
        needed = needed_contacts(itt, len(held) / len(done))
    else:
        notes.append("the experiment has no closed windows in both arms yet: prevention is not measured")
    after_send = done[done["sent_at"].notna() & done["is_repeat"].astype(bool)]
    reopened = after_send["closed_at"] + pd.to_timedelta(after_send["hours_to_repeat"], unit="h")
    prompted = int(
        (
            (reopened >= after_send["sent_at"]) & (reopened - after_send["sent_at"] <= pd.Timedelta(hours=EARLY_HOURS))
        ).sum()
    )
    return Outcomes(
        data_end=end,
        scored=len(scored),
        closed=len(closed),
        quality=quality,
        by_week=by_week,
        by_band=by_band,
        experiment=experiment,
        counted=len(counted),
        held_out_share=float((counted["arm"] == HELD_OUT).mean()) if len(counted) else float("nan"),
        itt=itt,
        as_treated=as_treated,
        early=early,
        prompted_after_send=prompted,
        sent=int(sent.sum()),
        sent_to_held_out=int((sent & (counted["arm"] == HELD_OUT)).sum()),
        by_group=_by_group(done),
        needed=needed,
        notes=notes,
    )


def _early(rows: pd.DataFrame) -> pd.Series:
    return rows["is_repeat"].astype(bool) & (rows["hours_to_repeat"] <= EARLY_HOURS)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(y) < MIN_AUC_ROWS or y.all() or not y.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def _by(rows: pd.DataFrame, key: pd.Series, name: str) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame(columns=[name, "contacts", "predicted_rate", "realised_rate", "roc_auc"])
    grouped = pd.DataFrame(
        {
            name: key.to_numpy(),
            "y": rows["is_repeat"].astype(bool).to_numpy(),
            "p": rows["repeat_probability"].to_numpy(),
        }
    ).groupby(name, sort=True)
    return pd.DataFrame(
        {
            "contacts": grouped.size(),
            "predicted_rate": grouped["p"].mean(),
            "realised_rate": grouped["y"].mean(),
            "roc_auc": grouped.apply(lambda g: _auc(g["y"].to_numpy(), g["p"].to_numpy()), include_groups=False),
        }
    ).reset_index()


def _by_group(done: pd.DataFrame) -> pd.DataFrame:
    """Intention to treat by issue and by risk band (groups with enough windows in both arms)."""
    rows = []
    for dimension in ("issue", "risk_band"):
        for value, group in done.groupby(dimension, sort=True):
            treated, held = group[group["arm"] == TREATED], group[group["arm"] == HELD_OUT]
            if min(len(treated), len(held)) < MIN_GROUP_ARM:
                continue
            c = compare(held["is_repeat"].astype(bool), treated["is_repeat"].astype(bool), "held out", "treated")
            rows.append(
                {
                    "dimension": dimension,
                    "value": value,
                    "treated": c.n_second,
                    "held_out": c.n_first,
                    "rate_treated": c.rate_second,
                    "rate_held_out": c.rate_first,
                    "prevented": c.difference.estimate,
                    "low": c.difference.low,
                    "high": c.difference.high,
                }
            )
    columns = ["dimension", "value", "treated", "held_out", "rate_treated", "rate_held_out", "prevented", "low", "high"]
    return pd.DataFrame(rows, columns=columns)


def compare(first: pd.Series, second: pd.Series, first_name: str, second_name: str) -> ArmComparison:
    """Rates of two groups and their difference with Newcombe's hybrid score interval (Wilson per group):
    it keeps its 95% where the Wald interval fails, at small groups or rates near 0 or 1."""
    a, n_a = int(first.sum()), len(first)
    b, n_b = int(second.sum()), len(second)
    p_a, p_b = a / n_a, b / n_b
    l_a, u_a = wilson(a, n_a)
    l_b, u_b = wilson(b, n_b)
    d = p_a - p_b
    low = d - math.sqrt((p_a - l_a) ** 2 + (u_b - p_b) ** 2)
    high = d + math.sqrt((u_a - p_a) ** 2 + (p_b - l_b) ** 2)
    return ArmComparison(first_name, second_name, n_a, n_b, p_a, p_b, Interval(d, low, high))


def needed_contacts(itt: ArmComparison, held_out_share: float) -> int | None:
    """Closed windows needed in all for a 95% interval of half-width |effect| at this split and these rates:
    when the interval is expected to exclude zero if the effect is what is seen now (None: no effect seen)."""
    d = abs(itt.difference.estimate)
    if d == 0 or not 0 < held_out_share < 1:
        return None
    p_c, p_t = itt.rate_first, itt.rate_second
    variance = p_c * (1 - p_c) / held_out_share + p_t * (1 - p_t) / (1 - held_out_share)
    return math.ceil(Z95**2 * max(variance, 1e-9) / d**2)
