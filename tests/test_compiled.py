"""CompiledFlow: the DiT compiled at bucket shapes gives eager generation's output."""

import numpy as np
import pytest
import torch

from vssflow import Generator
from vssflow.audio import log_mel
from vssflow.compiled import TOKEN_MULTIPLE, CompiledFlow, bucket_of, frame_buckets
from vssflow.model import ModelConfig
from vssflow.types import ClipFeatures

CFG = ModelConfig(depth=2, width=64, heads=4, cross_dim=64, sem_dim=32, lip_dim=16, max_seconds=4.0, latent_dim=64)


def _clip(duration: float, seed: int = 0) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    return ClipFeatures(duration_s=duration, task="v2s", sem=rng.standard_normal((int(round(duration * 10)), 32)))


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    g = Generator(CFG)
    for p in g.model.parameters():  # non-zero output weights, so the conditions reach the latents
        if p.abs().sum() == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.02)
    return g


def _inductor_unavailable() -> str | None:
    """Why inductor cannot build a kernel on this machine (no C++ compiler, ...), or None when it can."""
    try:
        torch.compile(lambda x: x * 2 + 1, dynamic=False)(torch.ones(3))
    except Exception as e:  # noqa: BLE001 - the reason is what the skip reports
        return f"torch.compile (inductor) cannot build on this machine: {type(e).__name__}: {str(e).splitlines()[0]}"
    return None


def test_frame_buckets_are_the_training_buckets_within_the_window():
    assert frame_buckets(250) == (50, 100, 150, 200, 250)  # 2..10 s at 25 Hz
    assert frame_buckets(100) == (50, 100)  # a 4 s model window
    assert frame_buckets(80) == (50, 80)  # the window itself is the last bucket
    assert [bucket_of(n, (50, 100)) for n in (1, 50, 51, 100, 120)] == [50, 50, 100, 100, 120]


def test_padding_to_the_bucket_does_not_change_a_clip_velocity(gen):
    """Traced with dynamo's eager backend (no compiler): calls at 30, 40 and 50 frames are one shape."""
    from vssflow.model import collate

    flow = CompiledFlow(gen.model, backend="eager")
    with torch.no_grad():
        for d in (1.2, 1.6, 2.0):
            cond = collate([_clip(d, 1), _clip(d, 2)], CFG)
            conditions = gen.model.preprocess_conditions(cond)
            x = torch.randn(2, cond.n_latent, CFG.latent_dim)
            t = torch.tensor([0.3, 0.7])
            torch.testing.assert_close(flow(x, t, conditions), gen.model.predict_flow(x, t, conditions))
    assert flow.shapes == {(2, 50, TOKEN_MULTIPLE)}


def test_compiled_generation_equals_eager_generation(gen):
    reason = _inductor_unavailable()
    if reason:
        pytest.skip(reason)
    clips, seeds = [_clip(1.6, 3), _clip(1.2, 4)], [3, 4]
    with torch.no_grad():  # as generate(): grad mode is part of a compiled graph's guards
        eager_x1, n_frames, _ = gen.sample_latents(clips, seeds, steps=3, cfg=3.0)
    eager = gen.generate(clips, steps=3, seed=seeds)
    gen.compile()
    try:
        assert gen.compiled
        with torch.no_grad():
            x1, n_frames_c, _ = gen.sample_latents(clips, seeds, steps=3, cfg=3.0)
        wavs = gen.generate(clips, steps=3, seed=seeds)
        assert gen._flow.shapes == {(4, 50, TOKEN_MULTIPLE)}  # cond + uncond of 2 clips, 40 frames padded to 50
    finally:
        gen._flow = None
    assert torch.equal(n_frames, n_frames_c)
    torch.testing.assert_close(x1, eager_x1, atol=1e-4, rtol=1e-4)  # inductor fuses and reorders float sums
    for w, e in zip(wavs, eager, strict=True):  # the waveform through Griffin-Lim: compare spectrograms
        assert w.shape == e.shape
        assert np.abs(log_mel(w) - log_mel(e)).mean() < 0.05


def test_compile_is_an_option_of_generate_and_of_the_served_generator(tmp_path):
    """`vssflow generate --compile`, `vssflow serve --compile` and a RayService's ``compile: true`` ask for it;
    without them generation stays eager (compiling costs seconds to a minute per shape)."""
    from pipelines.cli import build_parser
    from pipelines.serve.app import config_from_args, config_from_service_args

    def parse(*argv: str):
        return build_parser(argv[0]).parse_args(list(argv))

    video = ["--model", str(tmp_path), "--video", "v.mp4", "--out", "o.wav"]
    assert parse("generate", *video, "--compile").compile and not parse("generate", *video).compile
    serve = ["--model", str(tmp_path), "--device", "cpu", "--dub", "off"]
    assert config_from_args(parse("serve", *serve, "--compile"), str(tmp_path)).compile
    assert not config_from_args(parse("serve", *serve), str(tmp_path)).compile
    assert config_from_service_args({"model": "m", "compile": True}).compile
    assert not config_from_service_args({"model": "m"}).compile
