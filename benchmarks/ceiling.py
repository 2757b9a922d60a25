"""How far can any text reader get? The repeat model's observable ceiling on a simulated log.

    .venv/bin/python benchmarks/ceiling.py LOG   # LOG.truth.parquet beside it (predictor simulate writes both)

Fits the same booster on the same split three times: metadata + history only; plus the simulator's *true*
conversation latents (clear, resolved, confused, next issue mentioned) where a transcript exists — what a
perfect text reader could see; and plus the latents everywhere (phone contacts without a transcript too).
Beside them: TF-IDF + LR and the oracle. The gap between the second row and TF-IDF bounds the "AUC above
TF-IDF" that any model reading these transcripts can reach on this log.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from predictor.compute.base import LABEL, Rows, Slicing
from predictor.compute.local import LocalBackend
from predictor.config import Settings
from predictor.contacts.labels import data_end
from predictor.contacts.redact import redact
from predictor.contacts.schema import load_contacts
from predictor.contacts.simulate import truth_path
from predictor.features.build import CATEGORICAL
from predictor.model import evaluate
from predictor.model.fitted import TfidfBaseline, levels_from_counts
from predictor.model.split import TEST, TRAIN, decide, split_boundaries
from predictor.training.train import fit_repeat, load_hyperparams

LATENTS = ["clear", "resolved", "confused", "mentioned_adjacent"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    args = parser.parse_args()
    settings, hp = Settings(), load_hyperparams()
    contacts = load_contacts(args.log).contacts.reset_index(drop=True)
    truth = evaluate.load_truth(truth_path(args.log)).set_index("contact_id").loc[contacts["contact_id"]]
    # The training pipeline's own split and design (no text), through the in-process backend.
    backend = LocalBackend(contacts, settings)
    end = data_end(contacts, settings.labels).at
    boundaries = split_boundaries(contacts["closed_at"], settings, end)
    split = decide(backend.slice_summary(boundaries, end), boundaries, settings)
    prior = split.repeats["train"] / split.counts["train"]
    columns = backend.build(Slicing(boundaries, end, split.calibration_mode), prior, use_text=False)
    found = backend.level_counts(Rows(TRAIN), [c for c in CATEGORICAL if c in columns])
    backend.design({c: levels_from_counts(c, counts) for c, counts in found.items()})
    design = backend.frame
    latents = pd.DataFrame(truth[LATENTS].astype(float).to_numpy(), columns=LATENTS, index=design.index)
    seen = latents.copy()
    seen[design["has_transcript"].to_numpy() == 0] = float("nan")  # no transcript: nothing to read
    y = design[LABEL + "is_repeat"].to_numpy()
    tr, te = (design["slice"].to_numpy() == code for code in (TRAIN, TEST))
    rows = {}
    for name, extra in (
        ("metadata + history", None),
        ("+ true latents where a transcript exists", seen.add_prefix("true_")),
        ("+ true latents everywhere", latents.add_prefix("true_")),
    ):
        backend.frame = design if extra is None else pd.concat([design, extra], axis=1)
        used = [*columns, *([] if extra is None else extra.columns)]
        _, model = fit_repeat(backend, used, split, hp, settings, [])
        rows[name] = roc_auc_score(y[te], model.predict_proba(backend.frame.loc[te, used])[:, 1])
    texts = contacts["transcript"].map(redact)
    tfidf = TfidfBaseline(hp).fit(texts[tr].tolist(), y[tr].astype(int))
    rows["tf-idf + logistic regression"] = roc_auc_score(y[te], tfidf.predict(texts[te].tolist()))
    rows["oracle"] = roc_auc_score(y[te], evaluate.oracle_repeat(truth.reset_index(), contacts["contact_id"][te]))
    ceiling = rows["+ true latents where a transcript exists"] - rows["tf-idf + logistic regression"]
    for name, auc in rows.items():
        print(f"{name:45s} {auc:.4f}")
    print(f"observable ceiling over TF-IDF: {ceiling:+.4f}")


if __name__ == "__main__":
    main()
