"""Embedding backends side by side: what each costs and what the repeat model loses or gains with it.

    .venv/bin/python benchmarks/bench_backends.py --n 20000

Trains the whole pipeline once per backend on the same simulated log and the same time split, each with an
empty embedding cache (so training time includes embedding the log and distilling or exporting the model),
and reports repeat AUC / ECE, next-issue top-3, training time and embedding throughput (1,000 of the log's
transcripts, model loaded, no cache). The baseline, measured in the same run, is the reference backend
(sentence-transformers, PyTorch fp32): AUC differences and speed-ups are against it. The rule for the
default: the fastest backend whose AUC is within 0.005 of the reference (or above it). Results go to
bench-results/backends.{json,md}.
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
from predictor.features.embed import Embedder
from predictor.training.train import fit

REFERENCE = "sentence-transformers"
BACKENDS = ("sentence-transformers", "onnx-int8", "model2vec")
AUC_TOLERANCE = 0.005
THROUGHPUT_TEXTS = 1000  # transcripts of the log as they come (short and long mixed)


def run(backend: str, contacts, n_texts: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        settings = Settings(embedding=EmbeddingConfig(backend=backend, cache_dir=Path(cache)))
        started = time.perf_counter()
        result = fit(contacts, settings, ablation=False)
        seconds = time.perf_counter() - started
        # Throughput with the model loaded and no cache: what embedding new transcripts costs.
        embedder = Embedder(settings.embedding.model_copy(update={"cache": False}))
        embedder.encode(["warm up"])
        texts = [t for t in contacts["transcript"].tolist() if t.strip()][:THROUGHPUT_TEXTS]
        started = time.perf_counter()
        embedder.encode(texts)
        per_second = len(texts) / (time.perf_counter() - started)
    row = {
        "backend": backend,
        "train_seconds": round(seconds, 1),
        "embedding_texts_per_second": round(per_second, 1),
        "roc_auc": round(float(result.metrics.loc["model", "roc_auc"]), 4),
        "ece": round(float(result.metrics.loc["model", "ece"]), 4),
        "next_issue_top3": round(result.next_issue_metrics["top3_accuracy"], 4),
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="contacts in the simulated log")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable; default all three")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    contacts = validate(simulate(SimulatorConfig(n_contacts=args.n, seed=args.seed)).contacts).contacts
    n_texts = int((contacts["transcript"].str.strip() != "").sum())
    chosen = args.backend or list(BACKENDS)
    backends = [REFERENCE, *[b for b in chosen if b != REFERENCE]]  # the baseline always runs
    rows = [run(backend, contacts, n_texts) for backend in backends]
    reference = rows[0]
    for row in rows:
        row["auc_vs_reference"] = round(row["roc_auc"] - reference["roc_auc"], 4)
        row["speedup_vs_reference"] = round(
            row["embedding_texts_per_second"] / reference["embedding_texts_per_second"], 1
        )
        row["eligible"] = row["auc_vs_reference"] >= -AUC_TOLERANCE
    default = max((r for r in rows if r["eligible"]), key=lambda r: r["embedding_texts_per_second"])["backend"]
    lines = [
        f"{args.n:,} contacts ({n_texts:,} transcripts), seed {args.seed}; cold embedding cache for each backend.",
        "",
        "| backend | embedding texts/s | vs reference | train s | repeat AUC | AUC vs reference | ECE | "
        "next-issue top-3 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['backend']} | {r['embedding_texts_per_second']:,.0f} | {r['speedup_vs_reference']}x | "
            f"{r['train_seconds']:.0f} | {r['roc_auc']:.4f} | {r['auc_vs_reference']:+.4f} | {r['ece']:.4f} | "
            f"{r['next_issue_top3']:.3f} |"
            for r in rows
        ),
        "",
        f"Fastest backend within {AUC_TOLERANCE} AUC of the reference: **{default}**.",
    ]
    results.write(args.out, "backends", {"rows": rows, "default": default}, lines)


if __name__ == "__main__":
    main()
