"""The contract both training backends share: row rules, folds and fingerprints that ignore row order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from predictor.compute.base import LABEL, Rows, Target, fold_of
from predictor.contacts.schema import fingerprint, validate
from predictor.model.fitted import keyed_folds
from predictor.model.split import CALIBRATION, TEST, TRAIN


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 400
    return pd.DataFrame(
        {
            "contact_id": [f"C{i:05d}" for i in range(n)],
            "closed_us": rng.integers(0, 10**9, n),
            "slice": rng.choice([0, TRAIN, CALIBRATION, TEST], n),
            LABEL + "is_repeat": rng.integers(0, 2, n).astype(float),
            LABEL + "window_complete": rng.random(n) < 0.9,
            LABEL + "next_issue": rng.choice(["a", "b", "c"], n),
        }
    )


def test_rows_pick_the_same_contacts_whatever_the_order() -> None:
    table = _table()
    shuffled = table.sample(frac=1, random_state=1).reset_index(drop=True)
    rules = [
        Rows(TRAIN),
        Rows(TRAIN, repeats_only=True),
        Rows(None, known_only=True),
        Rows(TRAIN, closed_before_us=5 * 10**8),
        Rows(TRAIN, folds=5, fold=2),
        Rows(TRAIN, folds=5, fold=2, held=True),
    ]
    for rule in rules:
        assert set(table["contact_id"][rule.mask(table)]) == set(shuffled["contact_id"][rule.mask(shuffled)])
    # A fold and the rest of it are disjoint and make up the slice.
    held = set(table["contact_id"][Rows(TRAIN, folds=5, fold=2, held=True).mask(table)])
    rest = set(table["contact_id"][Rows(TRAIN, folds=5, fold=2).mask(table)])
    assert not held & rest and held | rest == set(table["contact_id"][Rows(TRAIN).mask(table)])


def test_targets_map_rare_classes_to_other() -> None:
    table = _table()
    codes = Target("next_issue", classes=("a", "other"), other="other").values(table)
    assert set(codes) == {0, 1} and (codes[table[LABEL + "next_issue"] == "a"] == 0).all()
    assert Target("is_repeat", integer=True).values(table).dtype.kind == "i"


def test_keyed_folds_are_stratified_and_independent_of_row_order() -> None:
    keys = np.array([f"C{i}" for i in range(1000)])
    y = (np.arange(1000) % 10 == 0).astype(int)  # a rare class: 10%
    folds = keyed_folds(keys, y, 5)
    for _, held in folds:
        assert y[held].sum() == 20  # every fold its share of the rare class
    order = np.random.default_rng(3).permutation(1000)
    moved = keyed_folds(keys[order], y[order], 5)
    for (_, a), (_, b) in zip(folds, moved, strict=True):
        assert set(keys[a]) == set(keys[order][b])
    assert len(set(fold_of(keys, 5))) == 5


def test_fingerprint_ignores_row_order_and_dtypes(train_log) -> None:
    contacts = validate(train_log.contacts).contacts
    shuffled = contacts.sample(frac=1, random_state=2)
    as_categories = contacts.astype({"channel": "category"})
    assert fingerprint(contacts) == fingerprint(shuffled) == fingerprint(as_categories)
    assert fingerprint(contacts) != fingerprint(contacts.iloc[1:])


def test_the_plan_fingerprint_needs_only_the_ids(train_log) -> None:
    contacts = validate(train_log.contacts).contacts
    narrow = contacts[["contact_id"]].sample(frac=1, random_state=4)  # what a cluster collects for the plan
    assert fingerprint(contacts, columns=("contact_id",)) == fingerprint(narrow, columns=("contact_id",))
