"""LoRA adapters (vssflow.lora) and the weight EMA (vssflow.ema)."""

import pytest
import torch
from torch import nn

from vssflow.ema import EMA
from vssflow.errors import InputError, MissingFileError
from vssflow.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_adapter,
    merge_lora,
    save_adapter,
)


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):  # (B, N, D)
        a = torch.softmax(self.to_q(x) @ self.to_k(x).transpose(1, 2) / x.shape[-1] ** 0.5, -1)
        return self.to_out(a @ self.to_v(x))


class _Net(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.attn = _Attn(d)
        self.ff = nn.Linear(d, 4)

    def forward(self, x):
        h = self.inp(x)
        return self.ff(h + self.attn(h))


def _model(seed=0):
    torch.manual_seed(seed)
    return _Net()


def test_lora_starts_as_the_base_model_and_trains_only_adapters(tmp_path):
    base, x = _model(), torch.randn(2, 5, 4)
    y0 = base(x)
    model = _model()
    names = apply_lora(model, LoRAConfig(rank=2))
    assert sorted(names) == ["attn.to_k", "attn.to_out", "attn.to_q", "attn.to_v"]
    assert torch.allclose(model(x), y0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)

    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randn(2, 5, 4)
    first = None
    for _ in range(60):
        loss = (model(x) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n

    # the adapter alone is saved; loading it onto a fresh base model reproduces the tuned one
    save_adapter(model, LoRAConfig(rank=2), tmp_path / "adapter")
    assert (tmp_path / "adapter" / ADAPTER_WEIGHTS).stat().st_size < 4 * 16 * 2 * 2 * 4 + 2000
    fresh = _model()
    load_adapter(fresh, tmp_path / "adapter")
    assert torch.allclose(fresh(x), model(x), atol=1e-6)
    merged = merge_lora(fresh)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert torch.allclose(merged(x), model(x), atol=1e-5)


def test_adapter_files_do_not_take_peft_names_and_old_names_still_load(tmp_path):
    model, x = _model(), torch.randn(2, 5, 4)
    apply_lora(model, LoRAConfig(rank=2))
    with torch.no_grad():
        model.attn.to_q.lora_B.normal_()  # a non-zero update, so loading the wrong thing shows
    save_adapter(model, LoRAConfig(rank=2), tmp_path / "new")
    names = sorted(f.name for f in (tmp_path / "new").iterdir())
    assert names == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS])
    assert not {"adapter_model.safetensors", "adapter_config.json", "adapter_model.bin"} & set(names)
    # an adapter written by an earlier version, under peft's names in our format, loads the same
    old = tmp_path / "old"
    old.mkdir()
    (old / "adapter_model.safetensors").write_bytes((tmp_path / "new" / ADAPTER_WEIGHTS).read_bytes())
    (old / "adapter_config.json").write_text((tmp_path / "new" / ADAPTER_CONFIG).read_text())
    fresh = _model()
    assert load_adapter(fresh, old) == LoRAConfig(rank=2)
    assert torch.allclose(fresh(x), model(x), atol=1e-6)
    # a real peft adapter is refused in one line that says what it is
    (old / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "target_modules": ["q"]}')
    with pytest.raises(InputError, match="peft adapter"):
        load_adapter(_model(), old)


def test_lora_errors(tmp_path):
    with pytest.raises(InputError):
        apply_lora(_model(), LoRAConfig(target=r"nothing_matches"))
    with pytest.raises(MissingFileError):
        load_adapter(_model(), tmp_path)


def test_ema_tracks_an_average_and_round_trips():
    model = _model()
    ema = EMA(model.named_parameters(), decay=0.9, warmup=0)
    start = {n: p.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model.named_parameters())
    for n, s in ema.shadow.items():  # 0.9 * old + 0.1 * (old + 1)
        assert torch.allclose(s, start[n] + 0.1, atol=1e-6)
    state = ema.state_dict()
    other = EMA(_model(1).named_parameters(), decay=0.5)
    other.load_state_dict(state)
    assert other.num_updates == 1 and other.decay == 0.9
    target = _model(2)
    other.copy_to(target)
    assert torch.allclose(target.ff.weight, start["ff.weight"] + 0.1, atol=1e-6)
    # warm-up: the first updates forget the init quickly
    assert EMA(model.named_parameters(), decay=0.999, warmup=10).current_decay() == pytest.approx(0.1)


def test_lora_on_the_vssflow_dit_wraps_every_attention_projection():
    from vssflow.model import TINY, VSSFlowDiT
    from vssflow.model.layers import CrossAttention, SelfAttention

    torch.manual_seed(0)
    model = VSSFlowDiT(TINY.replace(depth=2, width=64, heads=2, cross_dim=64, latent_dim=64))
    expected = sorted(
        f"{n}.{c}"
        for n, m in model.named_modules()
        if isinstance(m, SelfAttention | CrossAttention)
        for c, child in m.named_children()
        if isinstance(child, nn.Linear)
    )
    assert len(expected) >= 2 * 4  # self-attention in + out, cross-attention q + kv + out, per block
    assert sorted(apply_lora(model)) == expected


def test_fine_tune_from_a_model_dir_with_lora_saves_the_adapter_apart(tmp_path):
    """--init + --lora-rank through the training loop's own pieces (single process, the DDP engine without Ray)."""
    from pathlib import Path

    import numpy as np
    from conftest_data import TOY_MODEL, tts_clip, v2s_clip

    from pipelines.deepspeed_config import DDPEngine
    from pipelines.train_config import RunContext, TrainJobConfig
    from pipelines.train_data import encode_batch
    from pipelines.train_model import build_model, models_for_export, save_final
    from vssflow.audio.codec import MelCodec
    from vssflow.generator import Generator
    from vssflow.training import training_step

    rng = np.random.default_rng(0)
    clips = [v2s_clip(rng, i, 1.2) for i in range(2)] + [tts_clip(rng, i, 1.2) for i in range(2)]
    codec = MelCodec(components=TOY_MODEL["latent_dim"]).fit(c.mel for c in clips)
    base_cfg = TrainJobConfig(model_overrides=TOY_MODEL, seed=3)
    base = build_model(base_cfg)
    with (
        torch.no_grad()
    ):  # stands in for a trained base: a fresh DiT's zero-initialised output layer passes no gradient
        for p in base.final.parameters():
            p.normal_(0.0, 0.02)
    Generator(model=base, codec=codec).save_pretrained(tmp_path / "base")

    cfg = TrainJobConfig.from_dict(
        dict(model_overrides=TOY_MODEL, init=str(tmp_path / "base"), lora_rank=2, lr=1e-2, seed=7)
    )
    model = build_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    engine = DDPEngine(model, cfg.engine_settings(), lambda step: 1.0)
    gen = torch.Generator().manual_seed(0)
    ema = EMA(model.named_parameters(), decay=0.5, warmup=0)
    for batch in (clips[:2], clips[2:]) * 3:
        loss, _ = training_step(model, encode_batch(batch, codec, cfg.model_config()), cfg.flow, gen)
        engine.backward(loss)
        engine.step()
        ema.update(model.named_parameters())
    raw, averaged = models_for_export(engine, ema, cfg, stage=0, rank=0)
    out = tmp_path / "tuned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = RunContext(run_dir=str(run_dir), codec_dir="", lip_dim=0, out=str(out))
    save_final(raw, averaged, codec, cfg, run, "ddp", step=6)

    assert (out / "lora" / ADAPTER_WEIGHTS).is_file() and (out / "config.json").is_file()
    tuned = Generator.from_pretrained(out, use_ema=False).model
    base_sd, tuned_sd = base.state_dict(), tuned.state_dict()
    assert tuned_sd.keys() == base_sd.keys()  # merged: a plain model
    changed = {k for k in base_sd if not torch.equal(base_sd[k], tuned_sd[k])}
    assert changed and all(k.split(".")[-2].startswith("to_") for k in changed)  # only attention projections moved
    # the adapter alone, applied to the base model, gives the (EMA) tuned model
    fresh = Generator.from_pretrained(tmp_path / "base").model
    load_adapter(fresh, out / "lora")
    ema_model = Generator.from_pretrained(out).model
    merged = merge_lora(fresh).state_dict()
    assert all(torch.allclose(merged[k], ema_model.state_dict()[k], atol=1e-6) for k in merged)
    assert Path(run_dir / "final.json").is_file()
