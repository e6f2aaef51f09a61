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
from vssflow.model.config import PREDICTIONS
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
    prior = TINY.latent_dim  # the phoneme prior's estimate of the latent is in context too
    assert TINY.context_dim == TINY.latent_dim + TINY.lip_dim + TINY.sync_dim + TINY.phoneme_dim + prior
    assert (
        TINY.replace(sem_placement="context", lip_placement="cross").context_dim
        == TINY.latent_dim + 32 + 32 + TINY.cross_dim + prior
    )
    assert TINY.replace(sync_placement="cross").context_dim == TINY.latent_dim + TINY.lip_dim + TINY.phoneme_dim + prior
    assert PAPER.context_dim == PAPER.latent_dim + PAPER.lip_dim + PAPER.sync_dim + PAPER.phoneme_dim
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
    cfg = SMALLEST.replace(
        sem_placement=sem, phoneme_placement=phonemes, lip_placement=lip, time_conditioning=time,
        prior_layers=SMALLEST.prior_layers if phonemes == "context" else 0,  # the prior needs phonemes in context
    )  # fmt: skip
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
    torch.manual_seed(0)  # the init must not depend on what other test modules drew at collection
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
    # Without a phoneme prior: the prior is the flow's source and sees the phonemes whatever the dropout.
    cfg = SMALLEST.replace(prior_layers=0)
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


# ---- a full-rank output head -------------------------------------------------------------------------------------


def untouched_directions(x0: torch.Tensor, x1: torch.Tensor, n_frames: torch.Tensor, *, rel: float = 1e-6) -> int:
    """Latent directions in which the generated samples x1 (B, N, C) did not move from their noise x0: C minus the
    numerical rank of the displacements x1 - x0 over every real frame. An unreachable direction keeps a float32
    rounding residue (~4e-8 of the largest singular value); the weakest reachable one of a random tiny model had
    ~4e-5, hence the threshold between them."""
    rows = torch.cat([(x1 - x0)[i, : int(n)] for i, n in enumerate(n_frames)])  # (sum N, C)
    s = torch.linalg.svdvals(rows.double())
    return int(x1.shape[-1] - (s > rel * s[0]).sum())


def _sample_with_noise(gen, clips, seeds):
    """The generator's own sampling, and what the sample would be if the output head gave zero: for a velocity
    model the source it started from, the noise (drawn as it draws it: per clip, own seed) plus, with a phoneme
    prior, the prior's mean mu; for a data-predicting one (its x1 is mu + the head's residual) mu, or zero."""
    x1, n_frames, _ = gen.sample_latents(clips, seeds, steps=4, cfg=3.0)
    x0 = torch.zeros_like(x1)
    if gen.config.prediction == "velocity":
        for i, s in enumerate(seeds):
            n = int(n_frames[i])
            x0[i, :n] = torch.randn(n, gen.config.latent_dim, generator=torch.Generator().manual_seed(s))
    with torch.no_grad():
        prior = gen.model.preprocess_conditions(collate(clips, gen.config)).prior
    return (x0 if prior is None else x0 + prior), x1, n_frames


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_every_latent_direction_of_a_generated_sample_moves(name):
    from vssflow.generator import Generator

    cfg = PRESETS[name].replace(depth=1)  # the output head is what matters; one block keeps it fast
    gen = Generator(model=randomised(VSSFlowDiT(cfg)))
    clips = [make_clip(cfg, 4.0, seed=k, task=t) for k, t in enumerate(["tts", "v2s", "tts", "joint"])]
    x0, x1, n_frames = _sample_with_noise(gen, clips, [1, 2, 3, 4])  # 400 frames >= 256 channels
    assert untouched_directions(x0, x1, n_frames) == 0


def test_a_bottlenecked_output_head_is_caught():
    # What the old tiny preset did (width 128 -> 256 channels): here a rank-16 output layer on a 64-channel latent,
    # whichever the head predicts (velocity: the rest stays noise; data: the rest stays the prior's mu).
    for prediction in PREDICTIONS:
        _check_a_rank_16_head_is_caught(TINY.replace(depth=1, width=64, heads=2, cross_dim=64, latent_dim=64,
                                                     prediction=prediction))  # fmt: skip


def _check_a_rank_16_head_is_caught(cfg):
    from vssflow.generator import Generator

    model = randomised(VSSFlowDiT(cfg))
    with torch.no_grad():
        w = model.final.linear.weight  # (C, D)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        w.copy_(u[:, :16] @ torch.diag(s[:16]) @ vh[:16])
        model.final.linear.bias.zero_()
    x0, x1, n_frames = _sample_with_noise(
        Generator(model=model), [make_clip(cfg, 4.0, seed=k) for k in range(2)], [1, 2]
    )
    assert untouched_directions(x0, x1, n_frames) == 64 - 16


def test_config_refuses_a_latent_wider_than_the_model():
    with pytest.raises(ValueError, match="latent_dim 256 > width 128"):
        TINY.replace(latent_dim=256)
    for name, cfg in PRESETS.items():
        assert cfg.latent_dim <= cfg.width, name
    with pytest.raises(ValueError, match="LayerNorm"):  # LayerNorm centres each token: width - 1 directions
        TINY.replace(final_norm="layer")
    with pytest.raises(ValueError, match="latent_dim"):  # an old saved config is refused with the reason, not run
        ModelConfig.from_dict({**TINY.to_dict(), "latent_dim": 256})


# ---- phoneme layouts ---------------------------------------------------------------------------------------------


def test_layouts_put_each_phoneme_inside_the_span():
    from vssflow.model.conditions import layout_phonemes

    ids = torch.tensor([[11, 12, 13, 14, 0]])  # 4 phonemes, padded
    lengths, n_frames = torch.tensor([4]), torch.tensor([50])
    span = torch.tensor([[10.0, 30.0]])  # frames 10..29
    even = layout_phonemes(ids, lengths, n_frames, 52, span=span)[0]
    assert (even[:10] == 0).all() and (even[30:] == 0).all()  # silence outside the span
    for i, p in enumerate([11, 12, 13, 14]):  # phoneme i covers frames 10 + 5i .. 14 + 5i
        assert (even[10 + 5 * i : 15 + 5 * i] == p).all()
    by_duration = layout_phonemes(ids, lengths, n_frames, 52, span=span, durations=torch.tensor([[1.0, 2, 1, 0, 0]]))
    got = by_duration[0]
    assert (got[10:15] == 11).all() and (got[15:25] == 12).all() and (got[25:30] == 13).all()
    assert not (got == 14).any()  # a zero-duration symbol (a word boundary) takes no frame
    assert (got[:10] == 0).all() and (got[30:] == 0).all()


def test_layout_over_the_whole_clip_matches_the_paper_stretch_for_frame_level_ids():
    from vssflow.model.conditions import layout_phonemes

    frames = torch.randint(1, 50, (2, 40))  # one id per frame (what joint mixtures carry)
    lengths, n_frames = torch.tensor([40, 30]), torch.tensor([40, 30])
    span = torch.stack([torch.zeros(2), n_frames.float()], dim=1)
    laid = layout_phonemes(frames, lengths, n_frames, 40, span=span)
    np.testing.assert_array_equal(laid, spread_phonemes(frames, lengths, n_frames, 40))


@pytest.mark.parametrize("layout", ["clip", "span", "duration"])
def test_the_span_reaches_the_model_as_the_layout_says(layout):
    cfg = SMALLEST.replace(phoneme_layout=layout)
    model = randomised(VSSFlowDiT(cfg))
    clip = make_clip(cfg, 2.0, phonemes=np.array([20, 1, 30, 40], np.int16))
    a = ClipFeatures(**{**clip.__dict__, "speech_span": (0.4, 1.2), "phoneme_durations": np.array([1, 0, 1, 2.0])})
    b = ClipFeatures(**{**a.__dict__, "speech_span": (0.8, 1.6)})
    batch = collate([a, b], cfg)
    np.testing.assert_allclose(batch.speech_span, [[10, 30], [20, 40]])
    ids = model.conditions._phoneme_frames(batch, batch.n_latent)  # (2, 50)
    if layout == "clip":  # the paper: the span is ignored, phonemes cover the clip
        assert (ids[0] == ids[1]).all() and (ids[0] != 0).all()
    else:
        assert (ids[0, :10] == 0).all() and (ids[0, 30:] == 0).all() and (ids[0, 10:30] != 0).all()
        assert (ids[1, :20] == 0).all() and (ids[1, 20:40] != 0).all()
        assert (ids[0, 10:30] == ids[1, 20:40]).all()  # the same speech, moved with its span
        assert (1 in ids[0].tolist()) == (layout == "span")  # the boundary takes time only in the span layout
    with torch.no_grad():
        c = model.preprocess_conditions(batch)
    assert (c.context[0] != c.context[1]).any() == (layout != "clip")


def test_a_bad_speech_span_is_a_one_line_error():
    from vssflow.errors import InputError

    clip = make_clip(SMALLEST, 2.0)
    for span in [(1.5, 1.0), (-0.2, 1.0), (0.0, 3.0)]:
        with pytest.raises(InputError, match="speech_span") as e:
            collate([ClipFeatures(**{**clip.__dict__, "speech_span": span})], SMALLEST)
        assert "\n" not in str(e.value)


def test_the_phoneme_prior_is_a_switch_old_configs_lack():
    assert TINY.prior_layers > 0 and PRESETS["small"].prior_layers > 0 and PAPER.prior_layers == 0  # paper: none
    old = ModelConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k not in ("prior_layers", "prior_dim")})
    assert old.prior_layers == 0 and not hasattr(VSSFlowDiT(old).conditions, "prior")
    with pytest.raises(ValueError, match="phoneme_placement='context'"):
        TINY.replace(phoneme_placement="cross")
    assert TINY.replace(phoneme_placement="cross", prior_layers=0).prior_layers == 0
    # The flow starts from N(mu, I): an untrained DiT (zero output layer, v = 0) returns its source, noise + mu,
    # and mu follows the phonemes.
    from vssflow.errors import InputError
    from vssflow.generator import Generator
    from vssflow.sampling import SamplingConfig

    # a speech prior (V2S clips start from N(0, I)); a velocity head (a data head maps any source to mu: below)
    cfg = SMALLEST.replace(prior_inputs="phonemes", prediction="velocity")
    model = VSSFlowDiT(cfg).eval()
    gen = Generator(model=model)
    a = make_clip(cfg, 0.8)
    b = make_clip(cfg, 0.8, phonemes=np.array([3, 4, 5], np.int16))
    source, x1, _ = _sample_with_noise(gen, [a, b], [1, 1])
    noise = torch.stack([torch.randn(20, cfg.latent_dim, generator=torch.Generator().manual_seed(1))] * 2)
    with torch.no_grad():
        mu = model.preprocess_conditions(collate([a, b], cfg)).prior  # (2, 20, C)
    assert mu.shape == (2, 20, cfg.latent_dim) and not torch.allclose(mu[0], mu[1])
    torch.testing.assert_close(x1 - noise, mu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(source, x1)
    # noise_scale 0 (the temperature of the source) starts from mu itself.
    import dataclasses

    gen.sampling = dataclasses.replace(gen.sampling, noise_scale=0.0)
    x1_cold, _, _ = gen.sample_latents([a, b], [1, 1], steps=2, cfg=3.0)
    torch.testing.assert_close(x1_cold, mu, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="noise_scale"):
        SamplingConfig(noise_scale=-1.0)
    with torch.no_grad():  # padding the batch does not change a clip's mu
        padded = model.preprocess_conditions(collate([a], cfg, n_frames=40)).prior
    torch.testing.assert_close(padded[0, :20], mu[0], rtol=1e-5, atol=1e-6)
    assert (padded[0, 20:] == 0).all()
    with torch.no_grad():  # a clip without phonemes (V2S) starts from N(0, I), as in a model without a prior
        v2s = model.preprocess_conditions(collate([make_clip(cfg, 0.8, task="v2s", phonemes=None)], cfg))
    assert (v2s.prior == 0).all()


def test_a_prior_that_sees_the_video_estimates_every_clip_whatever_the_dropout():
    cfg = SMALLEST.replace(prior_inputs="all")
    model = randomised(VSSFlowDiT(cfg))
    v2s = make_clip(cfg, 0.8, task="v2s", phonemes=None, speaker=None)
    other_sem = make_clip(cfg, 0.8, task="v2s", phonemes=None, speaker=None, sem=np.ones((8, cfg.sem_dim), np.float32))
    with torch.no_grad():
        c = model.preprocess_conditions(collate([v2s, other_sem], cfg))
        dropped = model.preprocess_conditions(collate([v2s, other_sem], cfg), ConditionDrop.all(2))
    assert c.prior_keep.all() and (c.prior[0].abs().sum(-1) > 0).all()  # a V2S clip starts from its estimate
    assert not torch.allclose(c.prior[0], c.prior[1])  # which follows the video
    torch.testing.assert_close(dropped.prior, c.prior)  # and is the same for the unconditional branch
    with pytest.raises(ValueError, match="prior_inputs"):
        TINY.replace(prior_inputs="video")


def test_a_split_prior_estimates_speech_only_clips_without_the_video():
    # prior_inputs="split": TTS clips get the estimate of a second, video-blind prior (phonemes + speaker; with ~90
    # talking-face clips a prior that reads their video learns the clip, not the words); V2S and joint clips the
    # video-seeing one's. Each learns from its own clips only.
    cfg = SMALLEST.replace(prior_inputs="split")
    model = randomised(VSSFlowDiT(cfg))
    other = dict(sem=np.ones((8, cfg.sem_dim), np.float32), sync=np.full((20, 32, 32), 7, np.uint8))
    with torch.no_grad():
        for task, follows_video in (("tts", False), ("joint", True), ("v2s", True)):
            absent = {"phonemes": None, "speaker": None} if task == "v2s" else {}
            a, b = make_clip(cfg, 0.8, task=task, **absent), make_clip(cfg, 0.8, task=task, **absent, **other)
            c = model.preprocess_conditions(collate([a, b], cfg))
            assert c.prior_keep.all() and (c.prior[0].abs().sum(-1) > 0).all()
            assert (not torch.allclose(c.prior[0], c.prior[1])) == follows_video, task
    clips = [make_clip(cfg, 0.8, task="tts"), make_clip(cfg, 0.8, task="joint")]
    c = model.preprocess_conditions(collate(clips, cfg))
    c.prior[0].sum().backward()  # the TTS clip's estimate: the speech prior's alone
    assert model.conditions.speech_prior.out.weight.grad.abs().sum() > 0
    assert model.conditions.prior.out.weight.grad is None or model.conditions.prior.out.weight.grad.abs().sum() == 0


def test_a_video_seeing_prior_without_a_sync_stream_reads_the_semantics_alone():
    cfg = SMALLEST.replace(prior_inputs="all", sync_dim=0)
    model = randomised(VSSFlowDiT(cfg))
    with torch.no_grad():
        c = model.preprocess_conditions(collate([make_clip(cfg, 0.8, task="v2s", phonemes=None)], cfg))
    assert c.prior.shape == (1, 20, cfg.latent_dim) and torch.isfinite(c.prior).all()


def test_the_priors_dropout_acts_only_while_training():
    cfg = SMALLEST.replace(prior_inputs="phonemes", prior_dropout=0.5)
    model = randomised(VSSFlowDiT(cfg))
    batch = collate([make_clip(cfg, 0.8)], cfg)
    with torch.no_grad():
        model.eval()
        a, b = (model.preprocess_conditions(batch).prior for _ in range(2))
        model.train()
        c, d = (model.preprocess_conditions(batch).prior for _ in range(2))
    torch.testing.assert_close(a, b)  # generation: deterministic
    assert not torch.allclose(c, d) and not torch.allclose(a, c)  # training: a fresh mask each pass
    assert VSSFlowDiT(SMALLEST.replace(prior_inputs="phonemes")).state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="prior_dropout"):
        TINY.replace(prior_dropout=1.0)


def test_a_data_predicting_dit_starts_as_its_prior():
    # ModelConfig.prediction="data": the head predicts x1 as a residual on mu, so an untrained DiT (zero head) maps
    # any source to mu itself (the last Euler step lands on x1_hat), where a velocity DiT returns its noisy source.
    import dataclasses

    from vssflow.generator import Generator

    for cfg in (SMALLEST.replace(prediction="data"), SMALLEST.replace(prediction="data", prior_layers=0)):
        model = VSSFlowDiT(cfg).eval()
        gen = Generator(model=model)
        gen.sampling = dataclasses.replace(gen.sampling, noise_scale=1.0)
        clips = [make_clip(cfg, 0.8), make_clip(cfg, 0.8, phonemes=np.array([3, 4, 5], np.int16))]
        x1, _, _ = gen.sample_latents(clips, [1, 2], steps=4, cfg=3.0)
        with torch.no_grad():
            mu = model.preprocess_conditions(collate(clips, cfg)).prior
        expected = torch.zeros_like(x1) if mu is None else mu
        torch.testing.assert_close(x1, expected, rtol=1e-5, atol=1e-5)
        if mu is not None:  # and mu follows the phonemes: not a constant
            assert not torch.allclose(mu[0], mu[1])
    with pytest.raises(ValueError, match="prediction"):
        SMALLEST.replace(prediction="noise")
    assert PAPER.prediction == "velocity"  # the paper predicts the velocity
    old = ModelConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "prediction"})
    assert old.prediction == "velocity"  # a model saved before the switch predicted the velocity
