"""Semantic visual encoders: MobileNetV2 from its pip package (checksum, determinism), tiny CLIP through a local dir."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest_media import make_testsrc, needs_ffmpeg

from vssflow.errors import AssetError, FeatureShapeError
from vssflow.features.visual import (
    MOBILENET_V2_SHA256,
    ClipVisionEncoder,
    MobileNetV2Encoder,
    load_visual_encoder,
    mobilenet_v2_weights_path,
    sha256_file,
)
from vssflow.media.video import read_frames

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def mobilenet():
    return load_visual_encoder("mobilenetv2", batch_size=8)


def test_mobilenet_weights_come_from_package_with_verified_sha256():
    path = mobilenet_v2_weights_path()
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert sha256_file(path) == MOBILENET_V2_SHA256 and MOBILENET_V2_SHA256.startswith("b0353104")


def test_mobilenet_rejects_missing_and_corrupt_weights(tmp_path):
    with pytest.raises(AssetError, match="not found"):
        MobileNetV2Encoder(tmp_path / "absent.pth")
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    shutil.copy(mobilenet_v2_weights_path(), bad)
    with open(bad, "r+b") as f:  # flip one byte in the middle
        f.seek(1_000_000)
        b = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(AssetError, match="sha256") as exc:
        MobileNetV2Encoder(bad)
    assert "\n" not in str(exc.value) and "pip install" in str(exc.value)


@needs_ffmpeg
def test_mobilenet_on_decoded_video(mobilenet, tmp_path):
    frames = read_frames(make_testsrc(tmp_path / "v.mp4", duration=1.0, acodec=None), 10)  # (10, 120, 160, 3)
    feats = mobilenet.encode(frames)
    assert feats.shape == (10, 1280) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and (feats >= 0).all()  # ReLU6 features, average-pooled
    # same image -> same features (also across batch boundaries: batch_size 8 splits the 10 frames)
    again = mobilenet.encode(frames[[9, 0]])
    np.testing.assert_allclose(again, feats[[9, 0]], rtol=1e-4, atol=1e-5)
    # two different images -> clearly different features
    noise = np.random.default_rng(0).integers(0, 256, size=(1, 120, 160, 3), dtype=np.uint8)
    other = mobilenet.encode(noise)[0]
    cos = other @ feats[0] / (np.linalg.norm(other) * np.linalg.norm(feats[0]))
    assert cos < 0.9
    assert mobilenet.describe()["weights_sha256"] == MOBILENET_V2_SHA256


def test_mobilenet_features_feed_the_imagenet_classifier(mobilenet):
    """The pooled features are exactly what torchvision's classifier head consumes (full model gives same logits)."""
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    net.load_state_dict(torch.load(mobilenet_v2_weights_path(), weights_only=True))
    net.eval()
    img = np.random.default_rng(1).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    feats = torch.from_numpy(mobilenet.encode(img))
    with torch.no_grad():
        logits_full = net(mobilenet._preprocess(torch.from_numpy(img)))
        logits_ours = net.classifier(feats)
    torch.testing.assert_close(logits_ours, logits_full, rtol=1e-4, atol=1e-4)


def test_bad_frames_and_unknown_spec(mobilenet, tmp_path):
    with pytest.raises(FeatureShapeError):
        mobilenet.encode(np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(FeatureShapeError):
        mobilenet.encode(np.zeros((4, 32, 32, 3), np.float32))
    assert mobilenet.encode(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 1280)
    with pytest.raises(AssetError, match="unknown visual encoder"):
        load_visual_encoder("resnet9000")
    with pytest.raises(AssetError, match="config.json"):
        load_visual_encoder(tmp_path)  # an empty directory


def test_tiny_clip_from_local_directory(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    CLIPVisionModel(cfg).save_pretrained(tmp_path)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)

    enc = load_visual_encoder(tmp_path, batch_size=3)
    assert isinstance(enc, ClipVisionEncoder) and enc.dim == 32
    rng = np.random.default_rng(0)
    # smooth random images (so resampling differences between implementations stay small)
    small = rng.integers(0, 256, size=(5, 6, 8, 3)).astype(np.uint8)
    frames = np.stack([np.kron(f, np.ones((10, 10, 1))).astype(np.uint8) for f in small])  # (5, 60, 80, 3)
    feats = enc.encode(frames)
    assert feats.shape == (5, 32) and feats.dtype == np.float32

    # reference: Hugging Face's own processor + model, CLS after post_layernorm (pooler_output)
    ref_model = CLIPVisionModel.from_pretrained(tmp_path).eval()
    ref_proc = CLIPImageProcessor.from_pretrained(tmp_path)
    with torch.no_grad():
        pix = ref_proc(images=list(frames), return_tensors="pt")["pixel_values"]
        ref = ref_model(pixel_values=pix).pooler_output.numpy()
    cos = (feats * ref).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.98, cos
    # different images give different features
    assert np.abs(feats[0] - feats[1]).max() > 1e-2


def test_frames_batched_across_clips_give_each_clip_its_own_features(mobilenet):
    from vssflow.features.extract import encode_semantic

    rng = np.random.default_rng(1)
    clips = [rng.integers(0, 256, size=(n, 48, 64, 3)).astype(np.uint8) for n in (3, 5, 1)]
    clips.append(rng.integers(0, 256, size=(2, 40, 40, 3)).astype(np.uint8))  # another frame size: its own pass
    together = encode_semantic(clips, mobilenet)
    for frames, got in zip(clips, together, strict=True):
        alone = mobilenet.encode(frames)
        assert got.shape == alone.shape and np.abs(got - alone).max() < 1e-4
