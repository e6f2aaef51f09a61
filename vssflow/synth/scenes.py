"""Rendered scenes of the embedded corpus: bouncing objects (with their impact events) and a talking face.

Frames are (T, H, W, 3) uint8 at ``fps``. Objects fall under gravity inside a box and bounce off its walls, floor
and ceiling; every bounce is an event at the frame where the object touches the surface (the object is drawn in
contact at exactly that frame). The face comes from :mod:`vssflow.synth.face` (its mouth opening is a number per
frame in [0, 1]); the mouth opening follows phoneme timings (:func:`mouth_from_phonemes`) or the speech envelope
(:func:`mouth_from_envelope`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vssflow.constants import SAMPLE_RATE
from vssflow.synth.sounds import SoundClass


@dataclass(frozen=True)
class Box:
    """The region objects move in, in pixels: x in [left, right), y in [top, floor)."""

    left: int
    top: int
    right: int
    floor: int


@dataclass(frozen=True)
class Track:
    """One object: its class, per-frame centre (T, 2) as (x, y) pixels, radius, and first visible frame."""

    cls: SoundClass
    xy: np.ndarray
    radius: int
    appear: int


@dataclass(frozen=True)
class Impact:
    """An impact event: video frame index, class name, and strength in [0, 1] (scales the sound's gain)."""

    frame: int
    cls: str
    strength: float


# ------------------------------------------------------------------------------------------------- physics
def simulate(
    rng: np.random.Generator,
    n_frames: int,
    box: Box,
    classes: list[SoundClass],
    *,
    min_gap: int = 4,
    tries: int = 60,
    accept=None,
) -> tuple[list[Track], list[Impact]]:
    """Simulate one object per class in ``classes``; retry until impacts are >= ``min_gap`` frames apart (and
    ``accept(impacts)`` holds, e.g. :func:`onsets_clear`).

    Returns tracks and the impacts sorted by frame. With fewer objects on failure (down to one), so it always
    returns; a single object's bounces are naturally spaced.
    """
    classes = list(classes)
    while True:
        for _ in range(tries):
            tracks, impacts = _simulate_once(rng, n_frames, box, classes)
            frames = sorted(i.frame for i in impacts)
            appear = {tr.cls.name: tr.appear for tr in tracks}
            seen = all(i.frame - appear[i.cls] >= 3 for i in impacts)  # visible before it hits anything
            spaced = all(b - a >= min_gap for a, b in zip(frames, frames[1:], strict=False))
            if impacts and seen and spaced and (accept is None or accept(impacts)):
                return tracks, sorted(impacts, key=lambda i: i.frame)
        if len(classes) == 1:
            return tracks, _thin(impacts, min_gap)
        classes = classes[:-1]


def _thin(impacts: list[Impact], min_gap: int) -> list[Impact]:
    out: list[Impact] = []
    for i in sorted(impacts, key=lambda i: i.frame):
        if not out or i.frame - out[-1].frame >= min_gap:
            out.append(i)
    return out


def _simulate_once(rng, n_frames: int, box: Box, classes: list[SoundClass]) -> tuple[list[Track], list[Impact]]:
    tracks, impacts = [], []
    width, height = box.right - box.left, box.floor - box.top
    for cls in classes:
        r = int(rng.integers(max(6, width // 12), max(9, width // 8) + 1))
        appear = int(rng.integers(0, max(1, n_frames // 3)))
        x = float(rng.uniform(box.left + r, box.right - r))
        y = float(rng.uniform(box.top + r, box.top + r + 0.3 * height))
        vx = float(rng.uniform(-1, 1) * width / 25.0)
        vy = float(rng.uniform(-0.5, 1.0) * height / 30.0)
        g = float(rng.uniform(0.6, 1.1))  # px / frame^2
        restitution = float(rng.uniform(0.7, 0.9))
        xy = np.zeros((n_frames, 2), np.float32)
        for t in range(n_frames):
            if t > appear:
                vy += g
                x, y = x + vx, y + vy
                hit = 0.0
                if y + r >= box.floor:
                    y, hit, vy = box.floor - r, max(hit, vy), -vy * restitution
                elif y - r <= box.top:
                    y, hit, vy = box.top + r, max(hit, -vy), -vy * restitution
                if x - r <= box.left:
                    x, hit, vx = box.left + r, max(hit, -vx), -vx * restitution
                elif x + r >= box.right:
                    x, hit, vx = box.right - r, max(hit, vx), -vx * restitution
                if hit > 3.5:  # a visible impact (it rebounds clearly); slower touches are silent resting contact
                    impacts.append(Impact(t, cls.name, float(min(1.0, hit / 12.0))))
                elif hit > 0 and y + r >= box.floor:
                    vy = 0.0  # come to rest on the floor
            xy[t] = (x, y)
        tracks.append(Track(cls, xy, r, appear))
    return tracks, impacts


# ------------------------------------------------------------------------------------------------- drawing
SUBPIXEL = 4  # sprites are drawn at quarter-pixel positions, so slow motion (and the touch at an impact) shows


@functools.lru_cache(maxsize=4096)
def sprite(shape: str, radius: int, ox: int = 0, oy: int = 0) -> np.ndarray:
    """Anti-aliased alpha mask (2r+3, 2r+3) float32 in [0, 1] for ``shape``, centred ``(ox, oy) / SUBPIXEL`` px
    right/down of the middle pixel."""
    r = radius
    yy, xx = np.mgrid[-r - 1 : r + 2, -r - 1 : r + 2].astype(np.float32)
    xx, yy = xx - ox / SUBPIXEL, yy - oy / SUBPIXEL
    ax, ay = np.abs(xx), np.abs(yy)
    if shape == "circle":
        d = np.hypot(xx, yy) - r
    elif shape == "square":
        d = np.maximum(ax, ay) - 0.8 * r
    elif shape == "triangle":  # apex up
        d = np.maximum(yy - 0.8 * r, (0.87 * ax + 0.5 * (yy - 0.8 * r)) - 0.8 * r + 0.05 * r)
        d = np.maximum(d, -yy - 0.95 * r)
    elif shape == "diamond":
        d = (ax + ay) - r
    elif shape == "ring":
        d = np.abs(np.hypot(xx, yy) - 0.7 * r) - 0.3 * r
    elif shape == "bar":
        d = np.maximum(ax - r, ay - 0.45 * r)
    elif shape == "cross":
        d = np.minimum(np.maximum(ax - r, ay - 0.3 * r), np.maximum(ax - 0.3 * r, ay - r))
    else:  # star: a circle with 5 notches in polar form
        ang = np.arctan2(yy, xx)
        d = np.hypot(xx, yy) - r * (0.65 + 0.35 * np.cos(5 * ang))
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


def paste(frame: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], cx: float, cy: float) -> None:
    """Alpha-blend ``colour`` through ``mask`` centred at (cx, cy) into ``frame`` (H, W, 3) uint8, in place."""
    h, w = mask.shape
    x0, y0 = int(round(cx)) - w // 2, int(round(cy)) - h // 2
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(frame.shape[1], x0 + w), min(frame.shape[0], y0 + h)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    a = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0, None]
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    frame[fy0:fy1, fx0:fx1] = (region * (1 - a) + np.asarray(colour, np.float32) * a + 0.5).astype(np.uint8)


def background(rng: np.random.Generator, size: int, box: Box | None) -> np.ndarray:
    """A dark, slightly textured background (H, W, 3) uint8 with the box's floor and walls drawn."""
    base = rng.integers(20, 70, size=3)
    tex = rng.normal(0, 3, size=(size // 8, size // 8, 1))
    tex = np.kron(tex, np.ones((8, 8, 1)))
    img = np.clip(base[None, None, :] + tex, 0, 255).astype(np.uint8)
    if box is not None:
        img[box.floor : box.floor + 3, box.left : box.right] = (150, 150, 150)
        img[box.top : box.floor + 3, max(0, box.left - 2) : box.left] = (110, 110, 110)
        img[box.top : box.floor + 3, box.right : box.right + 2] = (110, 110, 110)
    return img


def draw_tracks(frames: np.ndarray, tracks: list[Track]) -> None:
    """Draw every visible object of ``tracks`` into ``frames`` (T, H, W, 3), in place."""
    for tr in tracks:
        for t in range(tr.appear, len(frames)):
            q = np.round(tr.xy[t] * SUBPIXEL).astype(int)  # quarter-pixel position
            (cx, ox), (cy, oy) = divmod(int(q[0]), SUBPIXEL), divmod(int(q[1]), SUBPIXEL)
            paste(frames[t], sprite(tr.cls.shape, tr.radius, ox, oy), tr.cls.colour, cx, cy)


def place_events(n_samples: int, impacts: list[Impact], fps: int, sounds: dict[str, np.ndarray]) -> np.ndarray:
    """Mix each impact's class sound at its frame's sample (frame * SAMPLE_RATE / fps): (n_samples,) float32."""
    out = np.zeros(n_samples, np.float32)
    for imp in impacts:
        s = int(round(imp.frame * SAMPLE_RATE / fps))
        snd = sounds[imp.cls] * (0.5 + 0.5 * imp.strength)
        n = min(len(snd), n_samples - s)
        if n > 0:
            out[s : s + n] += snd[:n]
    return out


def onsets_clear(impacts: list[Impact], sounds: dict[str, np.ndarray], fps: int, n_samples: int, ratio=2.0) -> bool:
    """True when every impact's first 10 ms is ``ratio`` x louder (RMS) than the 20 ms of mix before it, i.e. no
    event hides in the tail of an earlier one (so each onset is audible, and learnable)."""
    mix = place_events(n_samples, impacts, fps, sounds)
    for imp in impacts:
        s = int(round(imp.frame * SAMPLE_RATE / fps))
        pre = mix[max(0, s - SAMPLE_RATE // 50) : s]
        own = sounds[imp.cls][: SAMPLE_RATE // 100] * (0.5 + 0.5 * imp.strength)
        if pre.size and np.sqrt(np.mean(own**2)) < ratio * np.sqrt(np.mean(pre**2)):
            return False
    return True


# ------------------------------------------------------------------------------------------------- mouth
_OPEN_WIDE = set("aɑæɐɒ")
_OPEN_MID = set("eɛʌɜɔoœø")
_OPEN_NARROW = set("iɪuʊəɚɯyɨ")
_CLOSED = set("pbm")
_LABIODENTAL = set("fv")


_ARPABET = {
    **dict.fromkeys(("AA", "AE", "AH", "AW", "AY"), 1.0),
    **dict.fromkeys(("EH", "ER", "EY", "AO", "OW", "OY"), 0.75),
    **dict.fromkeys(("IH", "IY", "UH", "UW"), 0.55),
    **dict.fromkeys(("P", "B", "M", "SIL"), 0.0),
    **dict.fromkeys(("F", "V"), 0.1),
}


def phoneme_openness(label: str) -> float:
    """How far the mouth opens for a phoneme (IPA, or ARPAbet from pocketsphinx): 0 closed .. 1 wide."""
    if label.isascii() and label[:1].isupper():
        return _ARPABET.get(label.rstrip("012"), 0.3)
    chars = set(label)
    if chars & _OPEN_WIDE:
        return 1.0
    if chars & _OPEN_MID:
        return 0.75
    if chars & _OPEN_NARROW:
        return 0.55
    if chars & _CLOSED:
        return 0.0
    if chars & _LABIODENTAL:
        return 0.1
    return 0.3


def mouth_from_phonemes(phonemes, n_frames: int, fps: int, offset: float = 0.0) -> np.ndarray:
    """Per-frame mouth opening (T,) in [0, 1] from timed phonemes (``label``, ``start``, ``end`` in seconds).

    Each frame takes the overlap-weighted mean opening of the phonemes within [t/fps, (t+1)/fps); silence is 0.
    ``offset`` shifts the phoneme times (the speech's start within the clip).
    """
    open_ = np.zeros(n_frames, np.float32)
    for p in phonemes:
        s, e = p.start + offset, p.end + offset
        v = phoneme_openness(p.label)
        for t in range(max(0, int(s * fps)), min(n_frames, int(np.ceil(e * fps)))):
            overlap = min(e, (t + 1) / fps) - max(s, t / fps)
            if overlap > 0:
                open_[t] += v * overlap * fps
    open_ = np.clip(open_, 0, 1)
    smooth = np.convolve(np.pad(open_, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    return np.where(open_ == 0, 0.5 * smooth, smooth).astype(np.float32)


def mouth_from_envelope(audio: np.ndarray, n_frames: int, fps: int, *, gate_db: float = -35.0) -> np.ndarray:
    """Per-frame mouth opening (T,) in [0, 1] from the speech loudness (RMS per video frame, in dB below peak)."""
    hop = SAMPLE_RATE // fps
    x = np.zeros(n_frames * hop, np.float32)
    x[: min(len(audio), len(x))] = audio[: len(x)]
    rms = np.sqrt(np.mean(x.reshape(n_frames, hop) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms / (rms.max() + 1e-12) + 1e-12)
    return np.clip((db - gate_db) / (-gate_db - 6.0), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------- face
FACE_LEVELS = 12  # mouth openings rendered per clip (each distinct level is one sprite render, cached per process)


def _placeholder_face(
    mouth_open: float,
    *,
    size: int,
    center: tuple[float, float],
    scale: float,
    skin: tuple[int, int, int],
    background: np.ndarray,
    **_,
) -> np.ndarray:
    """A minimal drawn face, used only when :mod:`vssflow.synth.face` is missing: (H, W, 3) uint8."""
    img = background.copy()
    cx, cy, f = center[0] * size, center[1] * size, scale * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img[((xx - cx) / (0.37 * f)) ** 2 + ((yy - cy) / (0.5 * f)) ** 2 <= 1] = skin
    for ex in (-0.165, 0.165):
        img[(xx - cx - ex * f) ** 2 + (yy - cy + 0.07 * f) ** 2 <= (0.04 * f) ** 2] = (30, 30, 30)
    mh = 0.01 * f + 0.12 * f * float(np.clip(mouth_open, 0, 1))
    img[((xx - cx) / (0.125 * f)) ** 2 + ((yy - cy - 0.27 * f) / mh) ** 2 <= 1] = (60, 10, 20)
    return img


def _placeholder_box(mouth_open: float = 1.0, *, size: int, center: tuple[float, float], scale: float):
    cx, cy, f = center[0] * size, center[1] * size, scale * size
    return (cx - 0.125 * f, cy + 0.22 * f, cx + 0.125 * f, cy + 0.42 * f)


def face_api():
    """(render_face, mouth_box) from :mod:`vssflow.synth.face`, or the minimal placeholder when it is missing."""
    try:
        from vssflow.synth import face
    except ImportError:
        return _placeholder_face, _placeholder_box
    return face.render_face, face.mouth_box


def face_identity(speaker: int) -> dict:
    """A fixed look (skin, hair) per speaker index, so a voice always comes with the same face."""
    try:
        from vssflow.synth.face import HAIR_COLOURS, SKIN_TONES
    except ImportError:
        SKIN_TONES, HAIR_COLOURS = ((224, 172, 140), (198, 140, 105), (160, 108, 76)), ((40, 28, 20),)  # noqa: N806
    return {"skin": SKIN_TONES[speaker % len(SKIN_TONES)], "hair": HAIR_COLOURS[(3 * speaker + 1) % len(HAIR_COLOURS)]}


def draw_face_frames(
    frames: np.ndarray, opening: np.ndarray, *, center: tuple[float, float], scale: float, identity: dict
) -> tuple[float, float, float, float]:
    """Draw a talking face over ``frames`` (T, H, W, 3), in place; ``opening`` (T,) in [0, 1] per frame.

    The background is the first frame (static scenes); each distinct quantised opening is rendered once.
    ``center`` is the head centre as fractions of (W, H) and ``scale`` the head height as a fraction of H.

    Returns:
        The mouth's outer box (x0, y0, x1, y1) in pixels at full opening (the region a mouth crop must cover).
    """
    render, box = face_api()
    size = frames.shape[1]
    bg = frames[0].copy()
    cache: dict[int, np.ndarray] = {}
    for t in range(len(frames)):
        q = int(round(float(np.clip(opening[t], 0, 1)) * (FACE_LEVELS - 1)))
        if q not in cache:
            kw = {"size": size, "center": center, "scale": scale, "background": bg}
            if render is _placeholder_face:
                cache[q] = render(q / (FACE_LEVELS - 1), skin=identity["skin"], **kw)
            else:
                cache[q] = render(q / (FACE_LEVELS - 1), **identity, **kw)
        frames[t] = cache[q]
    return tuple(round(float(v), 2) for v in box(1.0, size=size, center=center, scale=scale))
