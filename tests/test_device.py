"""vssflow.device: --device auto|cpu|cuda[:N] -> device, dtype and DeepSpeed accelerator (no GPU needed)."""

import pytest
import torch

from vssflow.device import Device, resolve_device
from vssflow.errors import InputError


def test_auto_is_cuda_when_there_is_a_gpu_else_cpu():
    assert resolve_device("auto", cuda_available=True) == Device("cuda")
    assert resolve_device("auto", cuda_available=False) == Device("cpu")
    assert resolve_device(None, cuda_available=False) == Device("cpu")
    assert resolve_device("auto") == Device("cuda" if torch.cuda.is_available() else "cpu")  # asks this process


def test_dtype_and_accelerator_follow_the_device():
    cuda, cpu = resolve_device("cuda:1", cuda_available=True), resolve_device(" CPU ", cuda_available=True)
    assert (str(cuda), cuda.index, cuda.torch) == ("cuda:1", 1, torch.device("cuda", 1))
    assert cuda.dtype == torch.bfloat16 and cuda.bf16 and cuda.accelerator == "cuda"
    assert cpu.dtype == torch.float32 and not cpu.bf16 and cpu.accelerator == "cpu" and cpu.torch == torch.device("cpu")
    assert resolve_device(cuda) is cuda


@pytest.mark.parametrize(
    "spec, match",
    [("gpu", "expected auto, cpu, cuda or cuda:N"), ("cpu:0", "expected auto"), ("cuda:x", "expected auto"),
     ("cuda", "no CUDA device is available here; use --device cpu")],
)  # fmt: skip
def test_bad_or_unavailable_devices_fail_in_one_line(spec, match):
    with pytest.raises(InputError, match=match) as e:
        resolve_device(spec, cuda_available=False, source="--device")
    assert str(e.value).startswith("--device: ") and "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_on_this_cpu_machine_is_refused():
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda:0")


def test_autocast_is_off_on_cpu():
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), resolve_device("cpu").autocast():  # fp32 even inside bf16
        assert (x @ x.T).dtype == torch.float32
