"""The fixed text of the embedded corpus: clip sentences, reference sentences (never used in clips), speakers.

Short sentences (3-8 words) so that a clip of 2-4 s holds one; plain words, no digits, so every G2P agrees.
"""

from vssflow.synth.espeak import Voice

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

# Distinct synthetic speakers: espeak-ng voice + variant, rate (words per minute), pitch (0-100).
SPEAKERS: tuple[Voice, ...] = (
    Voice("en-us+m3", rate=165, pitch=40),
    Voice("en+f2", rate=150, pitch=65),
    Voice("en-gb-scotland+m5", rate=175, pitch=35),
    Voice("en-us+f4", rate=155, pitch=72),
    Voice("en-029+m1", rate=160, pitch=50),
    Voice("en-gb-x-rp+f3", rate=170, pitch=60),
    Voice("en-us+Annie", rate=145, pitch=55),
    Voice("en-gb-x-gbclan+m2", rate=180, pitch=45),
)
