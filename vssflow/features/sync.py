"""Visual sync stream: 25 fps whole-frame grayscale thumbnails (T, 32, 32) uint8.

The semantic frames (10 fps, globally pooled CNN/CLIP embeddings) say *what* is in the video, but pooling throws away
where things are and 10 fps is too coarse for a 40 ms tolerance; the paper adds Synchformer features (24 fps) in
context for that. Synchformer's weights are not available offline, so the sync stream here is the raw material a
sync encoder would see: every frame at the latent rate, downscaled (area average) to 32x32 grayscale. The model
encodes it with a small trainable CNN over (frame, frame difference) pairs (``vssflow.model.conditions.SyncCNN``),
trained end to end with the DiT. 1 KiB per frame: 25 KiB per second of video in the shards.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vssflow.constants import SYNC_SIZE
from vssflow.errors import FeatureShapeError

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as the mouth crops


def sync_thumbnails(frames: np.ndarray, *, size: int = SYNC_SIZE) -> np.ndarray:
    """RGB frames -> grayscale thumbnails.

    Args:
        frames: (T, H, W, 3) uint8 RGB at SYNC_FPS.
        size: side of the square thumbnail (the aspect ratio is not kept: the stream is about motion, not shape).

    Returns:
        (T, size, size) uint8.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FeatureShapeError(f"sync frames: expected (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if not len(frames):
        return np.zeros((0, size, size), np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()  # (T, H, W, 3)
    gray = (x * torch.tensor(_LUMA)).sum(-1, keepdim=True).permute(0, 3, 1, 2)  # (T, 1, H, W)
    small = (
        F.adaptive_avg_pool2d(gray, size)
        if min(gray.shape[-2:]) >= size
        else F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)
    )  # (T, 1, size, size)
    return small[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
