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
   test-slice contacts as its English AUC, and why it does not carry over: how near each transcript lands to
   its English original, the text heads per language, and the ceiling of any English-trained reading of the
   vectors (linear probes fitted on the simulator's own outcome of each conversation, which no centre has);
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
import pandas as pd
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
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep embeddings here (a folder per backend) to rerun without embedding again; "
                        "default: a fresh one, deleted after")  # fmt: skip
    args = parser.parse_args()
    logs = {}
    for language in ("en", *LANGUAGES):
        config = SimulatorConfig(n_contacts=args.n, seed=args.seed, language=language)
        simulated = simulate(config)
        logs[language] = validate(simulated.contacts).contacts
        if language == "en":  # the same contacts and outcomes in every language: one truth serves all
            truth = simulated.truth.set_index("contact_id")
    no_words = copy.deepcopy(load_hyperparams())
    no_words["text_heads"].pop("words", None)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as fresh:
        cache = args.cache_dir or fresh

        def settings(backend: str) -> Settings:
            # The backend as named: not the one the log's languages would choose (``multilingual_backend``).
            config = EmbeddingConfig(backend=backend, multilingual_backend=None, cache_dir=Path(cache) / backend)
            return Settings(embedding=config)

        def train(language: str, backend: str, words: bool = True, text: bool = True) -> tuple[dict, object]:
            started = time.perf_counter()
            hyperparams = None if words else no_words
            result = fit(logs[language], settings(backend), ablation=False, hyperparams=hyperparams, use_text=text)
            row = {
                "log": language,
                "backend": backend,
                "words_head": words,
                "text": text,
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
        no_text = train("en", args.backend, words=False, text=False)[0]["roc_auc"]
        why = across_analysis(result, logs, no_text, truth)
        print(why, flush=True)
        if args.across_only:
            lines = [f"Trained on the English log ({args.n:,} contacts, seed {args.seed}) with {args.backend} (words "
                     "head off), scoring "
                     "the same contacts in other languages (repeat AUC): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in across.items()), "", *analysis_lines(why)]  # fmt: skip
            payload = {"rows": rows, "across_languages": across, "across_analysis": why}
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
        *analysis_lines(why),
        "",
        "Embedding throughput on the Russian log's transcripts (texts/s, loaded, no cache): "
        + ", ".join(f"{k} {v:,.1f}" for k, v in speed.items()),
    ]
    results.write(
        args.out,
        "languages",
        {"rows": rows, "embeddings_only_gap": gap, "across_languages": across, "across_analysis": why,
         "texts_per_second": speed,
         "mean_ru_length": float(np.mean([len(t) for t in texts]))},
        lines,
    )  # fmt: skip


def across_analysis(result: object, logs: dict, no_text_auc: float, truth: pd.DataFrame) -> dict:
    """Why the English model carries over as far as it does, on these parallel logs (the same contacts in each
    language): how near each contact's transcript lands to its English original, and what the model scores
    when the other language's vectors are (a) centred on the English mean (each language's mean taken from its
    own log) or (b) mapped onto English by a ridge map fitted on the parallel transcripts of the contacts
    outside the test slice: information no centre has, so an upper bound of what alignment could give."""
    from sklearn.linear_model import Ridge

    from predictor.features.build import TextViews, text_views

    model = result.model
    embedder = model.embedder()
    test = result.test_predictions
    y = test["is_repeat"].to_numpy().astype(int)
    views = {lang: text_views(logs[lang]["transcript"].tolist(), embedder) for lang in ("en", "ru", "sr")}
    has = logs["en"]["transcript"].str.strip().str.len().to_numpy() > 0
    in_test = logs["en"]["contact_id"].isin(test["contact_id"]).to_numpy()
    fit_on = has & ~in_test

    def inputs(language: str, text: TextViews) -> pd.DataFrame:
        frame = logs[language]
        return model.model_input(model.features(frame, frame, text=text))

    def auc(language: str, text: TextViews | None = None, X: pd.DataFrame | None = None) -> float:
        X = inputs(language, text) if X is None else X
        scored = model.predict_from_input(X, logs[language]["contact_id"].to_numpy()).set_index("contact_id")
        return round(float(roc_auc_score(y, scored.loc[test["contact_id"], "repeat_probability"])), 4)

    def unit(m: np.ndarray) -> np.ndarray:
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-9)

    out: dict = {"no_text_en": no_text_auc}
    # Each text head's own AUC on the test slice, per language: a head that ranks the Russian contacts worse
    # than the English ones has lost information no per-language recalibration can bring back; quantile
    # matching (each head's scores in the other language moved onto the English scores' distribution, the
    # strongest fix that needs no parallel text, and one that assumes the same outcome mix) shows it.
    heads = list(model.text_heads.columns) if model.text_heads is not None else []
    model_inputs = {language: inputs(language, views[language]) for language in ("en", "ru", "sr")}
    english_input = model_inputs["en"]
    y_rows = test.set_index("contact_id").loc[logs["en"]["contact_id"][in_test], "is_repeat"].to_numpy().astype(int)
    for language, X in model_inputs.items():
        for head in heads:
            values = X[head].to_numpy()[in_test]
            known = ~np.isnan(values)
            out[f"{language}_{head}_auc"] = round(float(roc_auc_score(y_rows[known], values[known])), 4)
        if language != "en":
            matched = X.copy()
            for head in heads:
                english, other = english_input[head].to_numpy()[has], X[head].to_numpy()[has]
                ranks = pd.Series(other).rank(pct=True).fillna(0.5).to_numpy()
                matched.loc[has, head] = np.nanquantile(english, ranks)
            out[f"{language}_quantile_matched_auc"] = auc(language, X=matched)
    out["heads"] = heads
    for language in ("ru", "sr"):
        centred, mapped = {}, {}
        for view, vectors in views[language].vectors.items():
            english = views["en"].vectors[view]
            shift = english[has].mean(0) - vectors[has].mean(0)
            centred[view] = np.where(has[:, None], vectors + shift, vectors).astype(np.float32)
            ridge = Ridge(alpha=1.0).fit(vectors[fit_on], english[fit_on])
            mapped[view] = np.where(has[:, None], ridge.predict(vectors), vectors).astype(np.float32)
            a, b = unit(english[has] - english[has].mean(0)), unit(vectors[has] - vectors[has].mean(0))
            k = min(1000, len(a))
            out[f"{language}_{view}_centred_cosine"] = round(float((a * b).sum(1).mean()), 3)
            hits = (b[:k] @ a[:k].T).argmax(1) == np.arange(k)
            out[f"{language}_{view}_top1"] = round(float(hits.mean()), 4)
            out["top1_among"] = k
        redacted = views[language].redacted
        out[f"{language}_centred_auc"] = auc(language, TextViews(centred, redacted))
        out[f"{language}_parallel_map_auc"] = auc(language, TextViews(mapped, redacted))
    metadata = {language: X.drop(columns=heads) for language, X in model_inputs.items()}
    out.update(reading_ceiling(result, logs, truth, views, metadata, has, in_test))
    return out


# What the simulator writes each conversation from, beside its issue: how it ended. The text says nothing else
# about a repeat that the metadata does not (the phrasing is drawn at random within an outcome).
OUTCOMES = ("clear", "resolved", "confused", "mentioned_adjacent")
PROBE_C = (0.001, 0.01, 0.1, 1.0, 10.0)
CEILING_BOOSTER = {"objective": "binary", "learning_rate": 0.03, "num_leaves": 15, "min_data_in_leaf": 50,
                   "feature_fraction": 0.8, "verbose": -1, "seed": 1}  # fmt: skip


def reading_ceiling(
    result: object, logs: dict, truth: pd.DataFrame, views: dict, metadata: dict, has: np.ndarray, in_test: np.ndarray
) -> dict:
    """The best any English-trained reading of the vectors can carry to another language, by privileged
    supervision: linear probes fitted on the English vectors to the simulator's own outcome of each conversation
    (``OUTCOMES``; no centre has them, and the product's heads learn from the repeat label alone, a noisier
    target of the same outcomes), then a repeat model (LightGBM) over the metadata and the probes' scores,
    fitted on English and scoring the same contacts in Russian and Serbian. Beside it: the true outcomes in
    place of the probes (a perfect reading: the same in every language, the ceiling of what text can add here)
    and the probes fitted in each language (is the information in that language's vectors at all).
    ``has``, ``in_test``: the English log's rows with a transcript, and in the model's test slice."""
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from predictor.contacts.labels import derive

    english = logs["en"]
    labelled = derive(english, result.model.label_config)
    known = (labelled["window_complete"].astype(bool) & ~labelled["censored"].astype(bool)).to_numpy()
    y = labelled["is_repeat"].astype("Float64").fillna(0).to_numpy().astype(int)
    fit_rows = known & ~in_test  # the slices before the test slice: time-based, as the product splits
    test_rows = known & in_test
    outcomes = truth.loc[english["contact_id"], list(OUTCOMES)].astype(int).reset_index(drop=True)
    vectors = {lang: np.hstack([v.vectors[k] for k in sorted(v.vectors)]) for lang, v in views.items()}
    out: dict = {"outcomes": list(OUTCOMES)}
    probes = {lang: pd.DataFrame(index=english.index) for lang in views}
    for outcome in OUTCOMES:
        target = outcomes[outcome].to_numpy()
        rows, scored = fit_rows & has, test_rows & has
        for c in PROBE_C:  # the transfer at every strength (a more general probe is not a better one across)
            probe = LogisticRegression(C=c, max_iter=3000).fit(vectors["en"][rows], target[rows])
            for lang in views:
                score = roc_auc_score(target[scored], probe.decision_function(vectors[lang][scored]))
                out[f"probe_{outcome}_{lang}_C{c:g}"] = round(float(score), 4)
            if c == 1.0:
                # The English rows' scores out of fold, as the repeat model will meet scores of unseen rows.
                own = cross_val_predict(probe, vectors["en"][rows], target[rows], cv=5, method="decision_function")
                for lang in views:
                    values = np.full(len(english), np.nan)
                    values[has] = probe.decision_function(vectors[lang][has])
                    if lang == "en":
                        values[rows] = own
                    probes[lang][outcome] = values
        for lang in ("ru", "sr"):
            probe = LogisticRegression(C=1.0, max_iter=3000).fit(vectors[lang][rows], target[rows])
            score = roc_auc_score(target[scored], probe.decision_function(vectors[lang][scored]))
            out[f"probe_{outcome}_{lang}_own"] = round(float(score), 4)

    def repeat_auc(name: str, extra: dict) -> None:
        frames = {lang: pd.concat([metadata[lang].reset_index(drop=True), extra[lang].reset_index(drop=True)], axis=1)
                  for lang in views}  # fmt: skip
        booster = lgb.train(CEILING_BOOSTER, lgb.Dataset(frames["en"][fit_rows], y[fit_rows]), num_boost_round=400)
        for lang in views:
            out[f"ceiling_{name}_{lang}"] = round(
                float(roc_auc_score(y[test_rows], booster.predict(frames[lang][test_rows]))), 4
            )

    matched = {"en": probes["en"]}
    for lang in ("ru", "sr"):
        matched[lang] = probes[lang].copy()
        for outcome in OUTCOMES:
            ranks = pd.Series(probes[lang][outcome].to_numpy()[has]).rank(pct=True).to_numpy()
            matched[lang].loc[has, outcome] = np.quantile(probes["en"][outcome].to_numpy()[has], ranks)
    repeat_auc("metadata", {lang: pd.DataFrame(index=english.index) for lang in views})
    repeat_auc("true_outcomes", dict.fromkeys(views, outcomes.astype(float)))
    repeat_auc("probes", probes)
    repeat_auc("probes_matched", matched)
    out["bayes_test_auc"] = round(
        float(roc_auc_score(y[test_rows], truth.loc[english["contact_id"][test_rows], "true_repeat_probability"])), 4
    )
    return out


def analysis_lines(why: dict) -> list[str]:
    return [
        f"Without text features the English model reaches {why['no_text_en']:.4f}.",
        "Centred cosine of a contact's transcript to its English original (whole view): "
        f"ru {why['ru_whole_centred_cosine']}, sr {why['sr_whole_centred_cosine']}; found among "
        f"{why['top1_among']:,}: ru {why['ru_whole_top1']:.1%}, sr {why['sr_whole_top1']:.1%}.",
        f"Each language centred on its own log's mean: ru {why['ru_centred_auc']:.4f}, sr {why['sr_centred_auc']:.4f}; "
        "mapped onto English by a map fitted on parallel transcripts (upper bound): "
        f"ru {why['ru_parallel_map_auc']:.4f}, sr {why['sr_parallel_map_auc']:.4f}.",
        "Each text head's AUC on the test slice (en / ru / sr): "
        + "; ".join(
            f"{h} {why[f'en_{h}_auc']:.3f} / {why[f'ru_{h}_auc']:.3f} / {why[f'sr_{h}_auc']:.3f}" for h in why["heads"]
        )
        + f". Heads' scores quantile-matched onto English: ru {why['ru_quantile_matched_auc']:.4f}, "
        f"sr {why['sr_quantile_matched_auc']:.4f}.",
        *ceiling_lines(why),
    ]


def ceiling_lines(why: dict) -> list[str]:
    def spread(outcome: str, lang: str) -> str:
        values = [why[f"probe_{outcome}_{lang}_C{c:g}"] for c in PROBE_C]
        return f"{min(values):.3f}-{max(values):.3f}"

    triple = "en {:.4f}, ru {:.4f}, sr {:.4f}"
    return [
        "",
        "The ceiling of an English-trained reading (privileged: probes fitted on the simulator's own outcome of each "
        "conversation, which no centre has; the product's heads learn the same outcomes from the repeat label alone):",
        "",
        "| outcome | read in English | in Russian | in Serbian | fitted in Russian | fitted in Serbian |",
        "|---|---|---|---|---|---|",
        *[
            f"| {o} | {spread(o, 'en')} | {spread(o, 'ru')} | {spread(o, 'sr')} | {why[f'probe_{o}_ru_own']:.3f} | "
            f"{why[f'probe_{o}_sr_own']:.3f} |"
            for o in why["outcomes"]
        ],
        "",
        f"(AUC of each probe on its outcome, test slice; a range over C {', '.join(f'{c:g}' for c in PROBE_C)}.) "
        "A repeat model (LightGBM) fitted on English over the metadata and:",
        "- nothing else: " + triple.format(*(why[f"ceiling_metadata_{k}"] for k in ("en", "ru", "sr"))),
        "- the true outcomes (a perfect reading, the same in every language): "
        + triple.format(*(why[f"ceiling_true_outcomes_{k}"] for k in ("en", "ru", "sr"))),
        "- the English-trained probes' scores: "
        + triple.format(*(why[f"ceiling_probes_{k}"] for k in ("en", "ru", "sr"))),
        "- those scores quantile-matched onto English: "
        + triple.format(*(why[f"ceiling_probes_matched_{k}"] for k in ("en", "ru", "sr"))),
        f"(The true repeat probability itself ranks the test slice at {why['bayes_test_auc']:.4f}.)",
    ]


if __name__ == "__main__":
    main()
