"""The 25 fps sync stream: thumbnails of decoded video, extracted for every task, and carried into the features."""

from __future__ import annotations

import numpy as np
import pytest

from vssflow.errors import FeatureShapeError
from vssflow.features.sync import sync_thumbnails


def test_thumbnails_are_grayscale_area_averages():
    frames = np.zeros((3, 128, 96, 3), np.uint8)
    frames[1, :64] = 255  # top half white
    frames[2, ..., 1] = 200  # pure green
    th = sync_thumbnails(frames)
    assert th.shape == (3, 32, 32) and th.dtype == np.uint8
    assert not th[0].any()
    assert (th[1, :16] == 255).all() and not th[1, 16:].any()
    assert np.all(np.abs(th[2].astype(int) - round(0.587 * 200)) <= 1)
    small = sync_thumbnails(np.full((2, 20, 20, 3), 50, np.uint8))  # smaller than 32: upsampled
    assert small.shape == (2, 32, 32) and (small == 50).all()
    assert sync_thumbnails(np.zeros((0, 10, 10, 3), np.uint8)).shape == (0, 32, 32)
    with pytest.raises(FeatureShapeError, match="sync frames"):
        sync_thumbnails(np.zeros((2, 10, 10), np.uint8))


def test_decoded_clips_carry_thumbnails_of_the_moving_objects(tmp_path):
    """Every embedded V2S clip gets a (T, 32, 32) stream at 25 fps in which the bouncing objects move."""
    from vssflow.features.extract import ExtractConfig, decode_clip, row_dict
    from vssflow.synth.corpus import CorpusConfig, write_corpus

    cfg = CorpusConfig(out=str(tmp_path / "c"), clips=2, seed=3, mix=(1.0, 0.0, 0.0), duration=(2.0, 2.0), workers=1)
    rows = write_corpus(cfg).rows
    for r in rows:
        d = decode_clip(row_dict(r), ExtractConfig())
        sync = d["sync"]
        assert sync.shape == (int(round(d["duration_s"] * 25)), 32, 32) and sync.dtype == np.uint8
        motion = np.abs(np.diff(sync.astype(np.int16), axis=0)).sum((1, 2))  # (T-1,)
        assert motion.max() > 0  # the objects move
    off = decode_clip(row_dict(rows[0]), ExtractConfig(sync=False))
    assert off["sync"].shape == (0, 32, 32)
