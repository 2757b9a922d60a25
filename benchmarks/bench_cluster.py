"""Batch scoring in-process vs on a local Dask cluster: wall time and peak memory of the whole process tree.

    .venv/bin/python benchmarks/bench_cluster.py --n 100000 [--workers 2]

Simulates a log of N contacts written as daily export files (Parquet), trains and registers a model on its
first weeks (fast backend), then runs `predictor score` on all files twice: in-process (the baseline,
measured in the same run) and with `--local-cluster WORKERS`. Memory is the peak of the summed RSS of the
command and every process it starts (scheduler and workers included), sampled every 0.2 s. Results go to
bench-results/cluster.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import results

from predictor.config import EmbeddingConfig, RegistryConfig, Settings
from predictor.contacts.schema import validate, write_table
from predictor.contacts.simulate import SimulatorConfig, simulate
from predictor.registry.tracking import log_and_register
from predictor.training.train import fit


def peak_rss(process: subprocess.Popen, samples: list[int]) -> None:
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            samples.append(sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)


def run(command: list[str], env: dict[str, str]) -> dict:
    samples: list[int] = []
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=peak_rss, args=(process, samples), daemon=True)
    watcher.start()
    out, err = process.communicate()
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(max(samples, default=0) / 2**20),
        "summary": out.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="contacts in the log")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    days = max(30, round(180 * args.n / 20_000))
    simulated = simulate(SimulatorConfig(n_contacts=args.n, seed=11, days=days)).contacts
    exports = work / "exports"
    exports.mkdir()
    week = simulated["opened_at"].dt.tz_convert(None).dt.to_period("W").astype(str)
    for stamp, part in simulated.groupby(week):
        write_table(part, exports / f"contacts-{stamp.split('/')[0]}.parquet")
    files = len(list(exports.iterdir()))

    settings = Settings(
        embedding=EmbeddingConfig(cache_dir=work / "train-cache"),
        registry=RegistryConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", artifact_root=work / "art"),
    )
    train_part = validate(simulated.head(min(args.n, 20_000))).contacts
    log_and_register(fit(train_part, settings, ablation=False), settings, train_part)

    env = {
        **os.environ,
        "PREDICTOR_REGISTRY__TRACKING_URI": settings.registry.tracking_uri,
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(settings.registry.artifact_root),
    }
    predictor = str(Path(sys.executable).parent / "predictor")
    rows = {}
    modes = {"in-process": [], f"local cluster, {args.workers} workers": ["--local-cluster", str(args.workers)]}
    for mode, extra in modes.items():
        # Each mode starts with an empty embedding cache: both embed every transcript.
        env["PREDICTOR_EMBEDDING__CACHE_DIR"] = str(work / f"cache-{len(rows)}")
        out = work / f"scored-{len(rows)}.parquet"
        rows[mode] = run([predictor, "score", str(exports), "--out", str(out), *extra], env)
        rows[mode]["rows_written"] = len(pd.read_parquet(out))
        print(mode, rows[mode], flush=True)
    baseline = rows["in-process"]
    lines = [
        f"{args.n:,} contacts in {files} weekly Parquet files; model trained on the first {len(train_part):,}.",
        "",
        "| mode | wall s | vs in-process | peak RSS MB (process tree) | rows written |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {mode} | {r['seconds']:.1f} | {baseline['seconds'] / r['seconds']:.2f}x | {r['peak_rss_mb']:,} | "
            f"{r['rows_written']:,} |"
            for mode, r in rows.items()
        ),
    ]
    results.write(args.out, "cluster", {"contacts": args.n, "files": files, "modes": rows}, lines)


if __name__ == "__main__":
    main()
