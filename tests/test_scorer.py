"""The scorer without a server: what one caller's work may do to another's, and the time budget."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from predictor.contacts.store import ContactStore
from predictor.features.build import TextViews
from predictor.reports.plan import follow_up_plan
from predictor.serving.api import ContactIn, OutOfTime, contact_json
from predictor.serving.locks import KeyLocks
from predictor.serving.scorer import Scorer

pytestmark = pytest.mark.slow  # needs the trained model


@pytest.fixture
def scorer(trained, settings, tmp_path: Path) -> Scorer:
    result, _ = trained
    service = settings.service.model_copy(update={"batch_chunk": 2, "store_url": f"sqlite:///{tmp_path / 's.db'}"})
    configured = settings.model_copy(update={"service": service})
    store = ContactStore(service.store_url)
    scorer = Scorer(result.model, "1", store, follow_up_plan(service), configured)
    scorer.warm_up()  # as the service's worker does before it takes requests
    return scorer


def as_items(contacts: list[ContactIn]) -> list[dict]:
    return [c.model_dump(mode="json", exclude_none=True) for c in contacts]


def bodies(trained, start: int, n: int, prefix: str) -> list[ContactIn]:
    _, contacts = trained
    rows = contacts.sort_values("closed_at").iloc[start : start + n]
    return [ContactIn.model_validate({**contact_json(r), "contact_id": f"{prefix}-{k}"}) for k, r in
            enumerate(rows.to_dict("records"))]  # fmt: skip


def test_a_slow_batch_does_not_hold_up_another_customers_score(scorer: Scorer, trained) -> None:
    """Scoring was serialised by one lock over the whole batch: a /score waited for all of it (134 s)."""
    batch = bodies(trained, 0, 8, "batch")
    single = next(c for c in bodies(trained, 100, 40, "single") if c.customer_id not in {b.customer_id for b in batch})
    slow_ids = {c.contact_id for c in batch}
    original = scorer._score_frame

    def slow_for_the_batch(frame: pd.DataFrame, *args: object) -> dict:
        if slow_ids & set(frame["contact_id"]):
            time.sleep(0.5)  # each chunk of the batch: 4 chunks of 2, 2 s in all
        return original(frame, *args)

    scorer._score_frame = slow_for_the_batch  # type: ignore[method-assign]
    worker = threading.Thread(target=scorer.score_batch, args=(as_items(batch),))
    worker.start()
    time.sleep(0.2)  # the batch is inside its first chunk
    started = time.perf_counter()
    scorer.score(single)
    waited = time.perf_counter() - started
    worker.join()
    assert waited < 0.4, f"/score waited {waited:.2f} s behind a batch of other customers"
    assert scorer.store.count() == 9


def test_a_customers_contacts_are_still_scored_one_after_the_other() -> None:
    """The second of two concurrent contacts of one customer waits (it must see the first in its history),
    and gives up at its deadline."""
    locks = KeyLocks()
    soon = time.monotonic() + 0.05
    with (
        locks.holding(["customer\0U1"], deadline=None, budget_s=1),
        pytest.raises(OutOfTime),
        locks.holding(["customer\0U1"], deadline=soon, budget_s=0.05),
    ):
        pass
    with locks.holding(["customer\0U1"], deadline=time.monotonic() + 0.05, budget_s=0.05):
        pass  # released
    assert not locks._locks  # and forgotten: one lock per key in use, not per key ever seen


def test_past_the_budget_the_rest_of_a_batch_is_reported_and_not_stored(scorer: Scorer, trained) -> None:
    batch = bodies(trained, 200, 8, "late")
    original = scorer._score_frame

    def slow(frame: pd.DataFrame, *args: object) -> dict:
        time.sleep(0.3)
        return original(frame, *args)

    scorer._score_frame = slow  # type: ignore[method-assign]
    out = scorer.score_batch(as_items(batch), deadline=time.monotonic() + 0.45)
    assert out.scored == 4 and out.rejected == 4  # two chunks of two in the budget
    late = [item for item in out.results if not item.ok]
    assert all("time budget" in item.errors[0].message for item in late)
    assert scorer.store.count() == 4
    with pytest.raises(OutOfTime):
        scorer.score(batch[-1], deadline=time.monotonic() - 1)
    # Sent again in time, the unscored ones are scored (nothing of them was kept).
    assert scorer.score_batch(as_items(batch[4:])).scored == 4


def test_a_retried_batch_is_replayed_from_the_store_without_embedding_it_again(
    scorer: Scorer, trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer a caller gets is the one stored, and a retry of a batch replays it without the costly part
    (a single contact is embedded before the store is asked: a replay of one wastes ~1 ms, not a batch's)."""
    batch = bodies(trained, 200, 4, "retry")
    embedded: list[int] = []
    original = scorer.model.text_views

    def counting(frame: pd.DataFrame) -> TextViews | None:
        embedded.append(len(frame))
        return original(frame)

    monkeypatch.setattr(scorer.model, "text_views", counting)  # the model is the session's: undone after
    first = scorer.score_batch(as_items(batch))
    stored = scorer.store.stored([c.contact_id for c in batch])
    for item in first.results:
        assert item.ok and not item.result.replayed
        assert stored[item.contact_id].response == item.result.model_dump(mode="json")
    again = scorer.score_batch(as_items(batch))
    assert embedded == [2, 2]  # the first call's two chunks; the retry embeds nothing
    for before, after in zip(first.results, again.results, strict=True):
        assert after.result.replayed
        assert after.result.model_dump(exclude={"replayed"}) == before.result.model_dump(exclude={"replayed"})


def test_warm_up_scores_a_made_up_batch_and_stores_nothing(trained, settings, tmp_path: Path) -> None:
    """The start scores made-up contacts (a first batch was ~20% slower than the next): none of them, and no
    agent window derived for them, may reach the store, whose agents have history of their own."""
    import sqlalchemy as sa

    from predictor.contacts.store import agent_windows_table

    result, contacts = trained
    service = settings.service.model_copy(update={"store_url": f"sqlite:///{tmp_path / 'w.db'}"})
    store = ContactStore(service.store_url)
    store.load_frame(contacts.sort_values("closed_at").iloc[:400])

    def windows() -> int:
        with store.engine.connect() as db:
            return db.execute(sa.select(sa.func.count()).select_from(agent_windows_table)).scalar_one()

    before = store.count(), windows()
    scored: list[int] = []
    scorer = Scorer(result.model, "1", store, follow_up_plan(service), settings.model_copy(update={"service": service}))
    original = scorer._score_frame
    scorer._score_frame = lambda frame, *args: scored.append(len(frame)) or original(frame, *args)  # type: ignore[method-assign]
    scorer.warm_up()
    assert scored and scored[0] >= 32  # a batch: its tokenizer calls take the threaded path (64 texts)
    assert (store.count(), windows()) == before
    assert store.stored([f"warm-up-{k}" for k in range(scored[0])]) == {}
