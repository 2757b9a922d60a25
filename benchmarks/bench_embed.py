"""Embedding throughput per backend, short and long transcripts, as a ratio to sentence-transformers fp32.

    .venv/bin/python benchmarks/bench_embed.py [--n 300]

Fresh caches every run (nothing is served from a cache); the reference backend is measured in the same
run. Also reports the cosine of each backend's vectors to the reference. Results: bench-results/embed.*
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import results

from predictor.config import EmbeddingConfig
from predictor.contacts.schema import validate
from predictor.contacts.simulate import SimulatorConfig, simulate
from predictor.features.embed import Embedder

BACKENDS = ("sentence-transformers", "onnx-int8", "model2vec")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="texts per length class")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    contacts = validate(simulate(SimulatorConfig(n_contacts=6 * args.n, seed=11)).contacts).contacts
    words = contacts["transcript"].str.split().str.len()
    texts = {
        "short (< 60 words)": contacts.loc[(words > 0) & (words < 60), "transcript"].head(args.n).tolist(),
        "long (> 150 words)": contacts.loc[words > 150, "transcript"].head(args.n).tolist(),
    }
    rows, reference = [], {}
    for backend in BACKENDS:
        with tempfile.TemporaryDirectory() as cache:
            embedder = Embedder(EmbeddingConfig(backend=backend, cache_dir=Path(cache)))
            embedder.encode(["warm up the model"])  # load (and for ONNX: export) outside the timing
            for kind, batch in texts.items():
                started = time.perf_counter()
                vectors = embedder.encode(batch)
                seconds = time.perf_counter() - started
                reference.setdefault(kind, vectors)
                same_space = vectors.shape == reference[kind].shape  # a distilled model has its own space
                cosine = float((vectors * reference[kind]).sum(axis=1).mean()) if same_space else float("nan")
                rows.append({"backend": backend, "texts": kind, "n": len(batch), "per_second": len(batch) / seconds,
                             "cosine_to_reference": cosine})  # fmt: skip
                print(f"{backend:22s} {kind:18s} {len(batch) / seconds:7.1f} texts/s  cosine {cosine:.4f}", flush=True)
    base = {r["texts"]: r["per_second"] for r in rows if r["backend"] == BACKENDS[0]}
    for row in rows:
        row["ratio_to_reference"] = round(row["per_second"] / base[row["texts"]], 2)
    lines = [
        "| backend | texts | texts/s | ratio to sentence-transformers | cosine to reference |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['backend']} | {r['texts']} | {r['per_second']:.1f} | {r['ratio_to_reference']:.2f}x | "
        f"{r['cosine_to_reference']:.4f} |"
        for r in rows
    ]
    results.write(args.out, "embed", rows, lines)


if __name__ == "__main__":
    main()
