"""The text of the embedded corpus: clip sentences from a phrase grammar or GRID's, fixed sentences, speakers.

Clip text comes from one of three sources (``CorpusConfig.text``):

* ``"phrases"`` (default): short natural English sentences from a small template grammar (:data:`PHRASE_TEMPLATES`),
  e.g. "We went to the market yesterday.", "Please bring the camera tomorrow.", "We saw the friendly panda again.";
  :data:`PHRASES_SIZE` (2,664) distinct sentences of 5-6 common words, no letters or digits. Natural text because
  the evaluation judges speech by Whisper's WER, and Whisper's language model mishears GRID's letter/digit strings
  even on the ground truth.
* ``"grid"``: the six-slot grammar of the GRID audio-visual corpus (Cooke et al. 2006; the paper's GRID
  benchmark): command, colour, preposition, letter, digit, adverb, e.g. "bin blue at F two now". 4 x 4 x 4 x 24 x
  10 x 4 = 61,440 sentences. Kept for the paper's GRID benchmark layout; Whisper-base reads raw espeak GRID clips at
  WER ~0.5-0.8, so speech quality is better judged on ``"phrases"``.
* ``"sentences"``: the 32 fixed short sentences of earlier corpora (:data:`SENTENCES`).

Which split a clip belongs to follows its sentence (:func:`sentence_split`, a stable hash of the normalised text), so
train, val and test never share a sentence.
"""

from __future__ import annotations

import hashlib
import math
import re

from vssflow.synth.espeak import Voice
from vssflow.text.normalize import normalize_text

TEXTS = ("phrases", "grid", "sentences")
SPLITS = ("train", "val", "test")

# GRID's vocabulary. Letters are written as single capitals, which espeak-ng (speech and the espeak G2P), gruut and
# CMUdict all read as the letter name ("F" -> ɛ f, "Y" -> w aɪ). Two are left out: W, as in GRID, and A, which every
# G2P reads as the article (ə / ɐ) and espeak-ng even merges into the word before it ("at A" -> æɾə, one word
# event fewer); no spelling of it ("ay", "eh", "eigh", ...) is read as eɪ by all three, so it is not used.
GRID_COMMANDS = ("bin", "lay", "place", "set")
GRID_COLOURS = ("blue", "green", "red", "white")
GRID_PREPOSITIONS = ("at", "by", "in", "with")
GRID_LETTERS = tuple("BCDEFGHIJKLMNOPQRSTUVXYZ")
GRID_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GRID_ADVERBS = ("again", "now", "please", "soon")
GRID_SLOTS = (GRID_COMMANDS, GRID_COLOURS, GRID_PREPOSITIONS, GRID_LETTERS, GRID_DIGITS, GRID_ADVERBS)
GRID_SIZE = math.prod(len(slot) for slot in GRID_SLOTS)  # 61,440


def grid_sentence(index: int) -> str:
    """GRID sentence number ``index`` (any int, taken modulo :data:`GRID_SIZE`), e.g. ``0`` -> "bin blue at B zero
    again". The index is read in mixed radix over the six slots, the adverb varying fastest."""
    k = index % GRID_SIZE
    words = []
    for slot in reversed(GRID_SLOTS):
        k, j = divmod(k, len(slot))
        words.append(slot[j])
    return " ".join(reversed(words))


# The phrase grammar. Why not GRID: Whisper (the evaluation's ASR) decodes with an English language model, which
# turns GRID's "bin blue at F two now" into "Bean blue at F2 now" even on the clean espeak recording (raw-GT WER
# ~0.5-0.8), so WER on it measures the ASR, not the model. Natural sentences from fixed frames ("We went to the",
# "Please ... the") with 86 common words give it the context it needs. The words were screened on the espeak
# voices of SPEAKERS: ones Whisper-base often mishears there were replaced, e.g. most b/d/p-initial words ("bag",
# "blue" -> "mag", "new"; "duck" -> "dot"), short words that differ by a vowel or a final stop ("hat", "clock",
# "lamp"), compounds it splits ("teacup", "laptop", "supermarket"), and "carry", "wash", "pizza", "later",
# "slowly", "quietly". All are real words in CMUdict, read the same by espeak-ng, gruut and CMUdict, with no
# "on the" / "in the" (espeak-ng speaks and phonemizes each as one word, "ɔ n ð ə", so timings and G2P would lose
# a word). The corpus voices speak a sentence in 1.3-2.7 s (median 1.8 s, 95% within 2.3 s).
PHRASE_PEOPLE = ("friend", "family", "mother", "teacher", "sister", "parents", "children")
PHRASE_PLACES = ("castle", "city", "forest", "garden", "hotel", "market", "mountain", "museum", "office", "school",
                 "stadium", "station", "village", "island", "library", "restaurant", "park", "hospital")  # fmt: skip
PHRASE_OBJECTS = ("blanket", "camera", "candle", "coffee", "computer", "necklace", "sandwich", "table", "telephone",
                  "ticket", "window", "chocolate")  # fmt: skip
PHRASE_ANIMALS = ("monkey", "camel", "cow", "panda", "sheep", "octopus", "puppy", "elephant", "penguin", "tiger")
PHRASE_ADJECTIVES = ("beautiful", "friendly", "golden", "lovely", "fluffy", "fancy", "purple", "sweet", "small",
                     "wild", "little", "shiny")  # fmt: skip
PHRASE_VERBS = ("bring", "check", "clean", "find", "keep", "move", "open", "show", "take")
PHRASE_ADVERBS = ("again", "quickly", "soon", "tomorrow", "today", "carefully", "safely")  # after a request
PHRASE_PAST_ADVERBS = ("today", "again", "yesterday", "quickly", "safely", "together")  # after a past verb
PHRASE_TEMPLATES: tuple[tuple[tuple[str, ...], ...], ...] = (
    # "We went to the market yesterday."
    (("we",), ("went", "came"), ("to",), ("the",), PHRASE_PLACES, PHRASE_PAST_ADVERBS),
    # "My sister came to the library."
    (("my",), PHRASE_PEOPLE, ("went", "came"), ("to",), ("the",), PHRASE_PLACES),
    # "Please bring the camera tomorrow."
    (("please",), PHRASE_VERBS, ("the",), PHRASE_OBJECTS, PHRASE_ADVERBS),
    # "Take the ticket to the station."
    (("take",), ("the",), PHRASE_OBJECTS, ("to",), ("the",), PHRASE_PLACES),
    # "We saw the friendly panda again."
    (("we",), ("saw",), ("the",), PHRASE_ADJECTIVES, PHRASE_ANIMALS, PHRASE_PAST_ADVERBS),
    # "My mother found the candle yesterday."
    (("my",), PHRASE_PEOPLE, ("found",), ("the",), PHRASE_OBJECTS, PHRASE_PAST_ADVERBS),
)
PHRASE_TEMPLATE_SIZES = tuple(math.prod(len(slot) for slot in t) for t in PHRASE_TEMPLATES)
PHRASES_SIZE = sum(PHRASE_TEMPLATE_SIZES)


def phrase_sentence(index: int) -> str:
    """Phrase sentence number ``index`` (any int, taken modulo :data:`PHRASES_SIZE`), e.g. ``0`` -> "We went to
    the castle today.". The templates take consecutive index ranges; within one the index is read in mixed radix
    over its slots, the last varying fastest (as :func:`grid_sentence`)."""
    k, t = index % PHRASES_SIZE, 0
    while k >= PHRASE_TEMPLATE_SIZES[t]:
        k -= PHRASE_TEMPLATE_SIZES[t]
        t += 1
    words = []
    for slot in reversed(PHRASE_TEMPLATES[t]):
        k, j = divmod(k, len(slot))
        words.append(slot[j])
    text = " ".join(reversed(words))
    return text[0].upper() + text[1:] + "."


def clip_sentence(text: str, index: int) -> str:
    """Sentence ``index`` of the text source ``text`` (one of :data:`TEXTS`; the index is taken modulo its size)."""
    if text == "phrases":
        return phrase_sentence(index)
    if text == "grid":
        return grid_sentence(index)
    if text == "sentences":
        return SENTENCES[index % len(SENTENCES)]
    raise ValueError(f"text {text!r}: give one of {', '.join(TEXTS)}")


def num_sentences(text: str) -> int:
    """How many distinct sentences the text source ``text`` has."""
    return {"phrases": PHRASES_SIZE, "grid": GRID_SIZE, "sentences": len(SENTENCES)}[text]


def sentence_key(sentence: str) -> str:
    """The form a sentence is compared and hashed in: normalised, lower-case words, no punctuation."""
    text = normalize_text(sentence).lower()
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())


def sentence_split(sentence: str, split: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split ("train", "val" or "test") of ``sentence``: a stable hash (md5) of :func:`sentence_key` against the
    cumulative ``split`` fractions (train, val, test; normalised). The same text always lands in the same split."""
    total = float(sum(split))
    if len(split) != 3 or min(split) < 0 or total <= 0:
        raise ValueError(f"split {split}: give three non-negative fractions for train,val,test")
    u = int(hashlib.md5(sentence_key(sentence).encode()).hexdigest()[:12], 16) / float(1 << 48)
    edge = 0.0
    for name, share in zip(SPLITS, split, strict=True):
        edge += share / total
        if u < edge:
            return name
    return next(name for name, share in zip(reversed(SPLITS), reversed(split), strict=True) if share > 0)


# The text="sentences" source: short sentences (3-8 words) so that a clip of 2-4 s holds one; plain words, no digits.
SENTENCES: tuple[str, ...] = (
    "The red ball bounced twice.",
    "Please open the window.",
    "She sells bright blue boxes.",
    "A small dog ran home.",
    "We met by the old bridge.",
    "Bring me a cup of tea.",
    "The train leaves at noon.",
    "My brother plays the drums.",
    "Look at the yellow moon.",
    "The cat sleeps on the mat.",
    "Open the door slowly.",
    "Birds sing in the morning.",
    "He painted the fence green.",
    "Turn left at the corner.",
    "The music was very loud.",
    "Put the book on the shelf.",
    "I like warm bread.",
    "The wind blew all night.",
    "Call me after lunch.",
    "They walked along the beach.",
    "Mix the flour and water.",
    "A bell rang far away.",
    "The river is quite deep.",
    "Please sit down here.",
    "Watch the kettle boil.",
    "The lamp is too bright.",
    "We found a shiny coin.",
    "Keep your hands warm.",
    "The baby laughed again.",
    "Snow covered the garden.",
    "Where is my blue pen?",
    "The road was long and quiet.",
)

# Reference utterances: one speaker's voice on a DIFFERENT text than any clip.
REFERENCE_SENTENCES: tuple[str, ...] = (
    "Every morning I read the news before work.",
    "This is how my voice sounds on a calm day.",
    "A quick reference sentence for the speaker.",
    "Numbers and letters make up the whole message.",
)

# Distinct synthetic speakers: espeak-ng voice + variant, rate (words per minute), pitch (0-100). All speak American
# English, the accent of the G2P that gives the model its phonemes (en-us); the variants, rates and pitches make the
# voices. An accented voice says other phonemes than the model is given: with British, Scottish, Caribbean and
# Lancashire voices 7-15 % of the G2P's phonemes had no counterpart in what the voice said (0 % for American ones),
# those voices scored TTS WER 0.76-0.87 on unseen sentences against 0.2-0.4, and the prior's error on held-out clips
# was 0.42 against 0.32 with these voices (docs/experiments.md, session 6).
SPEAKERS: tuple[Voice, ...] = (
    Voice("en-us+m3", rate=165, pitch=40),
    Voice("en-us+f2", rate=150, pitch=65),
    Voice("en-us+m5", rate=175, pitch=35),
    Voice("en-us+f4", rate=155, pitch=72),
    Voice("en-us+m1", rate=160, pitch=50),
    Voice("en-us+f3", rate=170, pitch=60),
    Voice("en-us+Annie", rate=145, pitch=55),
    Voice("en-us+m2", rate=180, pitch=45),
)
