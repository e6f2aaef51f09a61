"""English text normalisation for transcripts, before grapheme-to-phoneme conversion.

``normalize_text`` turns a raw transcript into lower-case English words and a small set of punctuation marks
(``, . ? !``) that a G2P backend reads the same way every time:

* unicode: NFKC, typographic quotes/dashes/ellipses folded to ASCII, accents stripped from Latin letters
  ("café" -> "cafe");
* script check: letters from any non-Latin script (Cyrillic, Greek, CJK, Arabic, Hebrew, Devanagari, ...) raise
  :class:`~vssflow.errors.TranscriptError`: only English transcripts are supported;
* numbers: currency ("$3.50" -> "three dollars fifty cents"), percentages, ordinals ("21st"), years ("1999" ->
  "nineteen ninety nine"), decimals ("3.14" -> "three point one four"), thousands separators, negatives, clock
  times ("3:30"), and plain cardinals up to the trillions, spelled by ``num2words`` (American: no "and");
* abbreviations: titles (Dr., Mr., Mrs., Ms., Prof., St. ...), "e.g.", "i.e.", "etc.", "vs.", "&", "%", "@", "+";
* punctuation and whitespace: brackets and quotes dropped, ``; :`` become commas, runs of marks collapse to one.

A transcript with no pronounceable word left (empty, only punctuation or symbols) raises ``TranscriptError``.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

from vssflow.errors import TranscriptError

__all__ = ["normalize_text", "number_to_words", "ordinal_to_words", "year_to_words", "check_script"]

_ONES = "zero one two three four five six seven eight nine".split()


def _plain(words: str) -> str:
    """num2words' English ("one hundred and twenty-one", "one thousand, two") in our form: American (no "and"),
    no hyphens or commas ("one hundred twenty one", "one thousand two")."""
    return " ".join(w for w in words.replace("-", " ").replace(",", " ").split() if w != "and")


def number_to_words(n: int) -> str:
    """Spell an integer in English words ("1234" -> "one thousand two hundred thirty four"), by num2words.

    Numbers of 10**15 and above are read digit by digit (as a phone or serial number would be).
    """
    if n < 0:
        return "minus " + number_to_words(-n)
    if n >= 10**15:
        return _digits(str(n))
    return _plain(num2words(n, lang="en"))


def ordinal_to_words(n: int) -> str:
    """Spell an ordinal ("21" -> "twenty first", "12" -> "twelfth", "100" -> "one hundredth"), by num2words."""
    if n >= 10**15:
        return _digits(str(n))
    return _plain(num2words(n, lang="en", to="ordinal"))


def year_to_words(n: int) -> str:
    """Read a year the way English speakers do ("1999" -> "nineteen ninety nine", "2005" -> "two thousand five")."""
    if n % 1000 == 0 or 2000 < n < 2010:
        return number_to_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{number_to_words(high)} hundred"
    low_words = number_to_words(low) if low >= 10 else f"oh {number_to_words(low)}"
    return f"{number_to_words(high)} {low_words}"


def _digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s)


# ---------------------------------------------------------------- script check

_SUPPORTED_SCRIPTS = ("LATIN",)


def _script_of(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else "UNKNOWN"


def check_script(text: str, *, source: str | None = None) -> None:
    """Raise ``TranscriptError`` when ``text`` holds letters of a script other than Latin.

    Digits, punctuation and symbols of any kind are fine here (they are handled by normalisation).
    """
    for ch in text:
        if ch.isalpha() and _script_of(ch) not in _SUPPORTED_SCRIPTS:
            script = _script_of(ch).title()
            if script in ("Cjk", "Hiragana", "Katakana", "Hangul"):
                script = "CJK"
            raise TranscriptError(
                f"transcript {_preview(text)!r} contains {script} letters ({ch!r}): only English transcripts are "
                "supported; translate or transliterate it to English, or drop the transcript for a V2S clip",
                source=source,
            )


def _preview(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------- unicode folding

_FOLD = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "`": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": " - ",
        "\u2014": " - ",
        "\u2015": " - ",
        "\u2212": "-",
        "\u2026": "...",
        "\u00a0": " ",
        "\u00a3": " £",
        "\u20ac": " €",
        "\u00d7": " times ",
    }
)


# Latin letters that do not decompose into a base letter plus a combining mark.
_LATIN_EXTRA = str.maketrans(
    {"æ": "ae", "Æ": "Ae", "œ": "oe", "Œ": "Oe", "ß": "ss", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D"}
    | {"ð": "th", "Ð": "Th", "þ": "th", "Þ": "Th", "ı": "i"}
)


def _fold_unicode(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_FOLD)
    # Strip accents from Latin letters: decompose, drop combining marks, recompose.
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.translate(_LATIN_EXTRA)
    return unicodedata.normalize("NFC", text)


# ---------------------------------------------------------------- abbreviations

_TITLES = {
    "mr": "mister",
    "mrs": "missus",
    "ms": "miss",
    "dr": "doctor",
    "prof": "professor",
    "sr": "senior",
    "jr": "junior",
    "capt": "captain",
    "gen": "general",
    "lt": "lieutenant",
    "col": "colonel",
    "sgt": "sergeant",
    "rev": "reverend",
    "hon": "honorable",
    "gov": "governor",
    "mt": "mount",
    "ft": "fort",
}
_ABBREVIATIONS = {
    "e.g.": "for example",
    "i.e.": "that is",
    "etc.": "et cetera",
    "vs.": "versus",
    "approx.": "approximately",
    "dept.": "department",
    "ave.": "avenue",
    "rd.": "road",
    "blvd.": "boulevard",
    "co.": "company",
    "inc.": "incorporated",
    "ltd.": "limited",
    "corp.": "corporation",
    "jan.": "january",
    "feb.": "february",
    "mar.": "march",
    "apr.": "april",
    "aug.": "august",
    "sept.": "september",
    "sep.": "september",
    "oct.": "october",
    "nov.": "november",
    "dec.": "december",
    "a.m.": "a m",
    "p.m.": "p m",
    "u.s.": "u s",
    "u.k.": "u k",
}
_TITLE_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.", re.IGNORECASE)
_ABBR_RE = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(a) for a in sorted(_ABBREVIATIONS, key=len, reverse=True)) + r")(?=\W|$)",
    re.IGNORECASE,
)
# "St." is "Saint" before a capitalised name ("St. Louis") and "Street" otherwise ("Baker St.").
_SAINT_RE = re.compile(r"\bSt\.(?=\s+[A-Z])")
_STREET_RE = re.compile(r"\bst\.", re.IGNORECASE)
_ACRONYM_RE = re.compile(r"(?<![\w.])(?:[A-Za-z]\.){2,}")  # "I.B.M." -> "I B M"
_NUMBER_ABBR_RE = re.compile(r"\bno\.(?=\s*\d)", re.IGNORECASE)


def _sub_keeping_final_period(pattern: re.Pattern, replace, text: str) -> str:
    """Substitute an abbreviation; its period still ends the sentence when nothing but space follows it."""

    def _sub(m: re.Match) -> str:
        out = replace(m)
        return out + "." if m.group(0).endswith(".") and not m.string[m.end() :].strip() else out

    return pattern.sub(_sub, text)


def _expand_abbreviations(text: str) -> str:
    text = _sub_keeping_final_period(_ABBR_RE, lambda m: " " + _ABBREVIATIONS[m.group(1).lower()] + " ", text)
    text = _sub_keeping_final_period(_ACRONYM_RE, lambda m: " " + " ".join(m.group(0).replace(".", "")) + " ", text)
    text = _SAINT_RE.sub("Saint", text)
    text = _sub_keeping_final_period(_STREET_RE, lambda m: "street", text)
    text = _NUMBER_ABBR_RE.sub("number", text)
    text = _sub_keeping_final_period(_TITLE_RE, lambda m: _TITLES[m.group(1).lower()], text)
    return text


# ---------------------------------------------------------------- numbers

_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence")}
_CURRENCIES["€"] = ("euro", "euros", "cent", "cents")
_CURRENCY_RE = re.compile(r"([$£€])\s?(\d[\d,]*)(?:\.(\d+))?(\s?(?:thousand|million|billion|trillion)\b)?")
_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,]*\d)")
_PERCENT_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s?%")
_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_DECIMAL_RE = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.]*\d)")
_NEGATIVE_RE = re.compile(r"(?<![\w-])-(\d)")
_INTEGER_RE = re.compile(r"\d+")


def _currency(m: re.Match) -> str:
    unit, units, sub, subs = _CURRENCIES[m.group(1)]
    whole = int(m.group(2).replace(",", ""))
    frac = m.group(3)
    scale = m.group(4)
    if scale:  # "$2.5 million" -> "two point five million dollars"
        amount = number_to_words(whole) + (f" point {_digits(frac)}" if frac else "")
        return f" {amount} {scale.strip()} {units} "
    cents = int(frac[:2].ljust(2, "0")) if frac else 0
    parts = []
    if whole or not cents:
        parts.append(f"{number_to_words(whole)} {unit if whole == 1 else units}")
    if cents:
        parts.append(f"{number_to_words(cents)} {sub if cents == 1 else subs}")
    return " " + " ".join(parts) + " "


def _decimal(whole: str, frac: str) -> str:
    return f"{number_to_words(int(whole))} point {_digits(frac)}"


def _percent(m: re.Match) -> str:
    value = m.group(1)
    sign = "minus " if value.startswith("-") else ""
    value = value.lstrip("-")
    spoken = _decimal(*value.split(".")) if "." in value else number_to_words(int(value))
    return f" {sign}{spoken} percent "


def _time(m: re.Match) -> str:
    hours, minutes = int(m.group(1)), int(m.group(2))
    if hours > 24 or minutes > 59:
        return f"{number_to_words(hours)} {number_to_words(minutes)}"
    if minutes == 0:
        return f"{number_to_words(hours)} o'clock"
    low = number_to_words(minutes) if minutes >= 10 else f"oh {number_to_words(minutes)}"
    return f"{number_to_words(hours)} {low}"


def _integer(m: re.Match) -> str:
    digits = m.group(0)
    n = int(digits)
    if len(digits) > 1 and digits.startswith("0"):  # "007", zip codes: digit by digit
        return f" {_digits(digits)} "
    if 1100 <= n <= 2099 and len(digits) == 4:  # most four-digit numbers in speech are years
        return f" {year_to_words(n)} "
    return f" {number_to_words(n)} "


def _expand_numbers(text: str) -> str:
    text = _CURRENCY_RE.sub(_currency, text)
    text = _THOUSANDS_RE.sub(lambda m: f" {number_to_words(int(m.group(1).replace(',', '')))} ", text)
    text = _PERCENT_RE.sub(_percent, text)
    text = _ORDINAL_RE.sub(lambda m: f" {ordinal_to_words(int(m.group(1)))} ", text)
    text = _TIME_RE.sub(_time, text)
    text = _DECIMAL_RE.sub(lambda m: f" {_decimal(m.group(1), m.group(2))} ", text)
    text = _NEGATIVE_RE.sub(r"minus \1", text)
    return _INTEGER_RE.sub(_integer, text)


# ---------------------------------------------------------------- punctuation

_SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "#": " number ", "%": " percent "}
_SYMBOL_RE = re.compile("|".join(re.escape(s) for s in _SYMBOLS))
_PAUSE_RE = re.compile(r"\s*[;:]\s*|\s+-\s+|\s*--+\s*")
_DROP_RE = re.compile(r"[^a-z',.?! ]+")
_MARK_RUN_RE = re.compile(r"\s*([,.?!])(?:[\s,.?!]*)")
_WORD_RE = re.compile(r"[a-z]")


def _clean_punctuation(text: str) -> str:
    text = _SYMBOL_RE.sub(lambda m: _SYMBOLS[m.group(0)], text)
    text = text.lower()
    text = _PAUSE_RE.sub(", ", text)
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # "well-known" -> "well known"
    text = _DROP_RE.sub(" ", text)
    # Apostrophes only inside words ("don't", "smith's"); quotes around words are dropped.
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)

    # A run of marks collapses to its strongest member ("?!" -> "?", "..." -> "."), attached to the previous word.
    def _collapse(m: re.Match) -> str:
        run = m.group(0)
        mark = "?" if "?" in run else "!" if "!" in run else "." if "." in run else ","
        return f"{mark} "

    text = _MARK_RUN_RE.sub(_collapse, text)
    text = " ".join(text.split())
    text = re.sub(r"^[,.?!]\s*", "", text)  # no leading marks
    return text


def normalize_text(text: str, *, source: str | None = None) -> str:
    """Normalise an English transcript for G2P.

    Args:
        text: the raw transcript (any unicode).
        source: what the transcript belongs to (clip id or file), used in error messages.

    Returns:
        Lower-case words separated by single spaces, with only ``, . ? !`` and in-word apostrophes as marks,
        e.g. ``"Dr. Smith paid $3.50 on Jan. 2nd, 1999!"`` -> ``"doctor smith paid three dollars fifty cents on
        january second, nineteen ninety nine!"``.

    Raises:
        TranscriptError: a non-Latin script, or nothing pronounceable (empty, punctuation or symbols only).
    """
    if not isinstance(text, str):
        raise TranscriptError(f"transcript must be a string, got {type(text).__name__}; pass the text", source=source)
    text = _fold_unicode(text)
    check_script(text, source=source)
    text = _expand_abbreviations(text)
    text = _expand_numbers(text)
    out = _clean_punctuation(text)
    if not _WORD_RE.search(out):
        raise TranscriptError(
            f"transcript {_preview(text)!r} has no pronounceable English words; give the spoken words as text, or "
            "leave the transcript empty only for V2S clips",
            source=source,
        )
    return out
