"""The EMA of the weights (vssflow/ema.py): the warm-up of the decay, the average it keeps, what it tracks, and a
resume from its state continuing the same average."""

import pytest
import torch
from torch import nn

from vssflow.ema import EMA


def _model() -> nn.Linear:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # frozen (as the base weights under LoRA): not tracked
    return model


def test_the_decay_warms_up_then_stays_at_its_long_run_value():
    ema = EMA(_model().named_parameters(), decay=0.9, warmup=10)
    decays = []
    for _ in range(100):
        decays.append(ema.current_decay())
        ema.num_updates += 1
    assert decays[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12])  # (1 + n) / (warmup + n)
    assert decays == sorted(decays) and decays[79] < 0.9  # reaches 0.9 at n = 80
    assert decays[80:] == [0.9] * 20
    assert EMA(_model().named_parameters(), decay=0.9, warmup=0).current_decay() == 0.9


def test_update_moves_the_shadow_towards_the_weights_and_copy_to_writes_it_back():
    model = _model()
    ema = EMA(model.named_parameters(), decay=0.5, warmup=0)
    assert set(ema.shadow) == {"weight"}
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
        model.bias.add_(1.0)
    ema.update(model.named_parameters())
    torch.testing.assert_close(ema.shadow["weight"], w0 + 0.5)  # 0.5 * old + 0.5 * new
    assert ema.num_updates == 1

    other = _model().to(torch.bfloat16)
    ema.copy_to(other)
    assert other.weight.dtype == torch.bfloat16  # written in the model's own dtype
    torch.testing.assert_close(other.weight.float(), (w0 + 0.5).to(torch.bfloat16).float())
    torch.testing.assert_close(other.bias, _model().bias.to(torch.bfloat16))  # untracked: untouched


def test_a_resumed_average_equals_the_uninterrupted_one():
    def steps(model, ema, n, start):
        for i in range(start, start + n):
            with torch.no_grad():
                model.weight.mul_(0.9).add_(0.1 * i)
            ema.update(model.named_parameters())

    model = _model()
    straight = EMA(model.named_parameters(), decay=0.99, warmup=5)
    steps(model, straight, 6, 0)
    state = {**straight.state_dict(), "shadow": {k: v.clone() for k, v in straight.shadow.items()}}
    resumed = EMA(_model().named_parameters(), decay=0.5, warmup=0)  # its own settings are replaced by the state's
    resumed.load_state_dict(state)
    assert (resumed.decay, resumed.warmup, resumed.num_updates) == (0.99, 5, 6)
    clone = _model()
    clone.load_state_dict(model.state_dict())
    steps(model, straight, 4, 6)
    steps(clone, resumed, 4, 6)
    torch.testing.assert_close(resumed.shadow["weight"], straight.shadow["weight"], rtol=0, atol=0)


def test_a_state_without_a_tracked_tensor_is_refused_by_name():
    ema = EMA(_model().named_parameters())
    with pytest.raises(KeyError, match=r"lacks 1 tracked tensors, e.g. \['weight'\]"):
        ema.load_state_dict({"decay": 0.9, "warmup": 0, "num_updates": 3, "shadow": {}})
