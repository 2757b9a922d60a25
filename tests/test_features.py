"""The feature function: point-in-time history, no leakage, and the same output for any caller."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import T0, contact, frame

from predictor.contacts.contract import HISTORY_FIELDS
from predictor.contacts.schema import validate
from predictor.features.build import CLOSING_WORDS_WITHOUT_TURNS, build, closing_turns


@pytest.fixture(scope="module")
def contacts(small_log) -> pd.DataFrame:
    return validate(small_log.contacts).contacts


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


def test_no_future_information_enters(contacts: pd.DataFrame) -> None:
    full = build(contacts).frame
    rng = np.random.default_rng(0)
    for position in rng.choice(len(contacts), 25, replace=False):
        closed = contacts["closed_at"].iloc[position]
        past_only = contacts[contacts["opened_at"] <= closed]  # every contact after its close deleted
        alone = build(contacts.iloc[[position]], past_only).frame
        assert_same(full.iloc[[position]], alone)


def test_scoring_one_contact_matches_scoring_the_whole_log(contacts: pd.DataFrame) -> None:
    full = build(contacts).frame
    picks = [10, 500, 1200]
    subset = build(contacts.iloc[picks], contacts).frame
    assert_same(full.iloc[picks], subset)


def test_history_is_read_only_through_its_history_fields(contacts: pd.DataFrame) -> None:
    """The store fetches only ``HISTORY_FIELDS`` of history rows (from a covering index): every other field
    of history must leave the features as they are."""
    picks = [10, 500, 1200]
    scrambled = contacts.copy()
    for column in scrambled.columns.difference(HISTORY_FIELDS):
        scrambled[column] = scrambled[column].sample(frac=1, random_state=1).to_numpy()
    asked = contacts.iloc[picks]
    assert_same(build(asked, contacts).frame, build(asked, scrambled).frame)


def test_history_counts_by_hand() -> None:
    rows = validate(
        frame(
            contact("C1", opened_hours=0),
            contact("C2", opened_hours=30, issue="refund"),  # a return (within 7 days of C1)
            contact("C3", opened_hours=24 * 20),
            contact("C4", opened_hours=24 * 20 + 2, issue="refund", agent_id="A2"),
        )
    ).contacts
    f = build(rows).frame.set_index(rows["contact_id"])
    assert f.loc["C1", "customer_contacts_90d"] == 0
    assert np.isnan(f.loc["C1", "hours_since_previous_contact"])
    assert f.loc["C2", "customer_contacts_7d"] == 1
    assert f.loc["C2", "is_return"] == 1
    assert f.loc["C2", "prev_issue"] == "billing_question"
    assert f.loc["C3", "customer_contacts_7d"] == 0
    assert f.loc["C3", "customer_contacts_30d"] == 2
    assert f.loc["C3", "customer_returns_30d"] == 1
    assert f.loc["C4", "same_issue_as_previous"] == 0
    assert f.loc["C4", "hours_since_previous_contact"] == pytest.approx(2 - 10 / 60)


def test_agent_rate_uses_only_windows_closed_at_close() -> None:
    # Agent A1 handles C1 (repeated by C2 after 30 h). The label counts only once C1's 7-day window has
    # ended, even though the repeat was seen earlier: counting repeats early would inflate recent rates.
    rows = validate(
        frame(
            contact("C1", customer_id="U1", opened_hours=0),
            contact("C2", customer_id="U1", opened_hours=30, agent_id="A7"),
            contact("C5", customer_id="U8", opened_hours=40),
            contact("C6", customer_id="U7", opened_hours=7 * 24 + 1),
        )
    ).contacts
    f = build(rows).frame.set_index(rows["contact_id"])
    assert f.loc["C5", "agent_closed_windows"] == 0
    assert f.loc["C6", "agent_closed_windows"] == 1
    assert f.loc["C6", "agent_repeat_rate"] > f.loc["C5", "agent_repeat_rate"]


def test_unknown_customer_and_agent_get_neutral_history() -> None:
    history = validate(frame(contact("C1"))).contacts
    new = validate(frame(contact("N1", customer_id="NEW", agent_id="NEWAGENT", opened_hours=5))).contacts
    f = build(new, history).frame.iloc[0]
    assert f["customer_contacts_90d"] == 0
    assert f["agent_closed_windows"] == 0
    assert 0 < f["agent_repeat_rate"] < 1


def test_a_new_customers_rate_is_the_logs_own_prior() -> None:
    """The customer's known rate shrinks to the prior the caller gives (the training slice's repeat rate: 3% in
    some centres), not to the industry's third: it was passed along and dropped on the way."""
    new = validate(frame(contact("N1", customer_id="NEW"))).contacts
    assert build(new, customer_prior=0.03).frame.loc[0, "customer_known_repeat_rate"] == pytest.approx(0.03)
    assert build(new).frame.loc[0, "customer_known_repeat_rate"] == pytest.approx(1 / 3)


def test_empty_transcripts_everywhere_work() -> None:
    rows = validate(frame(contact("C1", transcript=""), contact("C2", opened_hours=3, transcript=""))).contacts
    f = build(rows).frame
    assert (f["has_transcript"] == 0).all()
    assert T0 is not None


def test_contact_fields_are_what_pandas_reads_of_them() -> None:
    """The metadata reads arrays (one scored row cost 1.7 ms through pandas' accessors): word counts must stay
    pandas' ``.str.split().str.len()`` on any whitespace, and the close hour and weekday ``.dt``'s, before
    1970 and across a day's end too."""
    texts = ["", "  \n ", "one", "a\x1cb c\u00a0d\u2003e", "tab\tand\r\nlines", "Привет, как дела?"]
    rows = [contact(f"C{i}", opened_hours=i, transcript=t) for i, t in enumerate(texts)]
    contacts = validate(frame(*rows)).contacts
    closes = ["1969-12-31 23:59:59.999999", "1960-02-29 05:30", "2026-03-08 23:59:59", "2026-03-09 00:00"]
    contacts.loc[: len(closes) - 1, "closed_at"] = pd.to_datetime(closes, utc=True, format="ISO8601").as_unit("ns")
    f = build(contacts).frame
    words = contacts["transcript"].str.split().str.len().fillna(0).astype(float)
    assert f["transcript_words"].tolist() == words.tolist()
    assert f["has_transcript"].tolist() == (words > 0).astype(float).tolist()
    assert f["close_hour"].tolist() == contacts["closed_at"].dt.hour.astype(float).tolist()
    assert f["close_weekday"].tolist() == contacts["closed_at"].dt.day_of_week.astype(float).tolist()


def test_closing_turns_keeps_the_last_turns_or_the_last_words() -> None:
    conversation = "Agent: hello\nCustomer: my bill is wrong\n\nAgent: fixed it\nCustomer: that didn't help"
    assert closing_turns(conversation, 2) == "Agent: fixed it\nCustomer: that didn't help"
    assert closing_turns(conversation, 10) == conversation.replace("\n\n", "\n")
    one_line = " ".join(f"w{i}" for i in range(100))
    assert closing_turns(one_line, 4).split() == [f"w{i}" for i in range(100 - CLOSING_WORDS_WITHOUT_TURNS, 100)]
    assert closing_turns("", 4) == ""


def test_text_views_are_the_whole_conversation_and_its_close(settings) -> None:
    from predictor.features.embed import Embedder

    rows = validate(
        frame(
            contact(
                "C1",
                transcript="Agent: hi\nCustomer: card 4111 1111 1111 1111 charged twice\nAgent: let me look\n"
                "Agent: refunded\nCustomer: thanks\nAgent: anything else?\nCustomer: no, bye",
            ),
            contact("C2", opened_hours=3, transcript=""),
        )
    ).contacts
    features = build(rows, embedder=Embedder(settings.embedding))
    assert list(features.views) == ["whole", "closing"]
    assert features.text_columns == features.views["whole"] + features.views["closing"]
    whole = features.frame[features.views["whole"]].to_numpy()
    closing = features.frame[features.views["closing"]].to_numpy()
    assert np.abs(whole[0] - closing[0]).max() > 0  # different texts, different vectors
    assert not whole[1].any() and not closing[1].any()  # no transcript: zero vectors, never embedded
    assert "4111" not in features.transcripts[0] and "[CARD]" in features.transcripts[0]


def test_text_views_embed_every_view_in_one_call_as_each_alone(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both views go to the embedder in one call (each call tokenizes and embeds on its own: ~0.15 ms a call for
    a scorer's one contact); the vectors are those of each view embedded alone."""
    from predictor.features.build import text_views
    from predictor.features.embed import Embedder

    embedder = Embedder(settings.embedding)
    transcripts = [
        "Agent: hi\nCustomer: my bill is wrong\nAgent: let me look\nAgent: fixed\nCustomer: thanks\nAgent: bye",
        "Customer: short",  # its closing turns are the whole of it
        "",
        "one long line " * 400,
    ]
    encode, calls = embedder.encode, []
    monkeypatch.setattr(embedder, "encode", lambda texts, **kw: calls.append(len(texts)) or encode(texts, **kw))
    views = text_views(transcripts, embedder)
    assert calls == [2 * len(transcripts)]
    closing = [closing_turns(t, embedder.config.closing_turns) for t in transcripts]
    np.testing.assert_allclose(views.vectors["whole"], encode(transcripts), rtol=0, atol=1e-6)
    np.testing.assert_allclose(views.vectors["closing"], encode(closing), rtol=0, atol=1e-6)
    assert views.vectors["whole"].shape == views.vectors["closing"].shape == (len(transcripts), embedder.dimension)


def test_positions_are_those_pandas_finds() -> None:
    """The feature function looks ids and agents up by a dict (a scorer's few rows paid ~0.1 ms per index):
    the same positions as ``pd.Index.get_indexer``, -1 for the absent."""
    from predictor.features.build import _positions

    rng = np.random.default_rng(3)
    keys = np.array(sorted({f"id-{k}" for k in rng.integers(0, 10_000, 500)}), dtype=object)
    rng.shuffle(keys)
    wanted = np.array([*keys[::7], "absent", "", *keys[:3]], dtype=object)
    expected = pd.Index(keys).get_indexer(wanted)
    assert _positions(keys, wanted).tolist() == expected.tolist()
    assert _positions(keys[:0], wanted[:2]).tolist() == [-1, -1]
    assert _positions(keys, wanted[:0]).tolist() == []
