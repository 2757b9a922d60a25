"""The language of a contact: declared codes kept, others read off the transcript, in the service too."""

from __future__ import annotations

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
