"""Rates and sizes shared by every part of vssflow (the data contract in numbers).

Audio follows the paper (AudioLDM-16k mel settings); the latent grid is 25 Hz, four mel frames per latent frame.
"""

SAMPLE_RATE = 16_000  # Hz, mono
N_FFT = 1024
WIN_LENGTH = 1024
HOP_LENGTH = 160  # 100 mel frames per second
N_MELS = 64
F_MIN = 0.0
F_MAX = 8_000.0
MEL_FPS = SAMPLE_RATE // HOP_LENGTH  # 100

LATENT_HZ = 25  # one latent frame per 4 mel frames (40 ms)
MEL_PER_LATENT = MEL_FPS // LATENT_HZ  # 4

SEM_FPS = 10  # semantic frame embeddings (CLIP / MobileNetV2)
LIP_FPS = 25  # mouth crops / sync features, same rate as the latent grid
LIP_SIZE = 32  # mouth crops are LIP_SIZE x LIP_SIZE uint8 grayscale
SYNC_FPS = 25  # visual sync stream (whole-frame thumbnails), same rate as the latent grid
SYNC_SIZE = 32  # sync thumbnails are SYNC_SIZE x SYNC_SIZE uint8 grayscale

SPEAKER_DIM = 256  # GE2E (Resemblyzer) speaker embedding

MAX_SECONDS = 10.0  # training window; longer clips are generated in overlapping windows
BUCKETS_S: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0)  # duration buckets of the shards (and compiled shapes)

TASKS = ("v2s", "tts", "joint")
SPEECH_TASKS = ("tts", "joint")  # tasks with a face, a transcript and a reference voice
SOUND_TASKS = ("v2s", "joint")  # tasks with sound effects
# the task of a request that names none, the same in the CLI, the HTTP API and the web page (inference.default_task)
DEFAULT_TASK = "joint with a transcript, else v2s"


def latent_frames(duration_s: float) -> int:
    """Number of 25 Hz latent frames that cover ``duration_s`` seconds (rounded to the nearest frame)."""
    return max(1, int(round(duration_s * LATENT_HZ)))
