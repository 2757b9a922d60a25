"""PII redaction of contact text: applied before a transcript is stored and before it is embedded.

Every pattern has bounded parts and may start only where its first class begins a run (a look-behind), so
redaction is linear in the length of any input: an unbounded form took seconds on one long run of letters
or digits, quadratic in its length. The order matters: the most specific forms go first, so an IBAN is not
read as a card and a spelled-out address not as two words.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

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
# What each pattern cannot match without, checked before its scan (a scan of every pattern was ~90 us of a
# 600-character transcript, a third of it the spelled-out address's own pre-check): most transcripts skip the
# costly ones. ``digits`` is the text's count of digits before the first substitution (none adds a digit, so
# it bounds every later count); the other checks read the text as it is at that pattern.
_TLD_AFTER_DOT = re.compile(rf"(?i)\.{_TLD}\b")
_SPELLED_DOT_TLD = re.compile(rf"(?i){_DOT}{_TLD}\b")


def _may_be_spelled_address(text: str) -> bool:
    """Every spelled-out form ends in a dot, plain or spelled, and a known top-level domain. A plain one is
    found by a scan for "." (fast); the spelled form's scan tries three alternatives at every character, so it
    runs only on a text holding the word "dot" at all."""
    return _TLD_AFTER_DOT.search(text) is not None or (
        "dot" in text.lower() and _SPELLED_DOT_TLD.search(text) is not None
    )


_NEEDS: tuple[Callable[[str, int], bool], ...] = (
    lambda text, digits: "@" in text,
    lambda text, digits: _may_be_spelled_address(text),
    lambda text, digits: digits >= 2,  # an IBAN's check digits
    lambda text, digits: digits >= 6,  # a national id: six in the UK form
    lambda text, digits: digits >= 13,  # a card
    # A phone with a leading +: "+1 (...) 2" has two digits; without one: 2 + 3 + 3 of its groups.
    lambda text, digits: digits >= 8 or (digits >= 2 and "+" in text),
    lambda text, digits: digits >= 7,  # a trunk-prefixed national number
    lambda text, digits: digits >= 7,  # a local number
    lambda text, digits: digits >= 6,  # a bare number
)
_DIGIT = re.compile(r"\d")
_ASCII_DIGITS = "0123456789"


def _digits(text: str) -> int:
    """How many characters ``\\d`` reads as digits: any Unicode decimal digit, counted by character in an
    ASCII text (half the time of a regex scan)."""
    if text.isascii():
        return sum(map(text.count, _ASCII_DIGITS))
    return len(_DIGIT.findall(text))


@functools.lru_cache(maxsize=1024)
def redact(text: str) -> str:
    """Replace e-mail addresses (also spelled out), IBANs, national ids, card-, phone- and account-like
    numbers by placeholders; drop NUL characters (no database stores them in text, none means anything).

    Cached: a scored transcript is redacted for its embedding views, its word view and the store alike."""
    if NUL in text:
        text = text.replace(NUL, "")
    digits = _digits(text)
    for (pattern, placeholder), needed in zip(_PII_PATTERNS, _NEEDS, strict=True):
        if needed(text, digits):
            text = pattern.sub(placeholder, text)
    return text
