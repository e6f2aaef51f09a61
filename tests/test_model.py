"""The DiT, its condition encoders, batching and config: shapes, placements, absence, padding, errors."""

import itertools
import json

import numpy as np
import pytest
import torch

from vssflow.errors import ClipTooLongError, FeatureShapeError
from vssflow.model import (
    PAPER,
    PRESETS,
    TINY,
    ConditionBatch,
    ConditionDrop,
    Conditions,
    ModelConfig,
    VSSFlowDiT,
    collate,
)
from vssflow.model.conditions import sem_to_grid, spread_phonemes
from vssflow.types import ClipFeatures

torch.set_num_threads(1)

# A small config for the many combinations (same code paths as TINY, fewer channels).
SMALLEST = TINY.replace(
    depth=2, width=64, heads=2, cross_dim=32, latent_dim=16, sem_dim=12, speaker_dim=8, lip_dim=8, sync_dim=8
)


def make_clip(cfg: ModelConfig, duration: float, *, seed: int = 0, task: str = "tts", **absent) -> ClipFeatures:
    """A clip with every condition at the right rate; pass e.g. sem=None to leave one out."""
    rng = np.random.default_rng(seed)
    n_sem, n_lip = int(round(duration * 10)), int(round(duration * 25))
    lip = (
        rng.integers(0, 256, (n_lip, 32, 32), dtype=np.uint8)
        if cfg.lip_input == "crops"
        else rng.standard_normal((n_lip, cfg.lip_feature_dim)).astype(np.float32)
    )
    feats = dict(
        sem=rng.standard_normal((n_sem, cfg.sem_dim)).astype(np.float32),
        lip=lip,
        sync=rng.integers(0, 256, (n_lip, 32, 32), dtype=np.uint8),
        phonemes=rng.integers(1, cfg.phoneme_vocab, size=max(2, int(duration * 8))).astype(np.int16),
        speaker=rng.standard_normal(cfg.speaker_dim).astype(np.float32),
    )
    feats.update(absent)
    return ClipFeatures(duration_s=duration, task=task, **feats)


def randomised(model: VSSFlowDiT, seed: int = 0) -> VSSFlowDiT:
    """The zero-initialised output layer would make every output 0; give it weights so comparisons mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


# ---- config -------------------------------------------------------------------------------------------------------


def test_config_json_round_trip_and_unknown_key():
    for cfg in PRESETS.values():
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown key.*'widht'"):
        ModelConfig.from_dict({**TINY.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="sem_placement"):
        TINY.replace(sem_placement="concat")


def test_derived_sizes():
    assert TINY.context_dim == 256 + TINY.lip_dim + TINY.sync_dim + TINY.phoneme_dim
    assert TINY.replace(sem_placement="context", lip_placement="cross").context_dim == 256 + 32 + 32 + TINY.cross_dim
    assert TINY.replace(sync_placement="cross").context_dim == 256 + TINY.lip_dim + TINY.phoneme_dim
    assert PAPER.head_dim == 64 and PAPER.rope_dim == 32 and PAPER.kv_heads == 12 and PAPER.ff_inner == 6144
    assert TINY.max_frames == 250


# ---- presets ------------------------------------------------------------------------------------------------------


def test_paper_preset_size_and_shapes_on_meta_device():
    with torch.device("meta"):
        model = VSSFlowDiT(PAPER)
        b, n, m = 2, 250, 101
        conditions = Conditions(
            context=torch.zeros(b, n, PAPER.context_dim - PAPER.latent_dim),
            cross=torch.zeros(b, m, PAPER.cross_dim),
            cross_mask=torch.ones(b, m, dtype=torch.bool),
            frame_mask=torch.ones(b, n, dtype=torch.bool),
        )
        v = model.predict_flow(torch.zeros(b, n, PAPER.latent_dim), torch.zeros(b), conditions)
    assert v.shape == (b, n, PAPER.latent_dim)
    assert 0.40e9 < model.num_params() < 0.50e9  # the paper's backbone is ~0.46 B


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_preset_forward_shapes(name):
    cfg = PRESETS[name]
    model = VSSFlowDiT(cfg).eval()
    cond = collate([make_clip(cfg, 0.4), make_clip(cfg, 0.2, seed=1, task="v2s", lip=None, phonemes=None)], cfg)
    with torch.no_grad():
        v = model(torch.randn(2, 10, cfg.latent_dim), torch.rand(2), cond)
    assert v.shape == (2, 10, cfg.latent_dim) and torch.isfinite(v).all()


@pytest.mark.parametrize(
    "sem,phonemes,lip,time",
    list(itertools.product(["cross", "context"], ["cross", "context"], ["cross", "context"], ["token", "adaln"])),
)
def test_every_placement_and_time_conditioning(sem, phonemes, lip, time):
    cfg = SMALLEST.replace(sem_placement=sem, phoneme_placement=phonemes, lip_placement=lip, time_conditioning=time)
    model = randomised(VSSFlowDiT(cfg))
    cond = collate([make_clip(cfg, 1.0), make_clip(cfg, 0.6, seed=1, sem=None, speaker=None)], cfg)
    with torch.no_grad():
        c = model.preprocess_conditions(cond)
        v = model.predict_flow(torch.randn(2, 25, cfg.latent_dim), torch.rand(2), c)
    assert v.shape == (2, 25, cfg.latent_dim) and torch.isfinite(v).all()
    n_ctx = 0 if c.context is None else c.context.shape[-1]
    assert cfg.latent_dim + n_ctx == cfg.context_dim
    assert c.cross.shape[-1] == cfg.cross_dim and c.cross_mask[:, 0].all()  # the speaker token is always there
    assert (v[1, 15:] == 0).all()  # padded frames of the shorter clip carry no velocity
    # The conditions matter: another speaker changes the output of that clip only.
    other_speaker = make_clip(cfg, 1.0, speaker=np.ones(cfg.speaker_dim, np.float32))
    cond2 = collate([other_speaker, make_clip(cfg, 0.6, seed=1, sem=None, speaker=None)], cfg)
    x, t = torch.zeros(2, 25, cfg.latent_dim), torch.full((2,), 0.5)
    with torch.no_grad():
        v1 = model.predict_flow(x, t, c)
        v2 = model.predict_flow(x, t, model.preprocess_conditions(cond2))
    assert not torch.allclose(v1[0], v2[0]) and torch.allclose(v1[1], v2[1], atol=1e-6)


@pytest.mark.parametrize("placement", ["context", "cross"])
def test_sync_stream_is_read_per_frame(placement):
    """A change in the sync thumbnails around one moment changes the velocity there more than far from it."""
    cfg = SMALLEST.replace(sync_placement=placement, depth=1)
    model = randomised(VSSFlowDiT(cfg))
    clip = make_clip(cfg, 2.0, task="v2s", lip=None, phonemes=None, speaker=None,
                     sync=np.zeros((50, 32, 32), np.uint8))  # fmt: skip
    flash = make_clip(cfg, 2.0, task="v2s", lip=None, phonemes=None, speaker=None,
                      sync=np.zeros((50, 32, 32), np.uint8))  # fmt: skip
    flash.sync[10:12, 8:24, 8:24] = 255  # something bright appears at 0.40-0.48 s
    x, t = torch.zeros(1, 50, cfg.latent_dim), torch.full((1,), 0.5)
    with torch.no_grad():
        dv = (model(x, t, collate([flash], cfg)) - model(x, t, collate([clip], cfg))).abs().sum(-1)[0]  # (N,)
    assert dv.sum() > 0
    if placement == "context":  # one self-attention layer spreads it, but the frames themselves change most
        assert dv[10:13].mean() > 2 * dv[30:].mean(), dv
    # A model saved before the sync stream existed (config without sync_dim) ignores it.
    old = ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "sync_dim"})
    assert old.sync_dim == 0 and not hasattr(VSSFlowDiT(old).conditions, "sync_encoder")


def test_lip_features_input():
    cfg = SMALLEST.replace(lip_input="features", lip_feature_dim=20)
    model = randomised(VSSFlowDiT(cfg))
    cond = collate([make_clip(cfg, 0.8)], cfg)
    assert cond.lip.shape == (1, 20, 20) and cond.lip.dtype == torch.float32
    with torch.no_grad():
        assert model(torch.randn(1, 20, 16), torch.rand(1), cond).shape == (1, 20, 16)


# ---- absent conditions and dropout --------------------------------------------------------------------------------


def test_absent_conditions_use_learned_values_and_equal_dropout():
    cfg = SMALLEST
    model = randomised(VSSFlowDiT(cfg))
    full = make_clip(cfg, 0.8)
    bare = ClipFeatures(duration_s=0.8, task="v2s")  # nothing at all
    x, t = torch.randn(1, 20, 16), torch.full((1,), 0.3)
    with torch.no_grad():
        v_bare = model(x, t, collate([bare], cfg))
        v_full = model(x, t, collate([full], cfg))
        v_dropped = model(x, t, collate([full], cfg), ConditionDrop.all(1))
    assert torch.isfinite(v_bare).all() and not torch.allclose(v_bare, v_full)
    torch.testing.assert_close(v_dropped, v_bare, rtol=0, atol=1e-6)
    # Dropping one group is the same as not having it.
    for group in ("sem", "lip", "sync", "phonemes", "speaker"):
        drop = ConditionDrop.none(1)
        setattr(drop, group, torch.ones(1, dtype=torch.bool))
        without = make_clip(cfg, 0.8, **{group: None})
        with torch.no_grad():
            torch.testing.assert_close(model(x, t, collate([full], cfg), drop), model(x, t, collate([without], cfg)))
    # The absent values are parameters that training moves (not fixed zeros).
    assert model.conditions.absent_sem.requires_grad and model.conditions.absent_sem.abs().sum() > 0


def test_padding_does_not_change_the_valid_frames():
    cfg = SMALLEST.replace(sem_placement="context")
    model = randomised(VSSFlowDiT(cfg))
    clip = make_clip(cfg, 0.6)
    alone, padded = collate([clip], cfg), collate([clip], cfg, n_frames=40)
    assert padded.frame_mask.sum() == 15 and padded.lip.shape[1] == 40
    x = torch.randn(1, 40, 16)
    with torch.no_grad():
        v_alone = model(x[:, :15], torch.full((1,), 0.7), alone)
        v_padded = model(x, torch.full((1,), 0.7), padded)
    torch.testing.assert_close(v_padded[:, :15], v_alone, rtol=1e-5, atol=1e-5)


# ---- resampling to the latent grid --------------------------------------------------------------------------------


def test_phonemes_spread_uniformly_and_pad_with_none():
    ph = torch.tensor([[5, 6, 0, 0], [1, 2, 3, 0]])
    ids = spread_phonemes(ph, lengths=torch.tensor([2, 3]), n_frames=torch.tensor([4, 7]), n=8)
    assert ids.tolist() == [[5, 5, 6, 6, 0, 0, 0, 0], [1, 1, 1, 2, 2, 3, 3, 0]]
    # every phoneme gets floor or ceil of n_frames / L frames
    ids = spread_phonemes(torch.arange(1, 8)[None], torch.tensor([7]), torch.tensor([25]), 25)
    counts = torch.bincount(ids[0], minlength=8)[1:]
    assert counts.min() >= 3 and counts.max() <= 4 and counts.sum() == 25


def test_semantic_frames_map_to_the_latent_grid_by_time():
    sem = torch.arange(4.0)[None, :, None]  # (1, 4, 1): 0.4 s at 10 fps
    grid = sem_to_grid(sem, torch.tensor([4]), 12)
    assert grid[0, :, 0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3]  # frame j at j/25 s -> floor(j * 10 / 25)


# ---- collate and feature errors -----------------------------------------------------------------------------------


def test_collate_pads_and_marks_presence():
    cfg = SMALLEST
    clips = [make_clip(cfg, 1.0, task="tts"), make_clip(cfg, 0.4, seed=2, task="v2s", lip=None, phonemes=None)]
    cb = collate(clips, cfg)
    assert isinstance(cb, ConditionBatch) and cb.n_latent == 25 and cb.n_frames.tolist() == [25, 10]
    assert cb.sem.shape == (2, 10, 12) and cb.sem_lengths.tolist() == [10, 4]
    assert cb.lip_present.tolist() == [True, False] and cb.phonemes_present.tolist() == [True, False]
    assert cb.frame_mask.sum(1).tolist() == [25, 10] and cb.task_ids.tolist() == [1, 0]
    none = collate([ClipFeatures(duration_s=0.5)], cfg)
    assert none.sem is None and none.lip is None and not none.speaker_present.any()


SEM_MESSAGE = "sem: expected (T, 12) float at 10 fps for a 4.00 s clip (T=40), got (40, 768) float32"


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("sem", np.zeros((40, 768), np.float32), SEM_MESSAGE),
        ("sem", np.zeros((100, 12), np.float32), "got (100, 12) float32"),  # 25 fps given for 10 fps: wrong rate
        ("sem", np.zeros((40, 12), np.int64), "got (40, 12) int64"),
        ("lip", np.zeros((100, 32, 32), np.float32), "lip: expected (T, 32, 32) uint8 mouth crops at 25 fps"),
        ("lip", np.zeros((120, 32, 32), np.uint8), "got (120, 32, 32) uint8"),  # 30 fps
        ("lip", np.zeros((100, 64, 64), np.uint8), "got (100, 64, 64) uint8"),
        ("sync", np.zeros((100, 32, 32), np.float32), "sync: expected (T, 32, 32) uint8 frame thumbnails at 25 fps"),
        ("sync", np.zeros((40, 32, 32), np.uint8), "got (40, 32, 32) uint8"),  # 10 fps given for 25 fps
        ("phonemes", np.zeros((3, 2), np.int64), "phonemes: expected (P,) integer ids"),
        ("phonemes", np.array([1.0, 2.0]), "got (2,) float64"),
        ("phonemes", np.array([1, 999]), "got ids in [1, 999]"),
        ("speaker", np.zeros(192, np.float32), "speaker: expected (8,) float speaker embedding, got (192,) float32"),
    ],
)
def test_feature_shape_errors_are_one_line_and_name_the_field(field, value, expected):
    clip = make_clip(SMALLEST, 4.0, **{field: value})
    clip.meta["clip_id"] = "clip42"
    with pytest.raises(FeatureShapeError) as err:
        collate([clip], SMALLEST)
    msg = str(err.value)
    assert "\n" not in msg and expected in msg and msg.startswith(f"clip42: {field}:"), msg


def test_rate_tolerance_accepts_rounding_and_too_long_clip_is_refused():
    cfg = SMALLEST
    clip = make_clip(cfg, 4.0, sem=np.zeros((41, 12), np.float32), lip=np.zeros((99, 32, 32), np.uint8))
    cb = collate([clip], cfg)
    assert cb.sem_lengths.tolist() == [41] and cb.lip.shape[1] == 100
    with pytest.raises(ClipTooLongError, match="duration_s"):
        collate([ClipFeatures(duration_s=12.0)], cfg)
