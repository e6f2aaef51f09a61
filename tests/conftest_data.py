"""Small real data and models the tests build for themselves (no fixture comes from bench/).

* :func:`make_toy_shards`: a small but real shard set (synthesized event sounds placed at visual events, espeak-ng
  speech with its phonemes, mouth crops following the speech envelope) written through the schema module, for tests
  that need shards without a ``vssflow preprocess`` run;
* :func:`make_tiny_serving_model`: an untrained generator with a 1-layer CLIP encoder, for Serve and batch tests;
* :func:`random_features` / :func:`features_npz`: a clip's features and the ``.npz`` body Serve accepts.

Imported by name from the tests (as ``conftest_media``); ``bench/`` imports them from here too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from vssflow.audio.mel import log_mel
from vssflow.constants import LIP_FPS, SAMPLE_RATE, SEM_FPS, SPEAKER_DIM
from vssflow.data.schema import build_schema, features_to_row, file_metadata, rows_to_table
from vssflow.data.shards import ShardManifest, config_hash, set_latest, shard_name, version_dir, write_table_atomic
from vssflow.types import ClipFeatures

TOY_SEM_DIM = 32
TOY_MODEL = {"depth": 2, "width": 64, "heads": 2, "cross_dim": 64, "latent_dim": 64, "sem_dim": TOY_SEM_DIM,
             "lip_dim": 16, "phoneme_dim": 16, "time_freq_dim": 64}  # fmt: skip
SENTENCES = ("the red ball bounces", "a bell rings twice", "open the blue door", "we hear a drum", "say hello now",
             "the key clicks", "tap the wood block", "ring the small bell")  # fmt: skip


def v2s_clip(rng: np.random.Generator, idx: int, duration: float) -> ClipFeatures:
    from vssflow.synth.sounds import CLASS_NAMES, synth_sound

    n = int(duration * SAMPLE_RATE)
    audio = np.zeros(n, np.float32)
    t_sem = int(round(duration * SEM_FPS))
    sem = rng.normal(0, 0.05, (t_sem, TOY_SEM_DIM)).astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(len(CLASS_NAMES)))
        onset = float(rng.uniform(0.0, duration - 0.3))
        s = synth_sound(CLASS_NAMES[k])[: n - int(onset * SAMPLE_RATE)]
        audio[int(onset * SAMPLE_RATE) : int(onset * SAMPLE_RATE) + len(s)] += 0.5 * s
        f = int(onset * SEM_FPS)
        sem[f : f + 2, 4 * k : 4 * k + 4] += 1.0  # the "visual event": the object's class lights up at the impact
    return ClipFeatures(duration_s=duration, task="v2s", sem=sem, mel=log_mel(audio),
                        meta={"clip_id": f"v2s-{idx:04d}", "split": "train"})  # fmt: skip


def _espeak(text: str, *, pitch: int, rate: int) -> tuple[np.ndarray, str]:
    """16 kHz speech and its IPA string from the espeak-ng command line."""
    import subprocess
    import tempfile

    import soundfile as sf
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-p", str(pitch), "-s", str(rate), "-w", str(wav), text], check=True)
        audio, sr = sf.read(wav, dtype="float32")
    ipa = subprocess.run(["espeak-ng", "-q", "--ipa", text], check=True, capture_output=True, text=True).stdout
    return resample_poly(audio, SAMPLE_RATE // 50, sr // 50).astype(np.float32), ipa.strip()


def tts_clip(rng: np.random.Generator, idx: int, duration: float) -> ClipFeatures:
    pitch, rate = int(rng.integers(20, 80)), int(rng.integers(150, 200))
    speech_audio, ipa = _espeak(SENTENCES[idx % len(SENTENCES)], pitch=pitch, rate=rate)
    n = int(duration * SAMPLE_RATE)
    audio = np.zeros(n, np.float32)
    a = speech_audio[:n]
    audio[: len(a)] = a
    t_lip = int(round(duration * LIP_FPS))
    env = np.array([np.abs(audio[i * 640 : (i + 1) * 640]).mean() for i in range(t_lip)])
    openness = np.clip(env / (env.max() + 1e-6), 0, 1)
    yy, xx = np.mgrid[:32, :32]
    lip = np.stack([(((xx - 16) / 10) ** 2 + ((yy - 16) / (1 + 8 * o)) ** 2 < 1) * 200 + 30 for o in openness])
    phon = np.array([1 + (ord(ch) % 60) for ch in ipa if not ch.isspace() and ch not in "ˈˌ"], np.int16)
    spk = np.random.default_rng(pitch).normal(size=SPEAKER_DIM).astype(np.float32)
    sem = np.tile(rng.normal(0, 0.05, (1, TOY_SEM_DIM)), (int(round(duration * SEM_FPS)), 1)).astype(np.float32)
    sem[:, -4:] += 1.0  # "a talking face"
    return ClipFeatures(duration_s=duration, task="tts", sem=sem, lip=lip.astype(np.uint8), phonemes=phon,
                        speaker=spk / np.linalg.norm(spk), mel=log_mel(audio),
                        meta={"clip_id": f"tts-{idx:04d}", "split": "train",
                              "transcript": SENTENCES[idx % len(SENTENCES)]})  # fmt: skip


def make_toy_shards(
    out: str | os.PathLike, *, n_v2s: int = 24, n_tts: int = 24, n_val: int = 2, duration: float = 2.0, seed: int = 0
) -> Path:
    """Write a small real shard set (one shard per task, plus val rows) and return its version directory."""
    rng = np.random.default_rng(seed)
    cfg = {"toy": True, "n_v2s": n_v2s, "n_tts": n_tts, "duration": duration, "seed": seed}
    h = config_hash(cfg)
    vdir = version_dir(out, h)
    manifest = ShardManifest(vdir, config_hash=h, config=cfg)
    clips = {
        "v2s": [v2s_clip(rng, i, duration) for i in range(n_v2s + n_val)],
        "tts": [tts_clip(rng, i, duration) for i in range(n_tts + n_val)],
    }
    for task, items in clips.items():
        for c in items[-n_val:] if n_val else []:
            c.meta["split"] = "val"
        md = file_metadata(config_hash=h, config=cfg, extractors={"toy": {"model": "toy"}},
                           created_at=time.strftime("%Y-%m-%dT%H:%M:%S"), task=task, bucket_s=duration)  # fmt: skip
        schema = build_schema(sem_dim=TOY_SEM_DIM, lip_dim=0, metadata=md)
        table = rows_to_table([features_to_row(c) for c in items], schema)
        entry = write_table_atomic(table, vdir / shard_name(task, duration, [c.meta["clip_id"] for c in items]),
                                   row_group_rows=8)  # fmt: skip
        manifest.add({**entry, "task": task, "bucket_s": duration})
    manifest.save()
    set_latest(out, vdir)
    return vdir


# ---- a tiny serving model and request bodies ----------------------------------------------------------------------

TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8}  # fmt: skip


def wake(model, seed: int = 0, scale: float = 0.05) -> None:
    """Give zero-initialised layers (adaLN-Zero, output head) small random weights, so an untrained model's output
    depends on its conditions (a freshly initialised DiT predicts v = 0 whatever it is given)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def make_tiny_serving_model(
    directory: str | os.PathLike, *, model_overrides: dict | None = None, steps: int = 4
) -> Path:
    """Write a tiny generator for Serve tests and benches: a 1-layer CLIPVisionModel (32-d, saved next to the model
    and recorded in ``info["extractors"]``) and a small DiT with ``sem_dim`` = 32. Returns the model directory."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vssflow.generator import Generator
    from vssflow.model import ModelConfig
    from vssflow.sampling import SamplingConfig

    directory = Path(directory)
    clip_dir = directory.with_name(directory.name + "-clip")
    CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(clip_dir)
    kw = dict(depth=1, width=32, heads=2, cross_dim=32, sem_dim=TINY_CLIP["hidden_size"], lip_dim=8, phoneme_dim=8,
              max_seconds=4.0)  # fmt: skip
    kw.update(model_overrides or {})
    kw.setdefault("latent_dim", min(kw["width"], ModelConfig().latent_dim))  # ModelConfig refuses latent > width
    gen = Generator(ModelConfig(**kw), sampling=SamplingConfig(steps=steps, cfg_scale=2.0))
    wake(gen.model)
    extractors = {"encoder": str(clip_dir.resolve()), "speaker_encoder": "resemblyzer", "g2p_backend": "espeak",
                  "lips": True}  # fmt: skip
    return gen.save_pretrained(directory, extractors=extractors)


def features_npz(features) -> bytes:
    """ClipFeatures -> the .npz body of ``POST /v1/generate/features``."""
    from vssflow.data.features_file import features_to_npz

    return features_to_npz(features)


def random_features(sem_dim: int, duration: float = 2.0, task: str = "v2s", seed: int = 0):
    """A clip's features with random values (what a client that preprocessed would send)."""
    rng = np.random.default_rng(seed)
    f = ClipFeatures(duration_s=duration, task=task,
                     sem=rng.standard_normal((round(duration * SEM_FPS), sem_dim)).astype(np.float32))  # fmt: skip
    if task != "v2s":
        f.lip = rng.integers(0, 255, (round(duration * LIP_FPS), 32, 32), dtype=np.uint8)
        f.phonemes = rng.integers(1, 60, 20).astype(np.int16)
        spk = rng.standard_normal(256).astype(np.float32)
        f.speaker = spk / np.linalg.norm(spk)
    return f
