"""Training in-process vs on a local Dask cluster: wall time and peak memory per stage, and the models' AUC.

    .venv/bin/python benchmarks/bench_cluster_train.py --n 1000000 [--workers 2] [--exports DIR]

Simulates N contacts (in 100k pieces: the simulator's own memory grows faster than the log) as weekly
Parquet exports, then trains twice with the fast embedding backend, each from an empty embedding cache:

- in-process, ``train.fit`` on the whole log read into memory (the baseline, measured in the same run);
- ``cluster_train.fit`` on ``LocalCluster(WORKERS worker processes, 1 thread each)``, the log read by
  the workers.

Each run is a child process; the parent samples the summed RSS of the child and everything it starts
(scheduler and workers) every 0.5 s and attributes each sample to the stage running then. A run whose
tree passes ``--memory-limit`` GB is stopped and reported with the stage it reached. Registration is
left out (it is the same MLflow call on both paths). Results: bench-results/cluster-train.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import results

STAGES_LOCAL = {
    "reading": "reading",
    "labels": "labels",
    "features and embeddings": "features + embeddings",
    "text heads": "text heads",
    "repeat model": "boosters",
    "next issue and timing": "boosters",
    "baselines": "baselines",
    "evaluation": "evaluation",
}
STAGES_CLUSTER = {
    "starting the cluster": "starting the cluster",
    "reading": "reading",
    "labels": "labels",
    "features": "labels",
    "text heads": "text heads",
    "embeddings": "features + embeddings",
    "repeat model": "boosters",
    "next issue and timing": "boosters",
    "baselines": "baselines",
    "evaluation": "evaluation",
}
ORDER = [
    "starting the cluster", "reading", "labels", "features + embeddings", "text heads", "boosters", "baselines",
    "evaluation",
]  # fmt: skip


def simulate_exports(n: int, folder: Path) -> Path:
    """N contacts over a year as weekly Parquet files, simulated 100k at a time (distinct customers per piece,
    shared agents), and the simulator's truth beside them."""
    import pandas as pd

    from predictor.contacts.schema import write_table
    from predictor.contacts.simulate import SimulatorConfig, simulate

    folder.mkdir(parents=True, exist_ok=True)
    pieces = max(1, n // 100_000)
    days = 365 / pieces
    truths = []
    for k in range(pieces):
        start = (pd.Timestamp("2026-01-05") + pd.Timedelta(days=days * k)).strftime("%Y-%m-%d")
        config = SimulatorConfig(n_contacts=n // pieces, seed=11 + k, start=start, days=round(days), n_agents=400)
        simulated = simulate(config)
        contacts, truth = simulated.contacts, simulated.truth
        for frame in (contacts, truth):
            frame["contact_id"] = f"K{k}-" + frame["contact_id"]
        contacts["customer_id"] = f"K{k}-" + contacts["customer_id"]
        truths.append(truth)
        week = contacts["opened_at"].dt.tz_convert(None).dt.to_period("W").astype(str)
        for stamp, part in contacts.groupby(week):
            write_table(part, folder / f"contacts-{stamp.split('/')[0]}-{k}.parquet")
        print(f"simulated {(k + 1) * (n // pieces):,} contacts", flush=True)
    pd.concat(truths).to_parquet(folder.with_name(folder.name + "-truth.parquet"))
    return folder


# -- the child: one training run, stage stamps to a JSON file ------------------------------------------
def child(mode: str, exports: Path, workers: int, work: Path, out: Path) -> None:
    import logging

    from predictor.config import ComputeConfig, EmbeddingConfig, Settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("predictor").setLevel(logging.INFO)  # what each stage did, in the benchmark's log

    stamps: list[tuple[str, float]] = []

    def stage(name: str) -> None:
        stamps.append((name, time.time()))
        # Written as they come: a run stopped for its memory still says how far it got.
        out.write_text(json.dumps({"stamps": stamps}))

    settings = Settings(embedding=EmbeddingConfig(cache_dir=work / f"cache-{mode}"))
    if mode == "in-process":
        from predictor.contacts.schema import load_files
        from predictor.training.train import fit

        stage("reading")
        contacts = load_files(exports).contacts
        result = fit(contacts, settings, ablation=False, stage=stage)
    else:
        from predictor.compute.cluster import connect
        from predictor.training import cluster_train

        compute = ComputeConfig(local_cluster=workers)
        settings = settings.model_copy(update={"compute": compute})
        stage("starting the cluster")
        with connect(compute) as client:
            result = cluster_train.fit(exports, settings, client, stage=stage).result
    stage("end")
    metrics = result.metrics
    out.write_text(
        json.dumps(
            {
                "stamps": stamps,
                "timings": result.timings,
                "counts": result.split.counts,
                "roc_auc": {name: float(metrics.loc[name, "roc_auc"]) for name in metrics.index},
                "ece": float(metrics.loc["model", "ece"]),
                "top3": result.next_issue_metrics["top3_accuracy"],
            }
        )
    )


# -- the parent: run, sample, attribute ----------------------------------------------------------------
def run(mode: str, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"{mode}.json"
    command = [sys.executable, __file__, "--child", mode, "--exports", str(args.exports), "--workers",
               str(args.workers), "--work", str(work), "--child-out", str(out)]  # fmt: skip
    samples: list[tuple[float, int]] = []
    started = time.time()
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    root = psutil.Process(process.pid)
    limit = args.memory_limit * 2**30
    stopped = False
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
            samples.append((time.time(), rss))
            if rss > limit:
                stopped = True
                for p in reversed(tree):
                    p.kill()
        except psutil.Error:
            pass
        time.sleep(0.5)
    wall = time.time() - started
    row: dict = {"seconds": round(wall, 1), "peak_rss_gb": round(max(r for _, r in samples) / 2**30, 2)}
    child_result = json.loads(out.read_text()) if out.exists() else {"stamps": []}
    names = STAGES_LOCAL if mode == "in-process" else STAGES_CLUSTER
    stamps = child_result["stamps"]
    if stamps and stamps[-1][0] != "end":
        stamps.append(("end", time.time()))
    stages: dict[str, dict[str, float]] = {}
    for (name, begin), (_, end) in itertools.pairwise(stamps):
        label = names.get(name, name)
        peak = max((r for t, r in samples if begin <= t <= end), default=0)
        entry = stages.setdefault(label, {"seconds": 0.0, "peak_rss_gb": 0.0})
        entry["seconds"] = round(entry["seconds"] + end - begin, 1)
        entry["peak_rss_gb"] = max(entry["peak_rss_gb"], round(peak / 2**30, 2))
    row["stages"] = stages
    if stopped or process.returncode != 0 or "counts" not in child_result:
        reached = names.get(stamps[-2][0], stamps[-2][0]) if len(stamps) > 1 else "start"
        why = f"stopped above {args.memory_limit} GB" if stopped else f"exit code {process.returncode}"
        row["failed"] = f"{why} in {reached}"
        return row
    row |= {k: child_result[k] for k in ("counts", "roc_auc", "ece", "top3", "timings")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="contacts in the simulated log")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--exports", type=Path, help="an existing directory of exports (default: simulate)")
    parser.add_argument("--memory-limit", type=float, default=20.0, help="GB; a run above it is stopped")
    parser.add_argument("--modes", default="in-process,cluster")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.exports, args.workers, args.work, args.child_out)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-train-"))
    if args.exports is None:
        args.exports = simulate_exports(args.n, work / "exports")
    files = len(list(args.exports.iterdir()))
    rows = {}
    for mode in args.modes.split(","):
        rows[mode] = run(mode, args, work)
        print(mode, json.dumps(rows[mode]), flush=True)

    cluster_name = f"local cluster, {args.workers} workers"
    labels = {"in-process": "in-process", "cluster": cluster_name}
    header = " | ".join(f"{labels[m]}: s | {labels[m]}: peak GB" for m in rows)
    lines = [
        f"Training on {args.n:,} simulated contacts in {files} weekly Parquet files (model2vec backend, cold "
        f"embedding cache); peak GB is the summed RSS of the whole process tree during the stage.",
        "",
        f"| stage | {header} |",
        "|---|" + "---:|---:|" * len(rows),
    ]
    for stage_name in ORDER:
        cells = []
        for r in rows.values():
            s = r["stages"].get(stage_name)
            cells += [f"{s['seconds']:.1f}", f"{s['peak_rss_gb']:.1f}"] if s else ["—", "—"]
        if any(c != "—" for c in cells):
            lines.append(f"| {stage_name} | {' | '.join(cells)} |")
    totals = []
    for r in rows.values():
        totals += [
            f"**{r['seconds']:.0f}**" + (f" ({r['failed']})" if "failed" in r else ""),
            f"**{r['peak_rss_gb']:.1f}**",
        ]
    lines.append(f"| whole run | {' | '.join(totals)} |")
    if "in-process" in rows and "cluster" in rows and "failed" not in rows["in-process"] | rows["cluster"]:
        local, cluster = rows["in-process"], rows["cluster"]
        lines += [
            "",
            f"Speed-up {local['seconds'] / cluster['seconds']:.2f}x; repeat AUC in-process "
            f"{local['roc_auc']['model']:.4f} vs cluster {cluster['roc_auc']['model']:.4f} "
            f"(ECE {local['ece']:.4f} / {cluster['ece']:.4f}; next-issue top-3 {local['top3']:.3f} / "
            f"{cluster['top3']:.3f}); TF-IDF baseline {local['roc_auc'].get('tf-idf + logistic regression', 0):.4f} "
            f"/ {cluster['roc_auc'].get('tf-idf + logistic regression', 0):.4f}.",
        ]
    results.write(args.out, "cluster-train", {"contacts": args.n, "files": files, "modes": rows}, lines)


if __name__ == "__main__":
    main()
