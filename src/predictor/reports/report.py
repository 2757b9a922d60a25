"""The predicted-repeat report for managers: one self-contained HTML file.

Built as a plain dict first (``build``), which the tests check, then rendered with a Jinja template
shipped in the package (autoescape on), with every plot embedded so the file opens offline.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from jinja2 import Environment, select_autoescape

from predictor.contacts.labels import DataEnd
from predictor.loop.outcomes import Outcomes
from predictor.model.evaluate import rates_differ
from predictor.reports.plan import FollowUpPlan

Z95 = 1.96


@dataclass(frozen=True)
class ReportConfig:
    cost_per_contact: float = 6.0  # handling cost of one repeat contact, in the currency of the reader
    prevention_rate: float = 0.3  # share of repeats a proactive follow-up prevents (stated assumption)
    top_share: float = 0.1  # follow up on this share of contacts, highest risk first
    min_agent_volume: int = 50  # agents with fewer closed windows are grouped, never ranked
    high_risk_rows: int = 50
    currency: str = "€"
    shift_tolerance: float = 0.05  # flag a repeat-rate shift larger than this (and than sampling noise)


def build(
    labelled: pd.DataFrame,
    predictions: pd.DataFrame,
    followup: FollowUpPlan,
    plan: dict[str, Any] | None,
    config: ReportConfig | None = None,
    model_version: str = "",
    data_end: DataEnd | None = None,
    outcomes: Outcomes | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as data. ``labelled`` comes from labels.derive; ``predictions`` from the
    model (contact_id, repeat_probability, next_issue_1, hours_to_repeat_median, ...); ``outcomes``, from the
    service's contact store, what its answers and follow-ups did (the "Is it working?" section)."""
    config = config or ReportConfig()
    data = labelled.merge(predictions, on="contact_id", how="left", validate="one_to_one")
    complete = data[data["window_complete"]]
    repeats = complete[complete["is_repeat"].astype(bool)]
    n_complete = len(complete)
    repeat_rate = len(repeats) / n_complete if n_complete else float("nan")
    explicit = float((repeats["repeat_type"] == "explicit").mean()) if len(repeats) else float("nan")
    open_window = data[~data["window_complete"]]

    headline = {
        "period_start": str(data["closed_at"].min().date()),
        "period_end": str(data["closed_at"].max().date()),
        "contacts": len(data),
        "contacts_with_closed_window": n_complete,
        "repeat_rate": repeat_rate,
        "fcr": 1 - repeat_rate,
        "explicit_share": explicit,
        "implicit_share": 1 - explicit,
        "open_window": len(open_window),
        "open_window_repeats_seen": int(open_window["is_repeat"].fillna(False).astype(bool).sum()),
        "predicted_repeats_in_open_window": float(open_window["repeat_probability"].sum()),
        "window_days": float((data["window_ends_at"] - data["closed_at"]).dt.total_seconds().median() / 86400),
        "model_version": model_version,
        "data_end": data_end.describe() if data_end is not None else "",
    }

    by = {
        "issue": _by_group(data, "issue"),
        "channel": _by_group(data, "channel"),
        "agent": _by_agent(data, config.min_agent_volume),
    }
    weekly = _weekly(data)
    headline["shift"] = rate_shift(complete, config.shift_tolerance)

    # Act today: contacts inside their window whose customer has not come back yet (those who did are
    # already in someone's queue).
    waiting = open_window[~open_window["is_repeat"].fillna(False).astype(bool)]
    recent = waiting.sort_values("repeat_probability", ascending=False).head(config.high_risk_rows)
    high_risk = []
    for row in recent.itertuples(index=False):
        advice = followup.recommend(
            repeat_probability=float(row.repeat_probability), next_issue=row.next_issue_1, contact_issue=row.issue,
            contact_channel=row.channel, hours_to_repeat_median=float(row.hours_to_repeat_median),
        )  # fmt: skip
        high_risk.append(
            {
                "contact_id": row.contact_id,
                "customer_id": row.customer_id,
                "closed_at": str(row.closed_at)[:16],
                "issue": row.issue,
                "channel": row.channel,
                "agent_id": row.agent_id,
                "repeat_probability": round(float(row.repeat_probability), 4),
                "likely_next_issue": row.next_issue_1,
                "repeat_type": advice.repeat_type,
                "hours_to_repeat_median": round(float(row.hours_to_repeat_median), 1),
                "follow_up": advice.message or f"(no script yet for {row.next_issue_1})",
                "send_within_hours": advice.send_within_hours,
                "channel_to_use": advice.channel,
            }
        )

    working = _working(outcomes)
    cost = _cost(complete, config, working)
    calibration = [
        {"group": r["group"], "predicted": r["predicted_rate"], "actual": r["repeat_rate"], "n": r["closed_windows"]}
        for r in by["issue"]
        if r["closed_windows"] > 0
    ]
    return {
        "headline": headline,
        "weekly": weekly,
        "by": by,
        "calibration": calibration,
        "high_risk": high_risk,
        "cost": cost,
        "plan": plan,
        "config": config.__dict__,
        "working": working,
    }


def _working(outcomes: Outcomes | None) -> dict[str, Any] | None:
    """The "Is it working?" figures: live quality and the experiment's measured prevention, as data."""
    if outcomes is None:
        return None
    out = outcomes.as_dict()
    itt = outcomes.itt
    if itt is None:
        out["verdict"] = "not measured yet: the experiment has no closed windows in both arms"
    elif itt.difference.low > 0:
        out["verdict"] = (
            f"follow-ups prevent {itt.relative:.0%} of repeats among the contacts they are due for "
            f"({itt.difference.estimate * 100:+.1f} points, 95% interval {itt.difference.low * 100:+.1f} to "
            f"{itt.difference.high * 100:+.1f})"
        )
    elif itt.difference.high < 0:
        out["verdict"] = "follow-ups cause more repeats than they prevent (the whole interval is below zero)"
    else:
        out["verdict"] = "no effect shown yet: the 95% interval of the difference includes zero"
    out["measured_prevention"] = itt.relative if itt is not None and itt.difference.low > 0 else None
    return out


def render(report: dict[str, Any]) -> str:
    plots = {
        "weekly": _png(_plot_weekly(report["weekly"])),
        "issue": _png(_plot_groups(report["by"]["issue"], "Repeat rate by primary issue")),
        "channel": _png(_plot_groups(report["by"]["channel"], "Repeat rate by channel")),
        "calibration": _png(_plot_calibration(report["calibration"])),
    }
    working = report.get("working")
    if working and working.get("itt"):
        plots["arms"] = _png(_plot_arms(working))
    if working and working.get("by_week"):
        plots["live"] = _png(_plot_live(working["by_week"]))
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["pct"] = lambda v, digits=1: "–" if v is None or v != v else f"{v * 100:.{digits}f}%"
    env.filters["num"] = lambda v: f"{v:,.0f}"
    template = env.from_string(resources.files("predictor.reports.templates").joinpath("report.html.j2").read_text())
    return template.render(r=report, plots=plots)


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report))
    csv = out.with_name(out.stem + "_high_risk.csv")
    pd.DataFrame(report["high_risk"]).to_csv(csv, index=False)
    return out, csv


# -- tables ------------------------------------------------------------------------------------------------


def wilson(successes: float, n: float) -> tuple[float, float]:
    """95% Wilson interval of a rate: honest on small groups, never outside [0, 1]."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _group_row(name: str, group: pd.DataFrame) -> dict[str, Any]:
    complete = group[group["window_complete"]]
    n = len(complete)
    k = float(complete["is_repeat"].astype(float).sum()) if n else 0.0
    low, high = wilson(k, n)
    return {
        "group": name,
        "contacts": len(group),
        "closed_windows": n,
        "repeat_rate": k / n if n else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "predicted_rate": float(group["repeat_probability"].mean()),
        "predicted_rate_closed": float(complete["repeat_probability"].mean()) if n else float("nan"),
        "explicit_share": float((complete["repeat_type"] == "explicit").sum() / max(k, 1)),
    }


def _by_group(data: pd.DataFrame, column: str) -> list[dict[str, Any]]:
    rows = [_group_row(str(name), group) for name, group in data.groupby(column, observed=True)]
    return sorted(rows, key=lambda r: -r["contacts"])


def _by_agent(data: pd.DataFrame, min_volume: int) -> list[dict[str, Any]]:
    volume = data[data["window_complete"]].groupby("agent_id").size()
    big = set(volume[volume >= min_volume].index)
    rows = [_group_row(str(a), g) for a, g in data[data["agent_id"].isin(big)].groupby("agent_id")]
    rows.sort(key=lambda r: r["group"])  # alphabetical: a table to look up, not a league table
    small = data[~data["agent_id"].isin(big)]
    if len(small):
        grouped = _group_row(f"{small['agent_id'].nunique()} agents under {min_volume} closed windows", small)
        grouped["grouped"] = True
        rows.append(grouped)
    return rows


def rate_shift(complete: pd.DataFrame, tolerance: float) -> str | None:
    """A sentence when the repeat rate of the latest quarter of closed windows differs from the earlier
    ones beyond ``tolerance`` (and beyond sampling noise), and how the model's predicted rate compares."""
    if len(complete) < 200:
        return None
    ordered = complete.sort_values("closed_at")
    cut = int(len(ordered) * 0.75)
    early, late = ordered.iloc[:cut], ordered.iloc[cut:]
    a = float(early["is_repeat"].astype(float).mean())
    b = float(late["is_repeat"].astype(float).mean())
    if not rates_differ(a, len(early), b, len(late), tolerance):
        return None
    predicted = float(late["repeat_probability"].mean())
    return (
        f"The repeat rate shifted: {a:.1%} over the earlier contacts, {b:.1%} over the latest quarter "
        f"(since {late['closed_at'].min().date()}); the model predicted {predicted:.1%} for those. "
        "A model calibrated before the shift is off until it is retrained on recent contacts."
    )


def _weekly(data: pd.DataFrame) -> list[dict[str, Any]]:
    week = data["closed_at"].dt.tz_convert(None).dt.to_period("W").dt.start_time
    rows = []
    for start, group in data.groupby(week):
        complete = group["window_complete"]
        known = group[complete]
        rows.append(
            {
                "week": str(pd.Timestamp(start).date()),
                "contacts": len(group),
                "share_window_open": float((~complete).mean()),
                "repeat_rate": float(known["is_repeat"].astype(float).mean()) if len(known) else float("nan"),
                "predicted_rate": float(group["repeat_probability"].mean()),
            }
        )
    return rows


def _cost(complete: pd.DataFrame, config: ReportConfig, working: dict[str, Any] | None = None) -> dict[str, Any]:
    """What repeats cost and what following up the riskiest saves: at the prevention rate the experiment
    measured when it has shown one, else at the stated assumption (and the report says which)."""
    measured = working.get("measured_prevention") if working else None
    rate = measured if measured is not None else config.prevention_rate
    repeats = int(complete["is_repeat"].astype(bool).sum())
    p = complete["repeat_probability"].to_numpy()
    y = complete["is_repeat"].astype(bool).to_numpy()
    k = max(1, round(len(p) * config.top_share))
    top = np.argsort(-p)[:k]
    reached = int(y[top].sum())
    prevented = reached * rate
    return {
        "prevention_rate": rate,
        "prevention_measured": measured is not None,
        "repeats": repeats,
        "repeat_cost": repeats * config.cost_per_contact,
        "followed_up": k,
        "repeats_reached": reached,
        "share_of_repeats_reached": reached / max(repeats, 1),
        "prevented": prevented,
        "saving": prevented * config.cost_per_contact,
        "follow_ups_per_prevented_repeat": k / max(prevented, 1e-9),
    }


# -- plots -------------------------------------------------------------------------------------------------


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _plot_weekly(weekly: list[dict[str, Any]]) -> plt.Figure:
    frame = pd.DataFrame(weekly)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = pd.to_datetime(frame["week"])
    complete = frame["share_window_open"] == 0
    ax.plot(x[complete], frame["repeat_rate"][complete], marker="o", color="#1f5aa6", label="actual (window closed)")
    partial = ~complete
    ax.plot(x[partial], frame["repeat_rate"][partial], marker="o", ls=":", color="#999999",
            label="actual, window still open: too low until it closes")  # fmt: skip
    ax.plot(x, frame["predicted_rate"], color="#e07b00", label="predicted")
    if partial.any():
        ax.axvspan(x[partial].min() - pd.Timedelta(days=3.5), x.max() + pd.Timedelta(days=3.5), color="#eeeeee",
                   zorder=0)  # fmt: skip
    ax.set(ylabel="repeat rate", title="Repeat rate by week of first contact")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=8, loc="lower left")
    return fig


def _plot_groups(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    frame = pd.DataFrame(rows).sort_values("repeat_rate")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(frame) + 1.2))
    y = np.arange(len(frame))
    err = np.vstack([frame["repeat_rate"] - frame["ci_low"], frame["ci_high"] - frame["repeat_rate"]])
    ax.barh(
        y, frame["repeat_rate"], xerr=err, color="#9cc3e6", ecolor="#555555", capsize=2, label="actual (95% interval)"
    )
    ax.scatter(frame["predicted_rate_closed"], y, color="#e07b00", zorder=3, label="predicted")
    ax.set_yticks(y, frame["group"], fontsize=8)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set(title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _plot_calibration(rows: list[dict[str, Any]]) -> plt.Figure:
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.scatter(frame["predicted"], frame["actual"], s=np.sqrt(frame["n"]) * 4, alpha=0.7, color="#1f5aa6")
    for row in frame.itertuples():
        ax.annotate(row.group.replace("_", " "), (row.predicted, row.actual), fontsize=6, alpha=0.8)
    top = float(max(frame["predicted"].max(), frame["actual"].max()) * 1.1) if len(frame) else 1.0
    ax.plot([0, top], [0, top], color="grey", ls=":")
    ax.set(xlabel="predicted repeat rate", ylabel="actual repeat rate", title="Predicted vs actual, by issue")
    return fig


def _plot_arms(working: dict[str, Any]) -> plt.Figure:
    """Repeat rates of the held-out and treated contacts (with a follow-up due), with 95% intervals."""
    from predictor.loop.outcomes import wilson as score_interval

    itt = working["itt"]
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    names = [f"held out (no follow-up), n={itt['n_first']:,}", f"treated (follow-up due), n={itt['n_second']:,}"]
    rates = [itt["rate_first"], itt["rate_second"]]
    counts = [round(itt["rate_first"] * itt["n_first"]), round(itt["rate_second"] * itt["n_second"])]
    bounds = [score_interval(k, n) for k, n in zip(counts, (itt["n_first"], itt["n_second"]), strict=True)]
    err = np.array(
        [
            [r - lo for r, (lo, _) in zip(rates, bounds, strict=True)],
            [hi - r for r, (_, hi) in zip(rates, bounds, strict=True)],
        ]
    )
    ax.barh([1, 0], rates, xerr=err, color=["#bbbbbb", "#1f5aa6"], ecolor="#333333", capsize=4)
    ax.set_yticks([1, 0], names, fontsize=8)
    ax.set_xlim(0, max(0.05, min(1.0, max(hi for _, hi in bounds) * 1.15)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set(
        xlabel="repeat rate within the window (95% interval)", title="Contacts with a follow-up due: repeat rate by arm"
    )
    return fig


def _plot_live(by_week: list[dict[str, Any]]) -> plt.Figure:
    """Live: what the service predicted against what happened, by week of close (windows closed only)."""
    frame = pd.DataFrame(by_week)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = pd.to_datetime(frame["week"])
    ax.bar(x, frame["realised_rate"], width=5, color="#9cc3e6", label="realised repeat rate")
    ax.plot(x, frame["predicted_rate"], marker="o", color="#e07b00", label="predicted by the service")
    ax.set_ylim(0, max(0.05, float(max(frame["realised_rate"].max(), frame["predicted_rate"].max())) * 1.25))
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set(title="Scored contacts: predicted vs realised repeat rate by week of close", ylabel="repeat rate")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
