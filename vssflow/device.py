"""Where a model runs, decided in one place: ``--device auto|cpu|cuda[:N]`` -> a :class:`Device`.

Every command that runs a model (train, generate, serve, evaluate, generate-batch, preprocess) resolves its
``--device`` here once, at the entry point, and passes the result inward. What follows from the device is derived
here too, never re-decided by a caller:

- the compute dtype: bf16 on a GPU (training keeps fp32 master weights in the optimizer: DeepSpeed's bf16 mode, or
  autocast over fp32 weights in the DDP fallback), fp32 on the CPU, where bf16 matmuls are slower than fp32;
- the name of DeepSpeed's accelerator (``DS_ACCELERATOR``): ``"cpu"`` only for CPU runs, ``"cuda"`` otherwise, so a
  CPU-only setting never reaches a GPU job (``pipelines/train.py`` puts it in each training worker's environment).

``auto`` is ``cuda`` when this process sees a CUDA device, else ``cpu``. A Ray job whose workers are elsewhere
passes ``cuda_available`` (the cluster has GPUs) instead of asking this process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vssflow.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["Device", "resolve_device", "DEVICE_HELP"]

DEVICE_HELP = "where the model runs: auto (cuda when available), cpu, cuda or cuda:N"
_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Device:
    """A resolved device.

    Attributes:
        type: "cpu" or "cuda".
        index: the CUDA device index (None: the current one, or the one Ray assigned).
    """

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def torch(self) -> torch.device:
        """The ``torch.device``."""
        import torch

        return torch.device(str(self))

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: bf16 on a GPU, fp32 on the CPU."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    @property
    def bf16(self) -> bool:
        """Whether the compute dtype is bf16 (on a GPU)."""
        return self.is_cuda

    @property
    def accelerator(self) -> str:
        """DeepSpeed's accelerator name (the value of ``DS_ACCELERATOR``)."""
        return "cuda" if self.is_cuda else "cpu"

    def autocast(self):
        """``torch.autocast`` in the compute dtype on a GPU; a no-op context on the CPU (fp32)."""
        import torch

        return torch.autocast(self.type, dtype=self.dtype, enabled=self.is_cuda)


def resolve_device(
    spec: str | Device | None = "auto", *, cuda_available: bool | None = None, source: str = "--device"
) -> Device:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` -> :class:`Device`, checked against the CUDA devices there are.

    Args:
        spec: the user's value (None = "auto"); a Device is returned as it is.
        cuda_available: whether the process that will run the model has a GPU; None asks this process
            (``torch.cuda.is_available()``, and ``cuda:N`` is checked against its device count).
        source: the option named in errors.

    Raises:
        InputError: an unknown spelling, or cuda asked for where there is no GPU (one line naming ``source``).
    """
    if isinstance(spec, Device):
        return spec
    text = (spec or "auto").strip().lower()
    m = _SPEC.match(text)
    if m is None or (m.group(1) != "cuda" and m.group(2) is not None):
        raise InputError(f"{spec!r}: expected auto, cpu, cuda or cuda:N (e.g. cuda:0)", source=source)
    import torch

    local = cuda_available is None
    have = torch.cuda.is_available() if local else bool(cuda_available)
    if m.group(1) == "auto":
        return Device("cuda") if have else Device("cpu")
    if m.group(1) == "cpu":
        return Device("cpu")
    index = None if m.group(2) is None else int(m.group(2))
    if not have:
        raise InputError(f"{spec}: no CUDA device is available here; use --device cpu (or auto)", source=source)
    if local and index is not None and index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise InputError(f"{spec}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}", source=source)
    return Device("cuda", index)
