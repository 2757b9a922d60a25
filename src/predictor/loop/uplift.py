"""Whom a follow-up helps most: an uplift model on the experiment's randomised arms, against risk ranking.

Ranking by risk follows up the customers most likely to come back, but a likely returner is not always one a
follow-up stops (some come back whatever they are told; some would not have come back anyway). With both arms
randomised, the effect itself can be learnt: a two-model learner (LightGBM on the treated, LightGBM on the held
out, uplift = the held-out model's repeat probability minus the treated one's) on the earlier contacts, judged
on the later ones by the Qini coefficient: the repeats prevented when following up the top of a ranking, above
what a random ranking prevents. The policy may rank by uplift only where that beats ranking by risk on the
later contacts; the comparison is recorded in MLflow either way, and the service keeps ranking by risk until
someone acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.config import Settings
from predictor.contacts.store import CONTACT_COLUMNS
from predictor.loop.assignment import HELD_OUT, TREATED

MIN_PER_ARM = 200  # closed windows per arm in the learning part before an uplift model is worth fitting
EVALUATION_SHARE = 0.3  # the latest contacts, by close, judge the rankings
TOP_SHARE = 0.3  # uplift@k: the repeats prevented per contact when following up this share


@dataclass
class UpliftResult:
    fitted: bool
    reason: str
    train: int = 0
    evaluated: int = 0
    qini_uplift: float = float("nan")
    qini_risk: float = float("nan")
    uplift_at_top_uplift: float = float("nan")
    uplift_at_top_risk: float = float("nan")
    policy: str = "risk"  # what the comparison supports: "uplift" only when it beats risk on the later contacts
    run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def qini(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """The Qini coefficient of a ranking (higher score: followed up first) for *prevention*, and the
    prevented repeats per contact in its top ``TOP_SHARE``.

    Following up the top k, the repeats prevented are the held-out repeats scaled to the treated count minus
    the treated repeats there; the coefficient is the mean height of that curve above the random ranking's
    line, per contact."""
    order = np.argsort(-score, kind="stable")
    y, treated = y[order].astype(float), treated[order].astype(bool)
    n_t, n_c = np.cumsum(treated), np.cumsum(~treated)
    r_t, r_c = np.cumsum(y * treated), np.cumsum(y * ~treated)
    gain = np.where(n_c > 0, r_c * n_t / np.maximum(n_c, 1), 0.0) - r_t
    n = len(y)
    random_line = gain[-1] * np.arange(1, n + 1) / n
    coefficient = float(np.mean(gain - random_line) / n)
    k = max(1, round(n * TOP_SHARE))
    top_t, top_c = treated[:k], ~treated[:k]
    at_k = float(y[:k][top_c].mean() - y[:k][top_t].mean()) if top_t.any() and top_c.any() else float("nan")
    return coefficient, at_k


def evaluate(
    frame: pd.DataFrame, X: pd.DataFrame | np.ndarray, settings: Settings, min_per_arm: int = MIN_PER_ARM
) -> UpliftResult:
    """``frame``: counted contacts with closed windows (``arm``, ``is_repeat``, ``repeat_probability``,
    ``closed_at``), in the rows of ``X`` (the model's input for them)."""
    from lightgbm import LGBMClassifier

    from predictor.model.fitted import as_matrix

    order = np.argsort(frame["closed_at"].to_numpy(), kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    matrix = as_matrix(X)[order]
    cut = int(len(frame) * (1 - EVALUATION_SHARE))
    learn, judge = frame.iloc[:cut], frame.iloc[cut:]
    arms = learn["arm"].value_counts()
    fewest = int(min(arms.get(TREATED, 0), arms.get(HELD_OUT, 0)))
    if fewest < min_per_arm:
        return UpliftResult(
            False, f"{fewest} closed windows in the smaller arm of the learning part; {min_per_arm} needed"
        )
    y = frame["is_repeat"].astype(bool).to_numpy()
    treated = (frame["arm"] == TREATED).to_numpy()
    models = {}
    for name, rows in (("treated", treated[:cut]), ("held_out", ~treated[:cut])):
        model = LGBMClassifier(
            n_estimators=120, learning_rate=0.05, num_leaves=8, min_child_samples=20,
            subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=0, verbose=-1,
        )  # fmt: skip
        models[name] = model.fit(matrix[:cut][rows], y[:cut][rows])
    later = matrix[cut:]
    uplift = models["held_out"].predict_proba(later)[:, 1] - models["treated"].predict_proba(later)[:, 1]
    q_uplift, at_uplift = qini(y[cut:], treated[cut:], uplift)
    q_risk, at_risk = qini(y[cut:], treated[cut:], judge["repeat_probability"].to_numpy(dtype=float))
    policy = "uplift" if q_uplift > q_risk and at_uplift > at_risk else "risk"
    return UpliftResult(
        True,
        "ranking by uplift beats ranking by risk on the later contacts"
        if policy == "uplift"
        else "ranking by uplift does not beat ranking by risk on the later contacts: keep risk",
        train=cut,
        evaluated=len(judge),
        qini_uplift=q_uplift,
        qini_risk=q_risk,
        uplift_at_top_uplift=at_uplift,
        uplift_at_top_risk=at_risk,
        policy=policy,
    )


def evaluate_store(
    store: Any,
    settings: Settings,
    min_per_arm: int = MIN_PER_ARM,
    record: bool = True,
    frame: pd.DataFrame | None = None,
) -> UpliftResult:
    """Features of the store's counted contacts by the champion (point-in-time, from the store's history),
    the comparison, and (``record``) an MLflow run in the model's experiment with its figures and decision.
    ``frame``: the store as ``outcomes.realised`` read it, when the caller has it already."""
    from predictor.loop.outcomes import realised
    from predictor.registry.tracking import load_version

    if frame is None:
        frame, _ = realised(store, settings.labels)
    counted = frame[frame["scored"] & frame["arm"].notna() & frame["window_complete"].astype(bool)]
    counted = counted.reset_index(drop=True)
    if counted.empty:
        return UpliftResult(False, "no contact of the experiment has a closed window yet")
    model, version, _ = load_version(settings, settings.service.model_version)
    history = frame[list(CONTACT_COLUMNS)]
    X = model.model_input(model.features(counted[list(CONTACT_COLUMNS)], history))
    result = evaluate(counted, X, settings, min_per_arm)
    if record:
        result.run_id = _record(result, settings, version)
    return result


def _record(result: UpliftResult, settings: Settings, version: str) -> str:
    import mlflow

    from predictor.registry.tracking import connect

    connect(settings.registry)
    name = f"{settings.registry.experiment_name}-uplift"
    if mlflow.get_experiment_by_name(name) is None:  # beside the model's runs, not in ./mlruns
        root = Path(settings.registry.artifact_root).resolve()
        mlflow.create_experiment(name, artifact_location=root.as_uri())
    mlflow.set_experiment(name)
    with mlflow.start_run(run_name=f"uplift vs risk, model version {version}") as run:
        mlflow.set_tag("mlflow.note.content", f"{result.reason} (policy: {result.policy})")
        mlflow.log_params({"model_version": version, "policy": result.policy, "fitted": result.fitted})
        if result.fitted:
            mlflow.log_metrics(
                {
                    "uplift.qini": result.qini_uplift,
                    "risk.qini": result.qini_risk,
                    "uplift.prevented_at_top": result.uplift_at_top_uplift,
                    "risk.prevented_at_top": result.uplift_at_top_risk,
                    "contacts.learn": result.train,
                    "contacts.judge": result.evaluated,
                }
            )
        return run.info.run_id
