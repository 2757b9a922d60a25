"""PII redaction of contact text: applied before a transcript is stored and before it is embedded.

Every pattern has bounded parts and may start only where its first class begins a run (a look-behind), so
redaction is linear in the length of any input: an unbounded form took seconds on one long run of letters
or digits, quadratic in its length. The order matters: the most specific forms go first, so an IBAN is not
read as a card and a spelled-out address not as two words.
"""

from __future__ import annotations

import functools
import re

_AT = r"(?:\s{0,3}[\(\[\{<]\s{0,2}at\s{0,2}[\)\]\}>]\s{0,3}|\s{1,3}at\s{1,3})"  # (at) [at] " at "
_DOT = r"(?:\s{0,3}[\(\[\{<]\s{0,2}dot\s{0,2}[\)\]\}>]\s{0,3}|\s{1,3}dot\s{1,3})"  # (dot) [dot] " dot "
_TLD = (
    r"(?:com|net|org|info|biz|edu|gov|io|co|uk|us|de|fr|es|it|nl|be|ch|at|se|no|dk|fi|pl|pt|ie|eu|ca|au|in|jp|br|mx"
    r"|ru|by|rs|ua|kz|me|ba|hr|si)"
)

_PII_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}"), "[EMAIL]"),
    # An address spelled out so that filters miss it: "jane dot doe at example dot com", "jane.doe (at)
    # example.com". The spelled form of "at" is an ordinary word, so it counts only with a dotted name or a
    # spelled/bracketed dot in the domain, ending in a known top-level domain ("looked at example.com" stays).
    (
        re.compile(
            rf"(?<![\w.+-])[\w+-]{{1,64}}(?:(?:\.|{_DOT})[\w+-]{{1,64}}){{1,4}}{_AT}[\w-]{{1,63}}"
            rf"(?:(?:\.|{_DOT})[\w-]{{1,63}}){{0,4}}(?:\.|{_DOT}){_TLD}\b"
            rf"|(?<![\w.+-])[\w+-]{{1,64}}{_AT}[\w-]{{1,63}}(?:(?:\.|{_DOT})[\w-]{{1,63}}){{0,4}}{_DOT}{_TLD}\b"
            rf"|(?<![\w.+-])[\w+-]{{1,64}}\s{{0,3}}[\(\[\{{<]\s{{0,2}}at\s{{0,2}}[\)\]\}}>]\s{{0,3}}[\w-]{{1,63}}"
            rf"(?:(?:\.|{_DOT})[\w-]{{1,63}}){{0,4}}(?:\.|{_DOT}){_TLD}\b",
            re.IGNORECASE,
        ),
        "[EMAIL]",
    ),
    # IBAN: country, check digits, 11-30 letters or digits, in groups of four or not ("DE89 3704 0044 0532
    # 0130 00", "GB82WEST12345698765432").
    (re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}(?![A-Za-z0-9])"), "[IBAN]"),
    # National ids in the common written forms: US SSN, UK National Insurance, Spanish DNI/NIE, Italian
    # codice fiscale, Swedish/Danish/Norwegian/Finnish personal numbers (digits, a dash or +, digits).
    (
        re.compile(
            r"(?<![\w-])(?:\d{3}-\d{2}-\d{4}"
            r"|[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
            r"|[XYZ]?\d{7,8}-?[A-Z]"
            r"|[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z]"
            r"|\d{6,8}[-+A]\d{3,4}[0-9A-Z]?"
            # Belarusian personal number (3140285A001PB4), Russian SNILS (112-233-445 95) and passport
            # (45 08 123456), a Serbian bank account in the domestic form (160-0000000012345-67).
            r"|\d{7}[A-Z]\d{3}[A-Z]{2}\d"
            r"|\d{3}-\d{3}-\d{3}[ -]\d{2}"
            r"|\d{2} \d{2} \d{6}"
            r"|\d{3}-\d{10,13}-\d{2})(?![\w-])"
        ),
        "[NATIONAL_ID]",
    ),
    # A card: 13-19 digits, in groups split by spaces, dots or dashes (one or two of them) or by none.
    (re.compile(r"(?<![\d.-])(?:\d[ .-]{0,2}){12,18}\d(?!\d)"), "[CARD]"),
    # A phone number has a leading + or separators; a bare run of digits is an account-like number.
    (re.compile(r"(?<![\w])(?:\+\d[\d ()-]{6,}\d|\(?\d{2,5}\)?[ -]\d{3,4}[ -]?\d{3,4})\b"), "[PHONE]"),
    # A national number with its trunk prefix, as Belarusian, Russian and Serbian callers write theirs:
    # "8 (029) 123-45-67", "8 912 345 67 89", "064/123-4567", "064 123 45 67".
    (re.compile(r"(?<![\w])[80][ -]?\(?\d{2,4}\)?(?:[ /-]{1,2}\d{2,4}){2,4}(?![\w])"), "[PHONE]"),
    # A local number without its area code, as Russians and Belarusians write it: "123-45-67".
    (re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{2}(?![\w-])"), "[PHONE]"),
    (re.compile(r"\b\d{6,}\b"), "[NUMBER]"),
)
NUL = "\x00"
# What each pattern cannot match without (searched once, in C): most transcripts skip the costly ones. The
# spelled-out address needs an "at" token and a top-level domain after a dot; the e-mail an @.
_NEEDS: tuple[re.Pattern[str] | None, ...] = (
    re.compile("@"),
    re.compile(rf"(?i)(?:\.|{_DOT}){_TLD}\b"),
    *[None] * 7,
)
# The fewest digits each pattern's every form holds (IBAN: its check digits; national ids: six, in the UK
# form; a card 13; a phone with a + two, as "+1 (...) 2" can be; the other phones 7; a bare number 6). A text
# with fewer is not scanned for it: one count instead of seven scans, and a substitution never adds a digit,
# so the count before the first one bounds every later one.
_MIN_DIGITS: tuple[int, ...] = (0, 0, 2, 6, 13, 2, 7, 7, 6)
_DIGIT = re.compile(r"\d")


@functools.lru_cache(maxsize=1024)
def redact(text: str) -> str:
    """Replace e-mail addresses (also spelled out), IBANs, national ids, card-, phone- and account-like
    numbers by placeholders; drop NUL characters (no database stores them in text, none means anything).

    Cached: a scored transcript is redacted for its embedding views, its word view and the store alike."""
    if NUL in text:
        text = text.replace(NUL, "")
    digits = len(_DIGIT.findall(text))
    for (pattern, placeholder), needed, fewest in zip(_PII_PATTERNS, _NEEDS, _MIN_DIGITS, strict=True):
        if digits >= fewest and (needed is None or needed.search(text)):
            text = pattern.sub(placeholder, text)
    return text
