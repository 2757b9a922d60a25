"""The language of a contact: the file's `language` column when it has one, else read off the transcript.

The languages this product's users work in are told apart by their letters more surely than by a model
trained on web text, and a rule needs no weights: Belarusian writes ў and і and never и, Serbian Cyrillic
writes ђ ј љ њ ћ џ and none of ы э я ю й ё, Russian writes и, щ and ъ. Serbian in Latin script is told
from English by its diacritics (č ć š ž đ) and its most common short words, English by its own. Text in
neither script, or too short to tell, is left unknown (``""``): the follow-up then falls back to English.
"""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd

ENGLISH, RUSSIAN, BELARUSIAN, SERBIAN, UKRAINIAN = "en", "ru", "be", "sr", "uk"
UNKNOWN = ""
SERBIAN_LATIN = "sr-Latn"  # Serbian as written in Latin script: a written form, not a language of its own

_SERBIAN_CYRILLIC = frozenset("ђјљњћџ")
_UKRAINIAN = frozenset("їєґ")
_RUSSIAN = frozenset("щъ")
_EAST_SLAVIC = frozenset("ыэяюйё")  # Russian and Belarusian, never Serbian
_SERBIAN_LATIN_MARKS = frozenset("čćšžđ")
_WORD = re.compile(r"[^\W\d_]+")
_SERBIAN_LATIN_WORDS = frozenset((
    "je", "da", "ne", "nije", "sam", "se", "su", "mi", "hvala", "molim", "račun", "racun", "kako", "što", "sto",
    "zašto", "zasto", "dobar", "dan", "kartica", "novac", "uplata", "ste", "bilo", "ali", "već", "vec", "jer",
    "samo", "još", "jos",
))  # fmt: skip
_ENGLISH_WORDS = frozenset((
    "the", "and", "to", "is", "my", "you", "i", "it", "for", "of", "a", "in", "on", "that", "this", "was", "have",
    "with", "not", "can", "me", "your", "are", "be", "please", "thanks", "hi", "hello",
))  # fmt: skip
MIN_LETTERS = 3  # fewer letters than this tell nothing


def detect(text: str) -> str:
    """ISO 639-1 code of ``text``'s language among en, ru, be, sr (either script) and uk, or ``""``."""
    letters = Counter(ch for ch in text.lower() if ch.isalpha())
    n = sum(letters.values())
    if n < MIN_LETTERS:
        return UNKNOWN
    cyrillic = sum(c for ch, c in letters.items() if "\u0400" <= ch <= "\u04ff")
    if cyrillic * 2 > n:
        return _cyrillic(letters)
    latin = sum(c for ch, c in letters.items() if ch.isascii() or ch in _SERBIAN_LATIN_MARKS)
    if latin * 2 > n:
        return _latin(text.lower(), letters)
    return UNKNOWN


def _cyrillic(letters: Counter[str]) -> str:
    def count(chars: frozenset[str]) -> int:
        return sum(letters[ch] for ch in chars)

    serbian = count(_SERBIAN_CYRILLIC)
    if serbian and serbian >= count(_EAST_SLAVIC):
        return SERBIAN
    if letters["ў"]:  # Belarusian alone writes ў (a borrowed Russian word may bring an и with it)
        return BELARUSIAN
    if count(_UKRAINIAN):
        return UKRAINIAN
    if letters["і"]:  # і beside и is Ukrainian; і without и, Belarusian
        return UKRAINIAN if letters["и"] else BELARUSIAN
    if letters["и"] or count(_RUSSIAN) or count(_EAST_SLAVIC):
        return RUSSIAN
    return UNKNOWN


def _latin(lowered: str, letters: Counter[str]) -> str:
    words = _WORD.findall(lowered)
    serbian = sum(w in _SERBIAN_LATIN_WORDS for w in words) + sum(letters[ch] for ch in _SERBIAN_LATIN_MARKS)
    english = sum(w in _ENGLISH_WORDS for w in words)
    if serbian > english:
        return SERBIAN
    if english:
        return ENGLISH
    return UNKNOWN


_CODE = re.compile(r"([a-z]{2})(?:[-_][a-z]{2,4})?")


def language_of(declared: object, transcript: str) -> tuple[str, bool]:
    """A contact's language: a declared ISO 639-1 code is kept, lower-cased and without its region ("ru-RU",
    "sr_Latn" -> "ru", "sr"); anything else (blank, "Russian") is read off the transcript. Returns the code
    and whether a value was declared that is not a code (the caller warns)."""
    blank = declared is None or (not isinstance(declared, str) and bool(pd.isna(declared)))  # None, NaN, NA
    code = "" if blank else str(declared).strip().lower()
    match = _CODE.fullmatch(code)
    if match:
        return match.group(1), False
    return detect(transcript), code != ""


def languages(declared: pd.Series, transcripts: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``language_of`` for every contact, aligned with ``declared``: (languages, not_a_code)."""
    found = [language_of(d, t) for d, t in zip(declared.tolist(), transcripts.tolist(), strict=True)]
    codes = pd.Series([code for code, _ in found], index=declared.index, dtype=object)
    return codes, pd.Series([bad for _, bad in found], index=declared.index, dtype=bool)


def written(language: str, text: str) -> str:
    """The form a reply to ``text`` should take: ``sr-Latn`` for Serbian written in Latin script, else
    ``language`` itself (Serbian is written in both scripts, and a customer is answered in theirs)."""
    if language != SERBIAN:
        return language
    latin = sum(ch.isascii() and ch.isalpha() for ch in text)
    cyrillic = sum("\u0400" <= ch <= "\u04ff" for ch in text)
    return SERBIAN_LATIN if latin > cyrillic else SERBIAN


# Serbian Cyrillic to Latin, letter for letter (the official correspondence; Љ Њ Џ are two letters in Latin).
_SERBIAN_LATIN = str.maketrans({
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "ђ": "đ", "е": "e", "ж": "ž", "з": "z", "и": "i",
    "ј": "j", "к": "k", "л": "l", "љ": "lj", "м": "m", "н": "n", "њ": "nj", "о": "o", "п": "p", "р": "r",
    "с": "s", "т": "t", "ћ": "ć", "у": "u", "ф": "f", "х": "h", "ц": "c", "ч": "č", "џ": "dž", "ш": "š",
    "А": "A", "Б": "B", "В": "V", "Г": "G", "Д": "D", "Ђ": "Đ", "Е": "E", "Ж": "Ž", "З": "Z", "И": "I",
    "Ј": "J", "К": "K", "Л": "L", "Љ": "Lj", "М": "M", "Н": "N", "Њ": "Nj", "О": "O", "П": "P", "Р": "R",
    "С": "S", "Т": "T", "Ћ": "Ć", "У": "U", "Ф": "F", "Х": "H", "Ц": "C", "Ч": "Č", "Џ": "Dž", "Ш": "Š",
})  # fmt: skip


def to_serbian_latin(text: str) -> str:
    """Serbian Cyrillic written in Latin script (other characters untouched)."""
    return text.translate(_SERBIAN_LATIN)
