"""LoRA adapters (vssflow.lora) and the weight EMA (vssflow.ema)."""

import pytest
import torch
from torch import nn

from vssflow.ema import EMA
from vssflow.errors import InputError, MissingFileError
from vssflow.lora import ADAPTER_WEIGHTS, LoRAConfig, LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter


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
