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

from predictor import evaluate
from predictor.config import Settings
from predictor.features import as_model_input, build
from predictor.labels import derive, epoch_us
from predictor.model import categorical_levels
from predictor.schema import load_contacts
from predictor.simulate import truth_path
from predictor.train import _fit_repeat, _tfidf_baseline, load_hyperparams, time_split

LATENTS = ["clear", "resolved", "confused", "mentioned_adjacent"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    args = parser.parse_args()
    settings, hp = Settings(), load_hyperparams()
    contacts = load_contacts(args.log).contacts.reset_index(drop=True)
    truth = evaluate.load_truth(truth_path(args.log)).set_index("contact_id").loc[contacts["contact_id"]]
    labelled = derive(contacts, settings.labels)
    split = time_split(labelled, settings)
    tr, cal, te = split.train, split.calibration, split.test
    y = labelled["is_repeat"].astype(float).to_numpy()
    features = build(contacts).frame
    X = as_model_input(features, categorical_levels(features.iloc[tr]))
    latents = pd.DataFrame(truth[LATENTS].astype(float).to_numpy(), columns=LATENTS, index=X.index)
    seen = latents.copy()
    seen[features["has_transcript"].to_numpy() == 0] = float("nan")  # no transcript: nothing to read
    rows = {}
    for name, design in (
        ("metadata + history", X),
        ("+ true latents where a transcript exists", pd.concat([X, seen], axis=1)),
        ("+ true latents everywhere", pd.concat([X, latents], axis=1)),
    ):
        times = epoch_us(contacts["closed_at"])[tr]
        _, model = _fit_repeat(design.iloc[tr], y[tr], design.iloc[cal], y[cal], hp, times)
        rows[name] = roc_auc_score(y[te], model.predict_proba(design.iloc[te])[:, 1])
    rows["tf-idf + logistic regression"] = roc_auc_score(y[te], _tfidf_baseline(contacts, tr, te, y, hp))
    rows["oracle"] = roc_auc_score(y[te], evaluate.oracle_repeat(truth.reset_index(), contacts["contact_id"].iloc[te]))
    ceiling = rows["+ true latents where a transcript exists"] - rows["tf-idf + logistic regression"]
    for name, auc in rows.items():
        print(f"{name:45s} {auc:.4f}")
    print(f"observable ceiling over TF-IDF: {ceiling:+.4f}")


if __name__ == "__main__":
    main()
