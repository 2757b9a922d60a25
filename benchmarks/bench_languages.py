"""Contact centres in other languages: does a multilingual backend read them as well as English is read?

    .venv/bin/python benchmarks/bench_languages.py --n 20000

One simulated log per language, same seed (the same contacts, outcomes and labels; only the words differ),
each trained through the whole pipeline with an empty embedding cache. The baseline, measured in the same
run, is the English log with the default backend (model2vec, distilled from the English MiniLM). Reported:

1. repeat AUC of each language's log with the multilingual backend, against the English baseline;
2. the Russian log with the TF-IDF words head off (it reads any language and hides what the embedding adds):
   the embedding views alone, English-only backend vs multilingual;
3. across languages: a model trained on the English log (multilingual backend, words head off: English words
   say nothing about a Russian transcript) scores the Russian and Serbian logs, judged on the same
   test-slice contacts as its English AUC;
4. throughput of each backend on the Russian log's transcripts (model loaded, no cache).

Results go to bench-results/languages.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import results
from sklearn.metrics import roc_auc_score

from predictor.config import EmbeddingConfig, Settings
from predictor.contacts.schema import validate
from predictor.contacts.simulate import SimulatorConfig, simulate
from predictor.features.embed import Embedder
from predictor.training.train import fit, load_hyperparams

DEFAULT = "model2vec"
LANGUAGES = ("ru", "be", "sr")
THROUGHPUT_TEXTS = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="contacts in each simulated log")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backend", default="e5-static", choices=("e5-static", "e5"), help="the multilingual one")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--across-only", action="store_true",
        help="only part 3 (train on English, score the others): for the slow e5 backend on a smaller --n",
    )  # fmt: skip
    args = parser.parse_args()
    logs = {}
    for language in ("en", *LANGUAGES):
        config = SimulatorConfig(n_contacts=args.n, seed=args.seed, language=language)
        logs[language] = validate(simulate(config).contacts).contacts
    no_words = copy.deepcopy(load_hyperparams())
    no_words["text_heads"].pop("words", None)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as cache:

        def settings(backend: str) -> Settings:
            # The backend as named: not the one the log's languages would choose (``multilingual_backend``).
            config = EmbeddingConfig(backend=backend, multilingual_backend=None, cache_dir=Path(cache) / backend)
            return Settings(embedding=config)

        def train(language: str, backend: str, words: bool = True) -> tuple[dict, object]:
            started = time.perf_counter()
            result = fit(logs[language], settings(backend), ablation=False, hyperparams=None if words else no_words)
            row = {
                "log": language,
                "backend": backend,
                "words_head": words,
                "roc_auc": round(float(result.metrics.loc["model", "roc_auc"]), 4),
                "ece": round(float(result.metrics.loc["model", "ece"]), 4),
                "next_issue_top3": round(result.next_issue_metrics["top3_accuracy"], 4),
                "train_seconds": round(time.perf_counter() - started, 1),
            }
            print(row, flush=True)
            rows.append(row)
            return row, result

        # Across languages the words head is off: its English words mean nothing in a Russian transcript, and
        # its score there would pull the model off; what carries over, if anything, is the embedding.
        english, result = train("en", args.backend, words=False)
        if not args.across_only:
            baseline, _ = train("en", DEFAULT)
            for language in LANGUAGES:
                train(language, args.backend)
            train("ru", DEFAULT)  # what a Russian centre gets today: the English backend (and the words head)
            embeddings_only = {b: train("ru", b, words=False)[0] for b in (DEFAULT, args.backend)}
        test = result.test_predictions
        y = test["is_repeat"].to_numpy().astype(int)
        across = {"en": english["roc_auc"]}
        for language in ("ru", "sr"):
            scored = result.model.predict(logs[language], logs[language]).set_index("contact_id")
            across[language] = round(float(roc_auc_score(y, scored.loc[test["contact_id"], "repeat_probability"])), 4)
        print({"across_languages": across}, flush=True)
        if args.across_only:
            lines = [f"Trained on the English log ({args.n:,} contacts, seed {args.seed}) with {args.backend} (words "
                     "head off), scoring "
                     "the same contacts in other languages (repeat AUC): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in across.items())]  # fmt: skip
            payload = {"rows": rows, "across_languages": across}
            results.write(args.out, f"languages-across-{args.backend}", payload, lines)
            return
        speed = {}
        texts = [t for t in logs["ru"]["transcript"].tolist() if t.strip()][:THROUGHPUT_TEXTS]
        for backend in (DEFAULT, args.backend):
            embedder = Embedder(settings(backend).embedding.model_copy(update={"cache": False}))
            embedder.encode(["прогрев"])
            started = time.perf_counter()
            embedder.encode(texts)
            speed[backend] = round(len(texts) / (time.perf_counter() - started), 1)
    for row in rows:
        row["auc_vs_english_default"] = round(row["roc_auc"] - baseline["roc_auc"], 4)
    gap = round(embeddings_only[args.backend]["roc_auc"] - embeddings_only[DEFAULT]["roc_auc"], 4)
    lines = [
        f"# Languages ({args.n:,} contacts a log, seed {args.seed}; multilingual backend {args.backend})",
        "",
        "| log | backend | words head | repeat AUC | vs English + default | ECE | next-issue top-3 | train s |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['log']} | {r['backend']} | {'on' if r['words_head'] else 'off'} | {r['roc_auc']:.4f} | "
            f"{r['auc_vs_english_default']:+.4f} | {r['ece']:.4f} | {r['next_issue_top3']:.4f} | {r['train_seconds']} |"
            for r in rows
        ],
        "",
        f"Russian log, embedding views alone: {args.backend} {gap:+.4f} AUC against {DEFAULT}.",
        "",
        "Trained on the English log (words head off), scoring the same contacts in other languages (repeat AUC): "
        + ", ".join(f"{k} {v:.4f}" for k, v in across.items()),
        "",
        "Embedding throughput on the Russian log's transcripts (texts/s, loaded, no cache): "
        + ", ".join(f"{k} {v:,.1f}" for k, v in speed.items()),
    ]
    results.write(
        args.out,
        "languages",
        {"rows": rows, "embeddings_only_gap": gap, "across_languages": across, "texts_per_second": speed,
         "mean_ru_length": float(np.mean([len(t) for t in texts]))},
        lines,
    )  # fmt: skip


if __name__ == "__main__":
    main()
