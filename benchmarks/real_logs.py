"""Logs shaped like real exports: the model's figures on each, and what each history feature adds.

    .venv/bin/python benchmarks/real_logs.py logs --out bench-results/real-logs     # write the logs
    .venv/bin/python benchmarks/real_logs.py train --out bench-results/real-logs    # train on each
    .venv/bin/python benchmarks/real_logs.py ablate --out bench-results/real-logs   # drop each new feature

``logs`` simulates, with one seed, the default log, the same with e-mail as tickets open for days (all
contacts, and the closed-only export of it) and a drifting log; ``train`` trains on each file with only
``fit``'s long-standing interface, so the same command run against an older checkout (its ``src`` first on
PYTHONPATH) gives the "before" figures; ``ablate`` retrains with each new history feature dropped.
Results: ``<out>/<step>.{json,md}``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import results

from predictor.config import EmbeddingConfig, Settings
from predictor.contacts.schema import validate, write_table
from predictor.training.train import fit, load_hyperparams

SHAPES = {
    "default": {},
    "tickets (all contacts)": {"ticket_days": 3.0},
    "tickets (closed-only export)": {"ticket_days": 3.0, "export": "closed-only"},
    "drift (rate falls 70%)": {"drift": -0.7},
}
NEW_FEATURES = (
    "customer_open_contacts",
    "customer_known_repeat_rate",
    "customer_contacts_all",
    "days_since_first_contact",
    "issue_transition",
)


def _file(out: Path, shape: str) -> Path:
    return out / (shape.split(" ")[0] + ("-closed" if "closed" in shape else "") + ".parquet")


def write_logs(out: Path, n: int, seed: int) -> None:
    from predictor.contacts.simulate import SimulatorConfig, simulate

    for shape, options in SHAPES.items():
        log = simulate(SimulatorConfig(n_contacts=n, seed=seed, **options))
        write_table(log.contacts, _file(out, shape))
        print(f"{shape}: {len(log.contacts):,} contacts -> {_file(out, shape)}", flush=True)


def _figures(contacts: pd.DataFrame, settings: Settings, hyperparams: dict | None = None) -> dict:
    result = fit(contacts, settings, ablation=False, hyperparams=hyperparams)
    model = result.metrics.loc["model"]
    rates = getattr(result.split, "repeat_rates", {})
    return {
        "roc_auc": round(float(model["roc_auc"]), 4),
        "ece": round(float(model["ece"]), 4),
        "test": result.split.counts["test"],
        "calibration_rate": round(rates.get("calibration", float("nan")), 3),
        "test_rate": round(rates.get("test", float("nan")), 3),
        "p90_coverage": round(result.timing_metrics["p90_coverage"], 3),
        "next_top3": round(result.next_issue_metrics["top3_accuracy"], 3),
    }


def train(out: Path, cache: Path) -> None:
    settings = Settings(embedding=EmbeddingConfig(cache_dir=cache))
    rows = {}
    for shape in SHAPES:
        contacts = validate(pd.read_parquet(_file(out, shape))).contacts
        rows[shape] = _figures(contacts, settings)
        print(shape, rows[shape], flush=True)
    lines = [
        "| log | ROC AUC | ECE | test rows | calibration rate | test rate | p90 coverage | next top-3 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {k} | {v['roc_auc']:.3f} | {v['ece']:.4f} | {v['test']:,} | {v['calibration_rate']:.3f} | "
            f"{v['test_rate']:.3f} | {v['p90_coverage']:.3f} | {v['next_top3']:.3f} |"
            for k, v in rows.items()
        ),
    ]
    results.write(out, "train", rows, lines)


def ablate(out: Path, cache: Path, shapes: list[str]) -> None:
    settings = Settings(embedding=EmbeddingConfig(cache_dir=cache))
    table: dict[str, dict[str, float]] = {}
    for shape in shapes:
        contacts = validate(pd.read_parquet(_file(out, shape))).contacts
        for dropped in ("none (all features)", "all five new", *NEW_FEATURES):
            hp = load_hyperparams()
            drop = list(NEW_FEATURES) if dropped == "all five new" else [] if dropped.startswith("none") else [dropped]
            hp["features"] = {"drop": drop}
            auc = _figures(contacts, settings, hp)["roc_auc"]
            table.setdefault(dropped, {})[shape] = auc
            print(shape, dropped, auc, flush=True)
    base = table["none (all features)"]
    lines = [
        "| dropped | " + " | ".join(shapes) + " |",
        "|---|" + "---:|" * len(shapes),
        *(
            f"| {name} | "
            + " | ".join(
                f"{aucs[s]:.4f}" + ("" if name.startswith("none") else f" ({aucs[s] - base[s]:+.4f})") for s in shapes
            )
            + " |"
            for name, aucs in table.items()
        ),
    ]
    results.write(out, "ablate", table, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["logs", "train", "ablate"])
    parser.add_argument("--out", type=Path, default=Path("bench-results/real-logs"))
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shapes", nargs="*", default=["default", "tickets (closed-only export)"])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "predictor-bench-cache")
    args = parser.parse_args()
    np.seterr(all="ignore")
    if args.step == "logs":
        write_logs(args.out, args.n, args.seed)
    elif args.step == "train":
        train(args.out, args.cache)
    else:
        ablate(args.out, args.cache, args.shapes)


if __name__ == "__main__":
    main()
