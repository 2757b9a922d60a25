"""The time split: which labelled contacts train, calibrate and test a model, and when a log is too thin.

Slices are quantiles of the close times of the contacts whose window had closed by the data end; a row
whose label would be known only after the next slice starts is left out (a one-window embargo). The rule
is applied per row (``slice_codes``) and summed (``slice_summary``), so a log split over partitions is
split exactly as the same log in one frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from predictor.config import Settings
from predictor.model import evaluate


class TrainingDataError(ValueError):
    """The log cannot support a model (too few labelled contacts or repeats); the message says what to do."""


# Which slice a labelled row falls in: backends carry these codes beside each row.
NOT_USED, TRAIN, CALIBRATION, TEST = 0, 1, 2, 3
SLICE_NAMES = {TRAIN: "train", CALIBRATION: "calibration", TEST: "test"}
MODES = ("slice", "out-of-fold")


@dataclass
class Split:
    boundaries: dict[str, str]
    counts: dict[str, int]
    calibration_mode: str = "slice"  # or "out-of-fold"
    repeat_rates: dict[str, float] = field(default_factory=dict)
    repeats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Row positions in the log, where the log is one frame in this process (empty on a cluster).
    train: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    calibration: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    test: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))


def split_boundaries(
    closed: pd.Series, settings: Settings, data_end: pd.Timestamp | None = None
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Where calibration and test start: quantiles of the close times of the contacts whose window had closed
    by ``data_end`` (all close times without one), so each slice's share is of what can be learnt from."""
    if data_end is not None:
        window = pd.Timedelta(days=settings.labels.repeat_window_days)
        known = closed[closed + window <= data_end]
        closed = known if len(known) else closed
    test_start = closed.quantile(1 - settings.split.test_fraction)
    cal_start = closed.quantile(1 - settings.split.test_fraction - settings.split.calibration_fraction)
    return pd.Timestamp(cal_start), pd.Timestamp(test_start)


def slice_codes(
    labelled: pd.DataFrame,
    boundaries: tuple[pd.Timestamp, pd.Timestamp],
    settings: Settings,
    calibration_mode: str = "slice",
) -> np.ndarray:
    """Each row's slice; rows whose window is open, or whose label would leak into the next slice, are unused.

    With ``calibration_mode="out-of-fold"`` there is no calibration slice: training runs up to one window
    before the test slice, and calibration is fitted on out-of-fold scores of the training rows.
    """
    cal_start, test_start = boundaries
    closed = labelled["closed_at"]
    window = pd.Timedelta(days=settings.labels.repeat_window_days)
    # Whole window observed, not merely "uncensored": see labels.derive on outcome-dependent censoring.
    known = labelled["window_complete"].to_numpy(dtype=bool)
    # A row's label is known at most one window after its close: that must be before the next slice.
    codes = np.full(len(labelled), NOT_USED, dtype=np.int8)
    if calibration_mode == "out-of-fold":
        codes[known & (closed <= test_start - window).to_numpy()] = TRAIN
    else:
        codes[known & (closed <= cal_start - window).to_numpy()] = TRAIN
        codes[known & ((closed > cal_start) & (closed <= test_start - window)).to_numpy()] = CALIBRATION
    codes[known & (closed > test_start).to_numpy()] = TEST
    return codes


def slice_summary(
    labelled: pd.DataFrame, boundaries: tuple[pd.Timestamp, pd.Timestamp], settings: Settings
) -> pd.DataFrame:
    """Rows and repeats per calibration mode and slice, plus the log's totals: summable over partitions.

    One row per (mode, code) with ``rows`` and ``repeats``; code ``NOT_USED`` of mode ``"slice"`` also
    carries the partition's ``contacts``, ``censored`` and ``window_open`` (zero elsewhere)."""
    repeat = labelled["is_repeat"].fillna(False).astype(bool).to_numpy()
    records = []
    for mode in MODES:
        codes = slice_codes(labelled, boundaries, settings, mode)
        for code in (NOT_USED, TRAIN, CALIBRATION, TEST):
            chosen = codes == code
            totals = mode == "slice" and code == NOT_USED
            records.append(
                {
                    "mode": mode,
                    "code": code,
                    "rows": int(chosen.sum()),
                    "repeats": int(repeat[chosen].sum()),
                    "contacts": len(labelled) if totals else 0,
                    "censored": int(labelled["censored"].sum()) if totals else 0,
                    "window_open": int((~labelled["window_complete"].to_numpy(dtype=bool)).sum()) if totals else 0,
                }
            )
    return pd.DataFrame.from_records(records)


def decide(summary: pd.DataFrame, boundaries: tuple[pd.Timestamp, pd.Timestamp], settings: Settings) -> Split:
    """The split from summed ``slice_summary`` rows.

    Adapts to a short log: when the one-window embargo leaves too few repeats for a calibration slice, the
    calibration is fitted out-of-fold on the training slice (and the split says so). Raises
    ``TrainingDataError`` when even then the training or test slice is below the configured minimum.
    """
    summary = summary.groupby(["mode", "code"], as_index=False).sum()
    contacts = int(summary["contacts"].sum())
    window_open = int(summary["window_open"].sum())
    if not contacts:
        raise TrainingDataError("the log holds no valid contacts to train on")
    if window_open == contacts:
        raise TrainingDataError(
            f"no contact's {settings.labels.repeat_window_days:g}-day window has closed before the data end "
            f"({contacts:,} contacts, all censored or still open): give a longer log, a shorter window "
            "(PREDICTOR_LABELS__REPEAT_WINDOW_DAYS) or the extraction time (--as-of)"
        )

    def per_slice(mode: str, column: str) -> dict[int, int]:
        rows = summary[summary["mode"] == mode]
        return dict(zip(rows["code"].astype(int), rows[column].astype(int), strict=True))

    mode, notes = "slice", []
    rows, repeats = per_slice(mode, "rows"), per_slice(mode, "repeats")
    cal_repeats, cal_other = repeats.get(CALIBRATION, 0), rows.get(CALIBRATION, 0) - repeats.get(CALIBRATION, 0)
    if calibration_too_thin(cal_repeats, cal_other, settings):
        mode = "out-of-fold"
        rows, repeats = per_slice(mode, "rows"), per_slice(mode, "repeats")
        notes.append(
            f"the calibration slice holds {cal_repeats} repeats and {cal_other} non-repeats after the "
            f"{settings.labels.repeat_window_days:g}-day embargo (minimum {settings.split.min_calibration_repeats}): "
            f"calibrating out-of-fold ({settings.split.calibration_folds} folds) on the training slice instead"
        )
    counts = counts_of(contacts, int(summary["censored"].sum()), window_open, rows)
    named_repeats = {name: int(repeats.get(code, 0)) for code, name in SLICE_NAMES.items()}
    check_slices(counts, named_repeats, settings)
    rates = {name: named_repeats[name] / counts[name] for name in SLICE_NAMES.values() if counts[name]}
    return Split(
        boundaries=boundary_strings(boundaries),
        counts=counts,
        calibration_mode=mode,
        repeat_rates=rates,
        repeats=named_repeats,
        notes=notes,
    )


def time_split(labelled: pd.DataFrame, settings: Settings, data_end: pd.Timestamp | None = None) -> Split:
    """The split of a log held in one frame, with the row positions of each slice."""
    if not len(labelled):
        raise TrainingDataError("the log holds no valid contacts to train on")
    boundaries = split_boundaries(labelled["closed_at"], settings, data_end)
    split = decide(slice_summary(labelled, boundaries, settings), boundaries, settings)
    codes = slice_codes(labelled, boundaries, settings, split.calibration_mode)
    split.train, split.calibration, split.test = (np.flatnonzero(codes == c) for c in (TRAIN, CALIBRATION, TEST))
    return split


def calibration_too_thin(repeats: int, others: int, settings: Settings) -> bool:
    """Too few repeats or non-repeats in the calibration slice to fit a calibration map on."""
    return min(repeats, others) < settings.split.min_calibration_repeats


def check_slices(counts: dict[str, int], repeats: dict[str, int], settings: Settings) -> None:
    """Stop, with the counts and what to do, when a slice is too thin to fit on or to judge by."""
    need = settings.split
    problems = []
    train_other = counts["train"] - repeats["train"]
    test_other = counts["test"] - repeats["test"]
    if repeats["train"] < need.min_train_repeats or train_other < need.min_train_repeats:
        problems.append(
            f"the training slice holds {repeats['train']} repeats and {train_other} non-repeats "
            f"(minimum {need.min_train_repeats} of each)"
        )
    if repeats["test"] < need.min_test_repeats or test_other < need.min_test_repeats:
        problems.append(
            f"the test slice holds {repeats['test']} repeats and {test_other} non-repeats "
            f"(minimum {need.min_test_repeats} of each)"
        )
    if problems:
        raise TrainingDataError(
            "too little labelled data to train and test a model: "
            + "; ".join(problems)
            + f" (split: {counts['train']:,} train, {counts['calibration']:,} calibration, {counts['test']:,} test, "
            f"{counts['window_open']:,} with their window still open, {counts['embargoed']:,} embargoed). Give a "
            "longer log, or lower PREDICTOR_SPLIT__MIN_TRAIN_REPEATS / PREDICTOR_SPLIT__MIN_TEST_REPEATS knowing "
            "the figures will be noisy"
        )


def drift_warning(split: Split, settings: Settings) -> str | None:
    """The repeat rate the model is calibrated on against the one it is judged on, when they differ."""
    reference = "calibration" if split.calibration_mode == "slice" else "train"
    if reference not in split.repeat_rates or "test" not in split.repeat_rates:
        return None
    a, b = split.repeat_rates[reference], split.repeat_rates["test"]
    if not evaluate.rates_differ(a, split.counts[reference], b, split.counts["test"], settings.split.drift_tolerance):
        return None
    return (
        f"drift: the repeat rate moved from {a:.1%} ({reference} slice) to {b:.1%} (test slice); a model "
        "calibrated on the earlier rate is off by about the difference until it is retrained on recent contacts"
    )


def boundary_strings(boundaries: tuple[pd.Timestamp, pd.Timestamp]) -> dict[str, str]:
    return {"calibration_start": str(boundaries[0]), "test_start": str(boundaries[1])}


def counts_of(contacts: int, censored: int, window_open: int, per_code: dict[int, int]) -> dict[str, int]:
    """The split's row counts from how many rows each slice code has."""
    counts = {
        "contacts": contacts,
        "censored": censored,
        "window_open": window_open,
        "train": int(per_code.get(TRAIN, 0)),
        "calibration": int(per_code.get(CALIBRATION, 0)),
        "test": int(per_code.get(TEST, 0)),
    }
    counts["embargoed"] = contacts - window_open - counts["train"] - counts["calibration"] - counts["test"]
    return counts
