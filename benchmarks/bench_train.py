"""Training benchmark: cold vs warm embedding cache, and embedding throughput.

    .venv/bin/python benchmarks/bench_train.py --n 20000 [--n 100000] [--backend sentence-transformers]

For each size: simulate a log, train with an empty embedding cache (cold), then train again on the same
log (warm: every embedding comes from the cache). The warm run is the baseline measured in the same run;
the report gives cold/warm as a ratio. Results go to bench-results/train-<backend>.{json,md}.

The cache pays where embedding dominates (the PyTorch reference); with the default static backend
embedding is a small share of training, so the ratio is small by design.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import results

from predictor.config import EmbeddingConfig, Settings
from predictor.schema import validate
from predictor.simulate import SimulatorConfig, simulate
from predictor.train import fit


def run(n: int, seed: int, backend: str) -> dict:
    contacts = validate(simulate(SimulatorConfig(n_contacts=n, seed=seed)).contacts).contacts
    texts = int((contacts["transcript"].str.strip() != "").sum())
    with tempfile.TemporaryDirectory() as cache:
        settings = Settings(embedding=EmbeddingConfig(cache_dir=Path(cache), backend=backend))
        runs = {}
        for label in ("cold", "warm"):
            started = time.perf_counter()
            result = fit(contacts, settings, ablation=False)
            runs[label] = {"seconds": round(time.perf_counter() - started, 2), "stages": result.timings}
            print(f"n={n} {label}: {runs[label]['seconds']:.1f} s  {result.timings}", flush=True)
    cold, warm = runs["cold"], runs["warm"]
    embed_seconds = cold["stages"]["features"] - warm["stages"]["features"]
    return {
        "contacts": n,
        "transcripts": texts,
        "cold_seconds": cold["seconds"],
        "warm_seconds": warm["seconds"],
        "cold_over_warm": round(cold["seconds"] / warm["seconds"], 2),
        # Two views of each transcript are embedded (whole conversation and closing turns).
        "embedding_texts_per_second": round(texts / max(embed_seconds, 1e-9), 1),
        "stages_cold": cold["stages"],
        "stages_warm": warm["stages"],
        "auc": round(float(result.metrics.loc["model", "roc_auc"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="log size (repeatable); default 20000")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backend", default="model2vec", choices=["model2vec", "sentence-transformers", "onnx-int8"])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    rows = [run(n, args.seed, args.backend) for n in (args.n or [20_000])]
    lines = [
        f"Embedding backend: {args.backend}.",
        "",
        "| contacts | transcripts | cold s | warm s | cold / warm | embedding texts/s | model AUC |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['contacts']:,} | {r['transcripts']:,} | {r['cold_seconds']:.1f} | {r['warm_seconds']:.1f} | "
            f"{r['cold_over_warm']:.1f}x | {r['embedding_texts_per_second']:.1f} | {r['auc']:.3f} |"
            for r in rows
        ),
    ]
    results.write(args.out, f"train-{args.backend}", rows, lines)


if __name__ == "__main__":
    main()
