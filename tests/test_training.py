"""The pure training step: padding invariance, dropout = absence, per-task metrics, overfitting one batch."""

import numpy as np
import pytest
import torch

from vssflow.errors import FeatureShapeError
from vssflow.model import TINY, VSSFlowDiT, collate
from vssflow.training import NO_DROPOUT, FlowConfig, TrainBatch, make_train_batch, sample_drop, training_step
from vssflow.types import ClipFeatures

torch.set_num_threads(1)

CFG = TINY.replace(
    depth=2, width=64, heads=2, cross_dim=32, latent_dim=16, sem_dim=12, speaker_dim=8, lip_dim=8,
    prior_inputs="phonemes",  # a speech prior: its loss on TTS clips only (the video-seeing one is in test_model)
)  # fmt: skip


def make_clip(duration: float, seed: int, task: str = "tts", cfg=CFG, **absent) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    feats = dict(
        sem=rng.standard_normal((int(round(duration * 10)), cfg.sem_dim)).astype(np.float32),
        lip=rng.integers(0, 256, (int(round(duration * 25)), 32, 32), dtype=np.uint8),
        phonemes=rng.integers(1, 60, size=6),
        speaker=rng.standard_normal(cfg.speaker_dim).astype(np.float32),
    )
    feats.update(absent)
    return ClipFeatures(duration_s=duration, task=task, **feats)


def latent(duration: float, seed: int, cfg=CFG) -> np.ndarray:
    shape = (int(round(duration * 25)), cfg.latent_dim)
    return np.random.default_rng(100 + seed).standard_normal(shape).astype(np.float32)


def model_with_output(seed: int = 0) -> VSSFlowDiT:
    torch.manual_seed(seed)
    model = VSSFlowDiT(CFG)
    with torch.no_grad():
        model.final.linear.weight.normal_(std=0.05)  # zero-initialised otherwise: v = 0 hides any bug
    return model


def grads(model: VSSFlowDiT) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_padded_frames_do_not_change_the_loss_or_gradients():
    clips = [make_clip(0.8, 0), make_clip(0.48, 1, task="v2s", lip=None, phonemes=None)]
    lats = [latent(0.8, 0), latent(0.48, 1)]
    tight = make_train_batch(lats, clips, CFG)
    padded_cond = collate(clips, CFG, n_frames=35)
    x1 = torch.zeros(2, 35, CFG.latent_dim)
    x1[:, :20] = tight.x1
    x1[1, 12:] = 5.0  # garbage beyond the second clip must not count
    x1[0, 20:] = -3.0
    padded = TrainBatch(x1=x1, cond=padded_cond)
    model = model_with_output()
    results = []
    for batch in (tight, padded):
        model.zero_grad()
        loss, metrics = training_step(model, batch, FlowConfig(), torch.Generator().manual_seed(11))
        loss.backward()
        results.append((loss.detach(), metrics, grads(model)))
    (l1, m1, g1), (l2, m2, g2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    assert m1.keys() == m2.keys() and abs(m1["loss/v2s"] - m2["loss/v2s"]) < 1e-5 * (1 + m1["loss/v2s"])
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


def test_metrics_per_task_average_to_the_loss():
    clips = [make_clip(0.4, 0, task="tts"), make_clip(0.8, 1, task="v2s"), make_clip(0.6, 2, task="joint")]
    batch = make_train_batch([latent(c.duration_s, i) for i, c in enumerate(clips)], clips, CFG)
    loss, metrics = training_step(model_with_output(), batch, NO_DROPOUT, torch.Generator().manual_seed(0))
    frames = batch.frame_mask.sum(1).tolist()
    weighted = sum(metrics[f"loss/{t}"] * n for t, n in zip(("tts", "v2s", "joint"), frames, strict=True))
    assert abs(weighted / sum(frames) - metrics["loss"]) < 1e-5  # "loss" is the flow loss, with or without a prior
    assert metrics["loss"] + metrics["loss/prior"] == pytest.approx(loss.item())  # prior_weight 1
    assert 0 < metrics["t_mean"] < 1


def test_dropout_masks_are_seeded_and_full_dropout_equals_absent_conditions():
    d1 = sample_drop(64, FlowConfig(), torch.Generator().manual_seed(5))
    d2 = sample_drop(64, FlowConfig(), torch.Generator().manual_seed(5))
    assert all(torch.equal(getattr(d1, g), getattr(d2, g)) for g in ("sem", "lip", "phonemes", "speaker"))
    assert not sample_drop(64, NO_DROPOUT, torch.Generator()).sem.any()
    everything = FlowConfig(p_uncond=1.0)
    assert sample_drop(8, everything, torch.Generator()).lip.all()
    # Dropping every condition trains the same thing as clips without conditions (the learned absent values). Not
    # with a phoneme prior: it is the flow's source, which sees the phonemes whatever the dropout (tested below).
    cfg = CFG.replace(prior_layers=0)
    full = [make_clip(0.6, 0)]
    bare = [ClipFeatures(duration_s=0.6, task="tts")]
    torch.manual_seed(0)
    model = VSSFlowDiT(cfg)
    with torch.no_grad():
        model.final.linear.weight.normal_(std=0.05)
    a, _ = training_step(
        model, make_train_batch([latent(0.6, 0)], full, cfg), everything, torch.Generator().manual_seed(1)
    )
    b, _ = training_step(
        model, make_train_batch([latent(0.6, 0)], bare, cfg), everything, torch.Generator().manual_seed(1)
    )
    c, _ = training_step(
        model, make_train_batch([latent(0.6, 0)], full, cfg), NO_DROPOUT, torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_latent_of_the_wrong_shape_is_refused():
    with pytest.raises(FeatureShapeError, match=r"latent: expected \(20, 16\)"):
        make_train_batch([np.zeros((20, 64), np.float32)], [make_clip(0.8, 0)], CFG)
    with pytest.raises(FeatureShapeError, match="got \\(40, 16\\)"):
        make_train_batch([np.zeros((40, 16), np.float32)], [make_clip(0.8, 0)], CFG)


def test_tiny_model_overfits_one_batch():
    # The real TINY preset. One batch = fixed latents, conditions, noise and times (the generator is re-seeded).
    clips = [make_clip(1.0, 0, cfg=TINY), make_clip(0.8, 1, "v2s", TINY, lip=None, phonemes=None, speaker=None)]
    batch = make_train_batch([latent(1.0, 0, TINY), latent(0.8, 1, TINY)], clips, TINY)
    torch.manual_seed(0)
    model = VSSFlowDiT(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(120):
        loss, _ = training_step(model, batch, NO_DROPOUT, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert min(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])


def test_the_phoneme_prior_regresses_onto_the_tts_clips():
    clips = [make_clip(0.8, 0, task="tts"), make_clip(0.6, 1, task="joint"), make_clip(0.4, 2, task="v2s")]
    batch = make_train_batch([latent(c.duration_s, i) for i, c in enumerate(clips)], clips, CFG)
    model = model_with_output()
    loss, metrics = training_step(model, batch, NO_DROPOUT, torch.Generator().manual_seed(0))
    # The prior term is the MSE of the prior's estimate on the TTS clip alone (not the joint clip, whose latent also
    # holds its sound, nor the V2S clip), on that clip's real frames.
    with torch.no_grad():
        prior = model.preprocess_conditions(batch.cond).prior  # (B, N, C)
    n = int(batch.frame_mask[0].sum())
    expected = ((prior[0, :n] - batch.x1[0, :n]) ** 2).mean()
    assert metrics["loss/prior"] == pytest.approx(float(expected), rel=1e-5)
    model.zero_grad()
    loss.backward()
    assert model.conditions.prior.out.weight.grad.abs().sum() > 0
    # The prior sees the phonemes whatever the CFG dropout (it is the flow's source, not a condition).
    _, m = training_step(model, batch, FlowConfig(p_uncond=1.0), torch.Generator().manual_seed(0))
    assert m["loss/prior"] == pytest.approx(metrics["loss/prior"], rel=1e-6)
    # A batch without TTS clips, or weight 0: no prior term.
    sub = make_train_batch([latent(c.duration_s, i + 1) for i, c in enumerate(clips[1:])], clips[1:], CFG)
    _, m = training_step(model, sub, NO_DROPOUT, torch.Generator().manual_seed(0))
    assert "loss/prior" not in m
    _, m = training_step(model, batch, FlowConfig(prior_weight=0.0), torch.Generator().manual_seed(0))
    assert "loss/prior" not in m
    with pytest.raises(ValueError, match="prior_weight"):
        FlowConfig(prior_weight=-1.0)


def test_the_prior_learns_the_sound_of_each_phoneme():
    # Two clips saying the same phonemes in a different order: the prior's estimate of each frame must follow its
    # phoneme (a per-frame lookup it can only learn from the phoneme ids), not the clip's average.
    cfg = CFG.replace(prior_layers=2, prior_dim=32)
    sounds = np.random.default_rng(0).standard_normal((8, cfg.latent_dim)).astype(np.float32)
    clips, lats = [], []
    for seed, order in enumerate(([1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1])):
        ids = np.repeat(order, 4)  # 28 frames, one phoneme per 4 frames (the clip layout spreads 7 over 28)
        clips.append(make_clip(1.12, seed, phonemes=np.array(order)))
        lats.append(sounds[ids])
    batch = make_train_batch(lats, clips, cfg)
    torch.manual_seed(0)
    model = VSSFlowDiT(cfg.replace(phoneme_layout="clip"))
    opt = torch.optim.AdamW(model.conditions.prior.parameters(), lr=1e-2)
    model.conditions.phoneme_emb.requires_grad_(True)
    opt.add_param_group({"params": list(model.conditions.phoneme_emb.parameters())})
    for _ in range(150):
        _, metrics = training_step(model, batch, NO_DROPOUT, torch.Generator().manual_seed(0))
        prior = model.preprocess_conditions(batch.cond).prior
        loss = ((prior - batch.x1) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["loss/prior"] < 0.1 * float(np.var(sounds)), metrics["loss/prior"]


def test_the_sampling_defaults_saved_with_a_model_follow_its_preset():
    from pipelines.train_loop import TrainJobConfig

    tiny = TrainJobConfig().sampling_config()
    # a data-predicting model with a prior: from mu itself, no guidance, rescaling if guided
    assert tiny.noise_scale == 0.0 and tiny.cfg_scale == 1.0 and tiny.cfg_rescale == 1.0
    velocity = TrainJobConfig(model_overrides={"prediction": "velocity"}).sampling_config()
    assert velocity.noise_scale == 0.5 and velocity.cfg_scale == 3.0  # a velocity prior model: nearer mu, guided
    paper = TrainJobConfig(preset="paper").sampling_config()
    assert paper.noise_scale == 1.0 and paper.cfg_rescale == 0.0 and paper.cfg_scale == 3.0  # the paper
    no_prior = TrainJobConfig(model_overrides={"prior_layers": 0, "prediction": "velocity"}).sampling_config()
    assert no_prior.noise_scale == 1.0
    assert TrainJobConfig.from_dict({"eval_cfg_scale": 2.0}).sampling_config().cfg_scale == 2.0  # an explicit scale
    assert tiny.gv_max_ratio == 3.0 and paper.gv_max_ratio == 1.0  # GV compensation: the small presets only


def test_a_data_predicting_model_learns_x1_with_a_plain_mse():
    # ModelConfig.prediction="data": the head predicts x1 (a residual on mu), the velocity is (x1_hat - x_t) / (1 - t),
    # and the loss is the error of x1_hat itself (the velocity error times 1 - t), not one weighing t -> 1 by
    # 1 / (1 - t)^2. Redraw the step's t, noise and dropout from the same seed and compare with x1_hat's MSE.
    from vssflow import flow
    from vssflow.training import sample_drop

    torch.manual_seed(0)
    model = VSSFlowDiT(CFG.replace(prediction="data"))
    with torch.no_grad():
        model.final.linear.weight.normal_(0, 0.2)
    clips = [make_clip(0.8, 0, task="tts"), make_clip(0.6, 1, task="tts")]
    batch = make_train_batch([latent(c.duration_s, i) for i, c in enumerate(clips)], clips, CFG)
    loss, metrics = training_step(model, batch, NO_DROPOUT, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    b, n, c = batch.x1.shape
    t = flow.sample_t(b, generator=g, schedule=NO_DROPOUT.t_schedule, mean=NO_DROPOUT.t_mean, std=NO_DROPOUT.t_std)
    x0 = flow.sample_noise((b, max(n, 250), c), generator=g)[:, :n]
    drop = sample_drop(b, NO_DROPOUT, g)
    with torch.no_grad():
        cond = model.preprocess_conditions(batch.cond, drop)
        x0 = x0 + cond.prior * batch.frame_mask[..., None]
        xt, _ = flow.path_sample(x0, batch.x1, t)
        v = model.predict_flow(xt, t, cond)
    assert (1 - t).min() > flow.T_CLAMP  # this seed's times are all above the clamp, where the identity is exact
    x1_hat = xt + v * (1 - t)[:, None, None]
    expected = flow.flow_loss(x1_hat, batch.x1, batch.frame_mask)
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-4)
