"""Phase reconstruction from an STFT magnitude: phase-gradient initialisation, then fast Griffin-Lim.

Plain Griffin-Lim from zero phase needs many STFT/iSTFT pairs (32 was our default) because its start is far from
any consistent spectrogram. Here the start is already close:

1. :func:`pghi_phase` estimates the phase from the magnitude alone (phase-gradient integration, after Prusa,
   Balazs & Sondergaard 2017, "A noniterative method for reconstruction of phase from STFT magnitude"): for a
   Gaussian-like window the log-magnitude gradient gives the phase gradient,

       d phase / d frame = 2 pi a m / M + (a M / gamma) d log|S| / d bin        (instantaneous frequency)
       d phase / d bin   = -pi          - (gamma / (a M)) d log|S| / d frame    (group delay, frame-start origin)

   with hop a, FFT size M and gamma = 0.25645 L^2 for a Hann window of length L. Instead of the paper's heap
   (a sequential walk over every coefficient), each frame's spectral peaks take their phase from the previous
   frame plus the instantaneous frequency (integration along time) and the other bins follow their nearest peak
   by the group delay (integration along frequency, "identity phase locking"). All of that is tensor operations
   over the batch and the bins; only the frames are a loop (~100 per second of audio), so the cost is shared by
   the whole batch.
2. :func:`fast_griffin_lim` (Perraudin, Balazs & Sondergaard 2013, the momentum form of ``torchaudio``'s
   ``griffinlim``) refines that phase for a few iterations.

On the paper's STFT (n_fft 1024, hop 160) and the true magnitude of real speech, step 1 alone gives a spectral
convergence of ~0.06 where zero phase gives ~0.9. From a mel (the magnitude is the filterbank's pseudo-inverse, so
no phase matches it exactly) 16 iterations from this start reconstruct better than 32 from zero phase; the test
``test_griffin_lim_quality_not_worse_than_32_plain_iterations`` keeps it so.

Shape letters: B batch, F = n_fft // 2 + 1 bins, T frames, L samples.
"""

from __future__ import annotations

import math

import torch

__all__ = ["HANN_GAMMA", "fast_griffin_lim", "pghi_phase", "spectral_convergence"]

HANN_GAMMA = 0.25645  # gamma / L^2 of the Gaussian that best fits a Hann window of length L (Prusa et al.)


def _central_diff(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(x[i+1] - x[i-1]) / 2 along ``dim`` (the last dim or the one before it); edges repeated."""
    assert dim in (-1, -2, x.ndim - 1, x.ndim - 2)
    if x.shape[dim] < 2:
        return torch.zeros_like(x)
    pad = (1, 1) if dim in (-1, x.ndim - 1) else (0, 0, 1, 1)
    xp = torch.nn.functional.pad(x, pad, mode="replicate")  # edge values repeated: one-sided differences
    return (xp.narrow(dim, 2, x.shape[dim]) - xp.narrow(dim, 0, x.shape[dim])) / 2


def pghi_phase(
    magnitude: torch.Tensor, *, n_fft: int, hop_length: int, win_length: int, tol_db: float = 80.0
) -> torch.Tensor:
    """Phase estimated from the magnitude by phase-gradient integration (see the module docstring).

    Args:
        magnitude: (B, F, T) STFT magnitude (``torch.stft`` layout, Hann window, frame-start phase origin).
        tol_db: bins more than this below the clip's loudest one are treated as silence (no peak there).

    Returns:
        (B, F, T) phase in radians (unwrapped).
    """
    gamma = HANN_GAMMA * win_length**2
    a, m_fft = hop_length, n_fft
    # (B, T, F) layout: the work is along frequency, and each frame of the loop below is one contiguous row
    log_s = torch.log(magnitude.transpose(1, 2).float() + 1e-12)  # (B, T, F)
    b, t, f = log_s.shape
    floor = log_s.amax(dim=(1, 2), keepdim=True) - tol_db / 20 * math.log(10)  # (B, 1, 1)
    log_s = torch.maximum(log_s, floor)
    bins = torch.arange(f, dtype=log_s.dtype, device=log_s.device)  # (F,)
    inst_freq = 2 * math.pi * a * bins / m_fft + (a * m_fft / gamma) * _central_diff(log_s, 2)  # (B, T, F) rad/hop
    group_delay = -math.pi - (gamma / (a * m_fft)) * _central_diff(log_s, 1)  # (B, T, F) rad/bin
    # trapezoid rule: phase advance from frame n-1 to n, and the phase profile of each frame along frequency
    advance = (inst_freq[:, 1:] + inst_freq[:, :-1]).double() / 2  # (B, T - 1, F)
    profile = torch.nn.functional.pad(torch.cumsum((group_delay[..., 1:] + group_delay[..., :-1]) / 2, 2), (1, 0))

    # each bin follows the nearest spectral peak of its frame (itself when the frame has none)
    inner = log_s[..., 1:-1]
    peak = torch.zeros_like(log_s, dtype=torch.bool)
    peak[..., 1:-1] = (inner >= log_s[..., :-2]) & (inner > log_s[..., 2:]) & (inner > floor)
    idx = torch.arange(f, dtype=torch.int32, device=log_s.device).expand(b, t, f)  # (B, T, F)
    left = torch.where(peak, idx, -4 * f).cummax(2).values
    right = f - 1 - torch.where(peak.flip(2), idx, -8 * f).cummax(2).values.flip(2)  # nearest peak at or above
    nearest = torch.where(idx - left <= right - idx, left, right)
    nearest = torch.where((nearest < 0) | (nearest >= f), idx, nearest).long()
    offset = (profile - profile.gather(2, nearest)).double()  # (B, T, F) phase of a bin relative to its peak

    phase = torch.empty(b, t, f, dtype=torch.float64, device=log_s.device)
    current = phase[:, 0] = offset[:, 0]  # (B, F): the first frame's peaks start at phase 0
    for n in range(1, t):  # sequential in time only; every op is over (B, F)
        current = phase[:, n] = (current + advance[:, n - 1]).gather(1, nearest[:, n]) + offset[:, n]
    return phase.transpose(1, 2).to(magnitude.dtype)  # (B, F, T)


def fast_griffin_lim(
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    *,
    n_fft: int,
    hop_length: int,
    win_length: int,
    window: torch.Tensor,
    n_iter: int,
    momentum: float = 0.99,
    length: int,
) -> torch.Tensor:
    """Fast Griffin-Lim from an initial phase; centre-framed STFT with reflect padding (``torch.stft`` defaults).

    Args:
        magnitude: (B, F, T) target magnitude.
        phase: (B, F, T) initial phase.
        n_iter: STFT/iSTFT refinement pairs (0 = one iSTFT of the initial phase).
        momentum: FGLA momentum (as ``torchaudio.functional.griffinlim``; 0 = plain Griffin-Lim).
        length: output samples.

    Returns:
        (B, length) waveform.
    """
    stft = dict(n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window)
    angles = torch.polar(torch.ones_like(magnitude), phase)  # (B, F, T) unit complex
    previous = torch.zeros_like(angles)
    alpha = momentum / (1 + momentum)
    for _ in range(n_iter):
        rebuilt = torch.stft(torch.istft(magnitude * angles, length=length, **stft), return_complex=True, **stft)
        angles = rebuilt - alpha * previous if momentum else rebuilt
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return torch.istft(magnitude * angles, length=length, **stft)  # (B, L)


def spectral_convergence(wav: torch.Tensor, magnitude: torch.Tensor, *, n_fft: int, hop_length: int,
                         win_length: int, window: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """||(|STFT(wav)| - magnitude)|| / ||magnitude|| per clip: (B, L), (B, F, T) -> (B,); 0 = consistent."""
    rebuilt = torch.stft(wav, n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window,
                         return_complex=True).abs()  # fmt: skip
    return torch.linalg.vector_norm(rebuilt - magnitude, dim=(1, 2)) / torch.linalg.vector_norm(magnitude, dim=(1, 2))
