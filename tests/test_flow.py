"""Flow matching math: path, masked loss, time sampling, guidance, ODE solvers (exact on analytic fields), seeds."""

import math

import numpy as np
import pytest
import torch

from vssflow import flow
from vssflow.model import TINY, ConditionDrop, Conditions, VSSFlowDiT, collate
from vssflow.types import ClipFeatures

torch.set_num_threads(1)


def test_linear_path_and_target():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt, target = flow.path_sample(x0, x1, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], x1[2])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * x1[1])
    assert torch.equal(target, x1 - x0)


def test_loss_ignores_padded_frames_and_averages_valid_elements():
    g = torch.Generator().manual_seed(1)
    v, target = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    loss = flow.flow_loss(v, target, mask)
    expected = torch.cat([((v - target) ** 2)[0, :4].flatten(), ((v - target) ** 2)[1].flatten()]).mean()
    torch.testing.assert_close(loss, expected)
    v2 = v.clone()
    v2[0, 4:] += 100.0  # garbage in the padding changes nothing
    assert torch.equal(flow.flow_loss(v2, target, mask), loss)
    per_sample = flow.masked_mse(v2, target, mask)
    torch.testing.assert_close(per_sample[0], ((v - target) ** 2)[0, :4].mean())


def test_time_sampling_is_seeded_and_in_range():
    for schedule in flow.T_SCHEDULES:
        a = flow.sample_t(1000, generator=torch.Generator().manual_seed(3), schedule=schedule)
        b = flow.sample_t(1000, generator=torch.Generator().manual_seed(3), schedule=schedule)
        assert torch.equal(a, b) and a.shape == (1000,) and (a > 0).all() and (a < 1).all()
    ln = flow.sample_t(4000, generator=torch.Generator().manual_seed(0), schedule="logit_normal")
    un = flow.sample_t(4000, generator=torch.Generator().manual_seed(0), schedule="uniform")
    assert abs(float(ln.median()) - 0.5) < 0.03 and float((ln - 0.5).abs().mean()) < float((un - 0.5).abs().mean())
    with pytest.raises(ValueError, match="schedule"):
        flow.sample_t(2, generator=torch.Generator(), schedule="cosine")


# ---- solvers on analytic velocity fields ---------------------------------------------------------------------------


def test_euler_is_exact_for_a_constant_field():
    x0, c = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    for method in flow.METHODS:
        x1, nfe = flow.sample(lambda x, t: c, x0, steps=7, method=method)
        torch.testing.assert_close(x1, x0 + c, rtol=1e-6, atol=1e-6)
        # dopri5: a constant field's error estimate is rounding only (float64), so the step grows tenfold: 1/7,
        # then the remaining 6/7 (2 steps x 6 stages + the first evaluation)
        assert nfe == {"euler": 7, "midpoint": 14, "dopri5": 13}[method]


def test_midpoint_and_dopri5_are_exact_for_a_time_polynomial_field():
    # dx/dt = a + b t  ->  x(1) = x0 + a + b / 2   (midpoint is exact for linear-in-t fields; Euler is not)
    x0, a, b = torch.randn(2, 3, 4, dtype=torch.float64), 1.5, -2.0

    def v(x, t):
        return (a + b * t)[:, None, None].to(x.dtype).expand_as(x)

    exact = x0 + a + b / 2
    for method in ("midpoint", "dopri5"):
        x1, _ = flow.sample(v, x0, steps=3, method=method)
        torch.testing.assert_close(x1, exact, rtol=1e-12, atol=1e-12)
    x1_euler, _ = flow.sample(v, x0, steps=3, method="euler")
    assert (x1_euler - exact).abs().max() > 0.1
    # dopri5 is 5th order: exact for t^4 as well  ->  x(1) = x0 + 1/5
    x1, _ = flow.sample(lambda x, t: (t**4)[:, None, None].to(x.dtype).expand_as(x), x0, steps=2, method="dopri5")
    torch.testing.assert_close(x1, x0 + 0.2, rtol=1e-12, atol=1e-12)


def test_linear_ode_accuracy_and_adaptivity():
    # dx/dt = -k x  ->  x(1) = x0 exp(-k)
    x0 = torch.randn(2, 8, 3, dtype=torch.float64)
    exact = x0 * math.exp(-3.0)

    def v(x, t):
        return -3.0 * x

    x_d, nfe_loose = flow.sample(v, x0, steps=10, method="dopri5", atol=1e-4, rtol=1e-4)
    x_d_tight, nfe_tight = flow.sample(v, x0, steps=10, method="dopri5", atol=1e-9, rtol=1e-9)
    assert (x_d_tight - exact).abs().max() < 1e-8 and nfe_tight > nfe_loose
    assert (x_d - exact).abs().max() < 1e-3
    # midpoint converges at second order: halving h divides the error by ~4
    err = [(flow.sample(v, x0, steps=s, method="midpoint")[0] - exact).abs().max().item() for s in (16, 32)]
    assert 3.5 < err[0] / err[1] < 4.5
    with pytest.raises(ValueError, match="ODE method"):
        flow.sample(v, x0, method="rk4")


def test_dopri5_steps_each_sample_on_its_own_error_not_its_batch_mates_or_padding():
    # dx/dt = -k_b x: a stiff sample (k = 40) needs many more steps than a gentle one (k = 1). Alone, the gentle
    # sample takes few steps; batched with the stiff one and padded (the padding's own field is stiffer still), it
    # must take exactly the same steps, so it ends at the same x (bit for bit: its rows see the same arithmetic).
    g = torch.Generator().manual_seed(0)
    gentle, stiff = torch.randn(1, 4, 3, generator=g, dtype=torch.float64), torch.randn(1, 6, 3, dtype=torch.float64)
    x0 = torch.zeros(2, 6, 3, dtype=torch.float64)
    x0[0, :4], x0[1] = gentle[0], stiff[0]
    x0[0, 4:] = 1.0  # padding the norm must not see
    k = torch.tensor([1.0, 40.0], dtype=torch.float64)[:, None, None].expand(2, 6, 3).clone()
    k[0, 4:] = 200.0
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
    calls_t = []

    def v(x, t):
        calls_t.append(t.clone())
        return -k[: x.shape[0], : x.shape[1]] * x

    alone, nfe_alone = flow.dopri5(v, gentle, atol=1e-6, rtol=1e-6)
    t_alone = [t[0].item() for t in calls_t]
    calls_t.clear()
    batched, nfe_batched = flow.dopri5(v, x0, mask=mask, atol=1e-6, rtol=1e-6)
    assert nfe_batched > nfe_alone  # the stiff sample kept stepping ...
    assert [t[0].item() for t in calls_t][:nfe_alone] == t_alone  # ... and the gentle one took its own steps
    torch.testing.assert_close(batched[0, :4], alone[0], rtol=0, atol=0)
    torch.testing.assert_close(alone[0], gentle[0] * math.exp(-1.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], stiff[0] * math.exp(-40.0), rtol=1e-4, atol=1e-6)


# ---- guidance ----------------------------------------------------------------------------------------------------


def _clip(duration: float, seed: int) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    return ClipFeatures(
        duration_s=duration,
        task="tts",
        sem=rng.standard_normal((int(duration * 10), TINY.sem_dim)).astype(np.float32),
        phonemes=np.array([3, 9, 4, 7]),
        speaker=rng.standard_normal(TINY.speaker_dim).astype(np.float32),
    )


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = VSSFlowDiT(TINY).eval()
    with torch.no_grad():
        model.final.linear.weight.normal_(std=0.05)  # zero-initialised: make the outputs non-trivial
    return model


def test_cfg_scale_one_is_the_conditional_output_exactly(tiny_model):
    cond = collate([_clip(1.0, 0)], TINY)
    with torch.no_grad():
        c = tiny_model.preprocess_conditions(cond)
        u = tiny_model.preprocess_conditions(cond, ConditionDrop.all(1))

        def cond_fn(x, t):
            return tiny_model.predict_flow(x, t, c)

        def uncond_fn(x, t):
            return tiny_model.predict_flow(x, t, u)

        x, t = torch.randn(1, 25, TINY.latent_dim), torch.full((1,), 0.4)
        assert torch.equal(flow.cfg_velocity(cond_fn, uncond_fn, 1.0)(x, t), cond_fn(x, t))
        v_c, v_u = cond_fn(x, t), uncond_fn(x, t)
        assert not torch.allclose(v_c, v_u)
        guided = flow.cfg_velocity(cond_fn, uncond_fn, 3.0)(x, t)
        torch.testing.assert_close(guided, v_u + 3.0 * (v_c - v_u))
        # one doubled-batch call gives the same guided velocity
        both = Conditions.cat([c, u])

        def joint(x2, t2):
            return tiny_model.predict_flow(x2, t2, both)

        torch.testing.assert_close(flow.cfg_velocity_batched(joint, cond_fn, 3.0)(x, t), guided, rtol=1e-5, atol=1e-5)
        assert torch.equal(flow.cfg_velocity_batched(joint, cond_fn, 1.0)(x, t), cond_fn(x, t))


@pytest.mark.parametrize("method", flow.METHODS)
def test_same_seed_gives_the_same_sample_bit_for_bit(tiny_model, method):
    cond = collate([_clip(0.8, 1), _clip(0.4, 2)], TINY)

    def run(seed: int) -> torch.Tensor:
        with torch.no_grad():
            c = tiny_model.preprocess_conditions(cond)
            u = tiny_model.preprocess_conditions(cond, ConditionDrop.all(2))
            fn = flow.cfg_velocity(
                lambda x, t: tiny_model.predict_flow(x, t, c), lambda x, t: tiny_model.predict_flow(x, t, u), 3.0
            )
            x0 = flow.sample_noise((2, cond.n_latent, TINY.latent_dim), generator=torch.Generator().manual_seed(seed))
            return flow.sample(fn, x0, steps=4, method=method, atol=1e-3, rtol=1e-3)[0]

    a, b, other = run(7), run(7), run(8)
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert torch.isfinite(a).all()


def test_rescaled_guidance_keeps_the_conditional_level_and_the_guided_direction():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 30, 8, generator=g), torch.tensor([0.3, 0.7])
    v_c, v_u = torch.randn(2, 30, 8, generator=g) * 2, torch.randn(2, 30, 8, generator=g)
    joint = lambda xx, tt: torch.cat([v_c, v_u])  # noqa: E731
    plain = flow.cfg_velocity_batched(joint, lambda xx, tt: v_c, 3.0)(x, t)
    torch.testing.assert_close(flow.cfg_velocity_batched(joint, lambda xx, tt: v_c, 3.0, rescale=0.0)(x, t), plain)
    full = flow.cfg_velocity_batched(joint, lambda xx, tt: v_c, 3.0, rescale=1.0)(x, t)
    one_minus_t = (1 - t)[:, None, None]
    x1_c, x1_plain, x1_full = x + one_minus_t * v_c, x + one_minus_t * plain, x + one_minus_t * full
    rms = lambda a: a.pow(2).mean((1, 2)).sqrt()  # noqa: E731
    torch.testing.assert_close(rms(x1_full), rms(x1_c))  # the conditional level
    assert (rms(x1_plain) > 1.2 * rms(x1_c)).all()  # plain guidance overshoots it
    cos = torch.nn.functional.cosine_similarity(x1_full.flatten(1), x1_plain.flatten(1))
    torch.testing.assert_close(cos, torch.ones(2))  # and points where plain guidance points
    half = flow.cfg_velocity_batched(joint, lambda xx, tt: v_c, 3.0, rescale=0.5)(x, t)
    torch.testing.assert_close(half, 0.5 * (plain + full))
