"""The lean copy a service loads answers as the full model does, part by part and whole."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from predictor.model import lean

ODD_TEXTS = [
    "",
    "x",
    "Customer: my bill is higher than usual! Agent: let me check... I'll refund it.",
    "Клиент: Здравствуйте, интернет закончился гораздо быстрее. Ёлка ЁЛКА ёлка",
    "Korisnik: račun je veći — Đorđe, 065 113 09 90, a1 b_2 __x__ don't can't",
    "[EMAIL] [PHONE] [CARD] tokens_with_underscores and 123 4567 numbers 12ab",
    "the the the the the bill bill",
    "UNSEEN words only zzzzqqq wwwwvvv",
]
CORPUS = [
    "my bill is higher than usual and I don't know why",
    "the bill shows a refund I never asked for",
    "интернет закончился гораздо быстрее чем я думал",
    "račun je veći nego obično, ne znam zašto",
    "I'll call back if the refund is not there, thanks",
    "numbers 123 and 4567 and tokens_with_underscores",
    "ёлка и ещё раз ёлка",
] * 3


@pytest.mark.parametrize(
    "settings",
    [
        {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 2},  # as the words head fits it
        {"ngram_range": (1, 1), "sublinear_tf": False},
        {"ngram_range": (2, 3), "norm": None},
        {"ngram_range": (1, 2), "use_idf": False, "max_features": 12},
    ],
)
def test_lean_tfidf_equals_scikit_learn(settings: dict) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(**settings).fit(CORPUS)
    assert lean.LeanTfidf.can_stand_in_for(vectorizer)
    expected = vectorizer.transform(ODD_TEXTS + CORPUS[:7]).toarray()
    got = lean.LeanTfidf(vectorizer).transform(ODD_TEXTS + CORPUS[:7])
    np.testing.assert_allclose(got.toarray(), expected, rtol=0, atol=1e-12)
    weights = np.random.default_rng(0).normal(size=(expected.shape[1], 3))
    np.testing.assert_allclose(got @ weights, expected @ weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("settings", [{"analyzer": "char_wb"}, {"stop_words": "english"}, {"binary": True}])
def test_a_vectorizer_it_cannot_stand_in_for_keeps_the_full_model(settings: dict) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    assert not lean.LeanTfidf.can_stand_in_for(TfidfVectorizer(**settings).fit(CORPUS))


def test_calibration_maps_equal_scikit_learn() -> None:
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    score = rng.normal(size=500)
    y = (rng.random(500) < 1 / (1 + np.exp(-score))).astype(int)
    probe = np.concatenate([rng.normal(size=200) * 3, [score.min(), score.max(), -50.0, 50.0]])
    sigmoid = LogisticRegression(C=1e6).fit(score[:, None], y)
    mine = lean.LeanSigmoid(float(sigmoid.coef_[0, 0]), float(sigmoid.intercept_[0]))
    np.testing.assert_allclose(mine.predict_proba(probe[:, None]), sigmoid.predict_proba(probe[:, None]), atol=1e-12)
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, y)
    mine_iso = lean.LeanIsotonic(isotonic.X_thresholds_, isotonic.y_thresholds_)
    np.testing.assert_allclose(mine_iso.predict(probe), isotonic.predict(probe), atol=1e-12)


def test_the_lean_copy_answers_as_the_full_model(trained) -> None:
    """Every number a scorer reads (text heads, probabilities, next issues, hours, reasons), on the trained
    model with all three text views."""
    import pickle

    result, contacts = trained
    model = result.model
    assert model.text_heads is not None and "words" in model.text_heads.views
    copy = lean.lean(model)
    assert copy is not None
    copy = pickle.loads(pickle.dumps(copy))  # as the service gets it
    rows = contacts.tail(300).reset_index(drop=True)
    features = model.features(rows, contacts)
    X, X_lean = model.model_input(features), copy.model_input(features)
    pd.testing.assert_frame_equal(X_lean, X, rtol=0, atol=1e-12)
    ids = rows["contact_id"].to_numpy()
    pd.testing.assert_frame_equal(copy.predict_from_input(X_lean, ids), model.predict_from_input(X, ids), atol=1e-12)
    assert copy.reasons(X_lean) == model.reasons(X)
    assert model.repeat.booster is model.repeat_booster and copy.repeat.booster is copy.repeat_booster
    assert not any("sklearn" in type(part).__module__ for part in _parts(copy))


def test_the_isotonic_calibration_has_a_lean_copy_too(trained) -> None:
    from predictor.model.fitted import Calibrated

    result, contacts = trained
    model = result.model
    isotonic = Calibrated(model.repeat_booster, "isotonic")
    rows = contacts.tail(200).reset_index(drop=True)
    X = model.model_input(model.features(rows, contacts))
    isotonic.fit(X, rows["closed_at"].dt.hour.to_numpy() % 2)  # any labels: the map is what is compared
    copy = lean.lean(_with(model, repeat=isotonic))
    assert copy is not None
    np.testing.assert_allclose(copy.repeat.predict_proba(X), isotonic.predict_proba(X), atol=1e-12)


def _with(model, **changes):
    import copy

    out = copy.copy(model)
    out.__dict__.update(changes)
    return out


def _parts(model) -> list:
    heads = model.text_heads
    return [
        model.repeat, model.repeat.booster, model.repeat.map_, model.repeat_booster, model.next_issue,
        getattr(model.next_issue, "model", None), model.hours_median, model.hours_p90,
        *([heads.vectorizer_] if heads is not None and hasattr(heads, "vectorizer_") else []),
    ]  # fmt: skip


@pytest.mark.parametrize("form", ["full", "lean"])
def test_the_scorers_matrix_is_the_model_input(trained, form: str) -> None:
    """``model_matrix`` (the scorer's path: no typed frame in between) gives ``as_matrix(model_input)`` and its
    columns exactly, also for values the model never saw, missing scores and contacts without a transcript."""
    from predictor.model.fitted import as_matrix

    result, contacts = trained
    model = result.model if form == "full" else lean.lean(result.model)
    rows = contacts.tail(120).reset_index(drop=True)
    rows.loc[:9, "queue"] = "a queue never seen"
    rows.loc[10:19, "csat"] = np.nan
    rows.loc[20:29, "transcript"] = ""
    rows.loc[30:39, "channel"] = "social"
    for k in (1, 3, 120):  # the scorer's one row, a few, many
        features = model.features(rows.head(k), contacts)
        expected = model.model_input(features)
        matrix, columns = model.model_matrix(features)
        assert columns == list(expected.columns)
        np.testing.assert_array_equal(matrix, as_matrix(expected))
        assert model.reasons_from(matrix, columns) == model.reasons(expected)
    assert np.isnan(matrix[:10, columns.index("queue")]).all()
