"""The language of a contact: declared codes kept, others read off the transcript, in the service too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import contact

from predictor.contacts.language import detect, languages
from predictor.contacts.schema import validate

SAMPLES = {
    "ru": "Здравствуйте, у меня дважды списали деньги за один и тот же счёт, объясните, пожалуйста.",
    "be": "Добры дзень, у мяне двойчы спісалі грошы за адзін рахунак, растлумачце, калі ласка.",
    "sr-cyrl": "Добар дан, наплатили су ми исти рачун два пута, можете ли да ми објасните?",
    "sr-latn": "Dobar dan, naplatili su mi isti račun dva puta, možete li da mi objasnite?",
    "en": "Hi, I was charged twice for the same bill, can you explain it please?",
    "uk": "Добрий день, з мене двічі списали гроші за один рахунок, поясніть, будь ласка.",
}
EXPECTED = {"ru": "ru", "be": "be", "sr-cyrl": "sr", "sr-latn": "sr", "en": "en", "uk": "uk"}


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_each_language_is_read_off_its_text(sample: str) -> None:
    assert detect(SAMPLES[sample]) == EXPECTED[sample]


def test_serbian_latin_without_diacritics_and_code_switching() -> None:
    # Chats drop the diacritics; a Russian chat quoting English words stays Russian.
    assert detect("dobar dan, hvala, nije mi jasno zasto je racun veci") == "sr"
    assert detect("Здравствуйте, у меня не работает app, пишет error при оплате") == "ru"
    # Belarusian borrowing a Russian word is still Belarusian.
    assert detect("Калі ласка, праверце мой рахунак, я ужо двойчы тэлефанаваў") == "be"


@pytest.mark.parametrize("text", ["", "   ", "ok", "12345 [CARD]", "中文客服"])
def test_too_little_or_another_script_is_unknown(text: str) -> None:
    assert detect(text) == ""


def test_declared_codes_win_and_bad_ones_are_flagged() -> None:
    declared = pd.Series(["RU", "sr-Latn", "", "Russian", None])
    texts = [SAMPLES["en"], SAMPLES["sr-latn"], SAMPLES["be"], SAMPLES["ru"], SAMPLES["en"]]
    out, invalid = languages(declared, pd.Series(texts))
    assert out.tolist() == ["ru", "sr", "be", "ru", "en"]
    assert invalid.tolist() == [False, False, False, True, False]


def test_validation_records_the_language_and_warns_on_a_bad_code() -> None:
    rows = [contact(f"C{i}", transcript=text, language="") for i, (_, text) in enumerate(sorted(SAMPLES.items()))]
    rows[0]["language"] = "Belarusian"  # not a code: read off the text, warned, the contact kept
    result = validate(pd.DataFrame(rows))
    assert result.n_accepted == len(rows)
    got = dict(zip(result.contacts["contact_id"], result.contacts["language"], strict=True))
    assert got == {f"C{i}": EXPECTED[k] for i, k in enumerate(sorted(SAMPLES))}
    assert result.warnings["field"].tolist() == ["language"]


# -- simulated logs in other languages (#19) ------------------------------------------------------------


def _shape(value: object) -> object:
    """A phrasing's structure: keys, list lengths and placeholders, not its words."""
    import re

    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return (len(value), tuple(_shape(item) for item in value))
    return tuple(sorted(set(re.findall(r"\{\w+\}", value)))) if isinstance(value, str) else value


@pytest.mark.parametrize("language", ["ru", "be", "sr", "sr-Latn"])
def test_every_language_has_the_english_phrasings_shape(language: str) -> None:
    """Same keys, list lengths and placeholders: a seed draws the same story in every language."""
    from predictor.contacts.simulate import phrases

    english, other = phrases("en"), phrases(language)
    for key in ("AGENT_NAMES", "EMAIL_USERS"):  # names differ, their number does not
        assert len(other[key]) == len(english[key])
    skip = {"AGENT_NAMES", "EMAIL_USERS"}
    assert {k: _shape(v) for k, v in other.items() if k not in skip} == {
        k: _shape(v) for k, v in english.items() if k not in skip
    }


@pytest.fixture(scope="module")
def language_logs() -> dict[str, object]:
    from predictor.contacts.simulate import SimulatorConfig, simulate

    return {
        language: simulate(SimulatorConfig(n_contacts=1500, seed=7, days=40, language=language))
        for language in ("en", "ru", "be", "sr", "mixed")
    }


def test_a_seed_tells_the_same_story_in_every_language(language_logs) -> None:
    """The same contacts, outcomes and truth in every language; the non-English logs also draw the same
    sentences (English keeps its typos in its main stream, as it did before other languages existed)."""
    english = language_logs["en"].contacts
    for language in ("ru", "be", "sr", "mixed"):
        other = language_logs[language].contacts
        assert other.drop(columns=["transcript", "language"]).equals(english.drop(columns=["transcript", "language"]))
        assert language_logs[language].truth.equals(language_logs["en"].truth)
    untranscribed = language_logs["ru"].contacts["transcript"] == ""
    for language in ("be", "sr"):
        assert (language_logs[language].contacts["transcript"] == "").equals(untranscribed)
    lines = [len(t.split("\n")) for t in language_logs["ru"].contacts["transcript"]]
    assert [len(t.split("\n")) for t in language_logs["sr"].contacts["transcript"]] == lines


@pytest.mark.parametrize("language", ["ru", "be", "sr", "mixed"])
def test_each_language_is_written_and_told_apart(language_logs, language: str) -> None:
    contacts = language_logs[language].contacts
    written = contacts[contacts["transcript"] != ""]
    expected = {"mixed": {"en", "ru", "be", "sr"}}.get(language, {language})
    assert set(contacts["language"]) == expected
    detected, _ = languages(pd.Series([""] * len(written), index=written.index), written["transcript"])
    assert (detected == written["language"]).mean() > 0.99
    if language in ("sr", "mixed"):  # Serbian in both scripts
        serbian = written.loc[written["language"] == "sr", "transcript"]
        latin = serbian.str.contains("Korisnik|Operater")
        assert 0.3 < latin.mean() < 0.7


def test_chats_switch_codes_and_drop_serbian_diacritics(language_logs) -> None:
    text = "\n".join(language_logs["mixed"].contacts["transcript"])
    assert "спс" in text or "ок" in text  # Russian chats borrow
    assert "спасибо" in language_logs["be"].contacts["transcript"].str.cat()  # trasianka in Belarusian chats
    assert "Korisnik: " in text and "racun" in text.lower()  # Serbian Latin typed without diacritics


@pytest.mark.parametrize("language", ["ru", "be", "sr"])
def test_local_pii_shapes_are_written_and_redacted(language_logs, language: str) -> None:
    """Every local phone, card, account and id the simulator writes is gone after redaction."""
    import re

    from predictor.contacts.redact import redact

    transcripts = language_logs[language].contacts["transcript"]
    lines = [line for t in transcripts for line in t.split("\n") if re.search(r"\d{3}", line)]
    assert len(lines) > 20
    phones = {"ru": "+7 9", "be": "+375", "sr": "+381"}[language]
    assert any(phones in line for line in lines)
    for line in lines:
        out = redact(line)
        assert not re.search(r"\d{3}", out.replace("121", "")), (line, out)  # 121: the voicemail number
        assert "@" not in out


def test_simulate_cli_language(tmp_path) -> None:
    from typer.testing import CliRunner

    from predictor.cli import app

    runner = CliRunner()
    out = tmp_path / "be.csv"
    done = runner.invoke(app, ["simulate", "--n", "200", "--days", "14", "--language", "be", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert set(pd.read_csv(out)["language"]) == {"be"}
    bad = runner.invoke(app, ["simulate", "--n", "200", "--language", "de", "--out", str(out)])
    assert bad.exit_code == 2 and "--language must be one of" in bad.output


# -- follow-ups in the customer's language --------------------------------------------------------------


def test_follow_ups_are_written_in_the_customers_language() -> None:
    from predictor.config import ServiceConfig
    from predictor.contacts.language import written
    from predictor.reports.plan import follow_up_plan

    plan = follow_up_plan(ServiceConfig())

    def advice(language: str, text: str, next_issue: str = "refund"):
        return plan.recommend(
            repeat_probability=0.9, next_issue=next_issue, contact_issue="billing_question",
            contact_channel="chat", hours_to_repeat_median=30, language=written(language, text),
        )  # fmt: skip

    russian = advice("ru", SAMPLES["ru"])
    assert russian.act and russian.language == "ru" and "возврат" in russian.message
    serbian_latin = advice("sr", SAMPLES["sr-latn"])
    assert serbian_latin.language == "sr" and "povraćaj" in serbian_latin.message
    assert not any("\u0400" <= ch <= "\u04ff" for ch in serbian_latin.message)
    assert "повраћај" in advice("sr", SAMPLES["sr-cyrl"]).message
    assert "вяртанне" in advice("be", SAMPLES["be"]).message
    check_in = advice("ru", SAMPLES["ru"], next_issue="billing_question")  # the same issue again
    assert check_in.repeat_type == "explicit" and "счёт" in check_in.message
    for language, text in (("uk", SAMPLES["uk"]), ("", "")):  # no messages in that language: English
        fallback = advice(language, text)
        assert fallback.language == "en" and "refund" in fallback.message


# -- the multilingual backends and training on each language's log ---------------------------------------


@pytest.fixture(scope="module")
def static_e5(tmp_path_factory: pytest.TempPathFactory):
    from predictor.config import EmbeddingConfig
    from predictor.features.embed import Embedder

    # A small vocabulary keeps the distillation to seconds; the real one keeps 24,000 pieces.
    config = EmbeddingConfig(backend="e5-static", static_vocabulary=1500, cache_dir=tmp_path_factory.mktemp("e5"))
    return Embedder(config)


@pytest.mark.slow
def test_the_static_model_cuts_and_reads_in_the_models_own_pieces(static_e5) -> None:
    long_russian = "Клиент: " + "Я уже пару раз выключал и включал телефон, ничего не помогло. " * 40 + "Спасибо, ясно."
    cut = static_e5.prepare([long_russian])[0]
    assert "Клиент" in cut and cut.endswith("Спасибо, ясно.") and "<unk>" not in cut and "[UNK]" not in cut
    vectors = static_e5.encode([SAMPLES["ru"], SAMPLES["be"], "", SAMPLES["ru"]])
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors[[0, 1, 3]], axis=1), 1, atol=1e-5) and not vectors[2].any()
    assert np.allclose(vectors[0], vectors[3])
    # Weights never travel in a pickle, and the vocabulary size names the cache entry.
    import pickle

    assert pickle.loads(pickle.dumps(static_e5)).model_id == static_e5.model_id
    assert "-v1500" in static_e5.model_id


@pytest.mark.slow
def test_the_transformer_backend_reads_one_complaint_alike_in_every_language(tmp_path) -> None:
    from predictor.config import EmbeddingConfig
    from predictor.features.embed import Embedder

    e5 = Embedder(EmbeddingConfig(backend="e5", cache=False, cache_dir=tmp_path))
    billing = [SAMPLES[k] for k in ("en", "ru", "be", "sr-cyrl", "sr-latn")]
    password = "Я забыл пароль и не могу войти в приложение."
    vectors = e5.encode([*billing, password])
    same = vectors[:5] @ vectors[:5].T
    assert same[np.triu_indices(5, 1)].min() > 0.85  # one complaint, five languages or scripts
    assert (vectors[:5] @ vectors[5]).max() < same[np.triu_indices(5, 1)].min()  # another issue is further away


@pytest.mark.slow
@pytest.mark.parametrize("language", ["ru", "be", "sr", "mixed"])
def test_each_languages_log_trains_with_the_multilingual_backend(language: str, settings, static_e5) -> None:
    """A log largely not in English is embedded with the multilingual backend, chosen by its languages (the
    model keeps it, so the service embeds alike), and says so."""
    from predictor.contacts.schema import validate
    from predictor.contacts.simulate import SimulatorConfig, simulate
    from predictor.training.train import fit

    log = simulate(SimulatorConfig(n_contacts=1800, seed=21, days=90, language=language))
    # The test's settings with the small distilled vocabulary (the real default keeps 24,000 pieces).
    embedding = settings.embedding.model_copy(
        update={"static_vocabulary": static_e5.config.static_vocabulary, "cache_dir": static_e5.config.cache_dir}
    )
    result = fit(validate(log.contacts).contacts, settings.model_copy(update={"embedding": embedding}), ablation=False)
    assert result.model.embedding_config.backend == "e5-static"
    assert any("not in English" in note and "e5-static" in note for note in result.split.notes)
    # test_train's bar for a log of this size: it learns. How well each language is read is measured where
    # the test slice is large enough to tell, with the shipped 24,000-piece vocabulary: bench_languages.py on
    # 20k contacts (README "Contact centres in other languages"). On these 1,800 contacts, beating the issue
    # base rate (0.608) is within noise: 0.643 (be) and 0.612 (sr) with 24,000 pieces, 0.593 and 0.606 with
    # this test's 1,500.
    assert result.metrics.loc["model", "roc_auc"] > 0.55


def test_only_the_text_to_embed_chooses_the_embedding(settings) -> None:
    """A Russian log without any transcript has nothing to embed: no multilingual backend, no note saying so."""
    from predictor.compute.local import LocalBackend
    from predictor.contacts.schema import validate
    from predictor.contacts.simulate import SimulatorConfig, simulate

    log = validate(simulate(SimulatorConfig(n_contacts=300, seed=3, days=20, language="ru")).contacts).contacts
    assert LocalBackend(log, settings).languages().to_dict() == {"ru": int((log["transcript"] != "").sum())}
    assert LocalBackend(log.assign(transcript=""), settings).languages().empty


def test_an_english_log_keeps_the_english_backend(settings) -> None:
    from predictor.features.embed import embedding_for

    assert embedding_for(settings.embedding, pd.Series({"en": 950, "ru": 50, "": 300}))[1] == ""
    chosen, note = embedding_for(settings.embedding, pd.Series({"en": 600, "ru": 300, "sr": 100}))
    assert chosen.backend == "e5-static" and "40% of the contacts are not in English (en 60%, ru 30%, sr 10%)" in note
    assert embedding_for(settings.embedding.model_copy(update={"multilingual_backend": None}),
                         pd.Series({"ru": 10}))[1] == ""  # fmt: skip
