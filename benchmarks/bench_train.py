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
from predictor.contacts.schema import validate
from predictor.contacts.simulate import SimulatorConfig, simulate
from predictor.training.train import TrainingResult, fit


def run(n: int, seed: int, backend: str) -> dict:
    simulated = simulate(SimulatorConfig(n_contacts=n, seed=seed))
    contacts = validate(simulated.contacts).contacts
    texts = int((contacts["transcript"].str.strip() != "").sum())
    with tempfile.TemporaryDirectory() as cache:
        settings = Settings(embedding=EmbeddingConfig(cache_dir=Path(cache), backend=backend))
        runs = {}
        for label in ("cold", "warm"):
            started = time.perf_counter()
            result = fit(contacts, settings, ablation=False, oracle=simulated.truth)
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
        # The issue's acceptance figures, from the same run (the test slice of this log).
        "acceptance": acceptance(result),
    }


def acceptance(result: TrainingResult) -> dict[str, float]:
    auc = result.metrics["roc_auc"]
    model = float(auc["model"])
    nxt = result.next_issue_metrics
    return {
        "model_auc": round(model, 4),
        "oracle_gap": round(float(auc["oracle (simulator truth)"]) - model, 4),
        "over_tfidf": round(model - float(auc["tf-idf + logistic regression"]), 4),
        "over_base_rate": round(model - float(auc["issue base rate"]), 4),
        "over_metadata_history": round(model - float(auc["metadata + history (no text)"]), 4),
        "ece": round(float(result.metrics.loc["model", "ece"]), 4),
        "top3": round(nxt["top3_accuracy"], 4),
        "oracle_top3_gap": round(nxt["oracle_top3_accuracy"] - nxt["top3_accuracy"], 4),
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
    lines += [
        "",
        "Acceptance (issue #4) on each log's test slice: target in brackets.",
        "",
        "| contacts | AUC | gap to oracle [<= 0.03] | over TF-IDF [>= 0.02] | over base rate [>= 0.10] | "
        "over metadata + history [> 0] | ECE [<= 0.03] | next-issue top-3 | gap to oracle's [<= 0.05] |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['contacts']:,} | {a['model_auc']:.4f} | {a['oracle_gap']:.4f} | {a['over_tfidf']:+.4f} | "
            f"{a['over_base_rate']:+.4f} | {a['over_metadata_history']:+.4f} | {a['ece']:.4f} | {a['top3']:.3f} | "
            f"{a['oracle_top3_gap']:.4f} |"
            for r in rows
            for a in [r["acceptance"]]
        ),
    ]
    results.write(args.out, f"train-{args.backend}", rows, lines)


if __name__ == "__main__":
    main()
