"""A drawn talking face, fast enough to render thousands of video frames per second.

The face (shaded skin oval, hair, ears, neck, eyes with iris and lids, brows, nose, lips, teeth) is drawn once per
(size, scale, skin, hair, mouth level) with PIL at 4x resolution, shaded and downsampled into an RGBA sprite, and
cached; a frame is then one alpha blend of the cached sprite onto the background at the requested centre. Mouth
opening is quantised to ``MOUTH_LEVELS`` steps (0 = closed lips, 1 = wide open), so a clip whose mouth follows a
phoneme envelope costs ~0.1 ms per frame.

API (all coordinates in pixels of the output frame, x to the right, y down):

    render_face(mouth_open, *, size=128, center=(0.5, 0.5), scale=0.62, skin=..., hair=..., background=..., rng=None)
        -> (H, W, 3) uint8 RGB frame
    mouth_box(mouth_open, *, size=128, center=(0.5, 0.5), scale=0.62) -> (x0, y0, x1, y1) float, the outer lip box
    FaceRenderer: the same two methods on an explicit cache (``render_face``/``mouth_box`` use a shared one)

``size`` is an int (square) or (H, W); ``center`` is the head's centre as fractions of (W, H); ``scale`` is the head
height (hair line to chin) as a fraction of H; ``background`` is an RGB tuple or an (H, W, 3) uint8 image;
``rng`` (a numpy Generator) adds a little sensor noise so frames are not perfectly clean. The face detector and
landmark model in :mod:`vssflow.features.lip` find this face; ``mouth_box`` is the ground truth for tests.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

MOUTH_LEVELS = 24  # quantisation of mouth_open
SUPERSAMPLE = 4

SKIN_TONES = (
    (236, 196, 168),
    (224, 172, 140),
    (198, 140, 105),
    (160, 108, 76),
    (112, 74, 52),
)
HAIR_COLOURS = ((40, 28, 20), (90, 60, 35), (20, 20, 22), (150, 110, 60), (120, 120, 120))
DEFAULT_BACKGROUND = (118, 132, 150)

# Face geometry in units of the head height F, relative to the head centre (x right, y down).
HEAD_W, HEAD_H = 0.74, 1.0
EYE_Y, EYE_DX, EYE_W, EYE_H = -0.07, 0.165, 0.125, 0.058
BROW_Y = -0.15
NOSE_TIP_Y = 0.13
MOUTH_Y, MOUTH_W = 0.27, 0.25  # mouth line and full mouth width (closed)
UPPER_LIP, LOWER_LIP = 0.032, 0.042  # lip thickness
MAX_OPEN = 0.12  # opening between the lips at mouth_open = 1
SPRITE_W, SPRITE_TOP, SPRITE_BOTTOM = 1.0, -0.62, 0.9  # sprite extent around the head centre


def _mouth_geometry(level_open: float) -> tuple[float, float, float, float]:
    """(half width, top of the opening, bottom of the opening, chin drop) in F units for an opening in [0, 1]."""
    half_w = MOUTH_W / 2 * (1.0 - 0.18 * level_open)
    gap = MAX_OPEN * level_open
    return half_w, MOUTH_Y - 0.3 * gap, MOUTH_Y + 0.7 * gap, 0.0


def _shade(a: np.ndarray, factor: np.ndarray) -> np.ndarray:
    return np.clip(a * factor[..., None], 0, 255)


def _draw_base(f_px: float, skin: tuple, hair: tuple) -> tuple[Image.Image, np.ndarray]:
    """Draw the head without its mouth: the supersampled RGB image and the (h, w, 4) premultiplied RGBA sprite."""
    s = SUPERSAMPLE
    F = f_px * s
    w = int(np.ceil(SPRITE_W * f_px)) * s
    h = int(np.ceil((SPRITE_BOTTOM - SPRITE_TOP) * f_px)) * s
    cx, cy = w / 2, -SPRITE_TOP * F

    def P(x, y):  # F units -> supersampled sprite pixels
        return (cx + x * F, cy + y * F)

    def box(x0, y0, x1, y1):
        (a, b), (c, d) = P(x0, y0), P(x1, y1)
        return [a, b, c, d]

    skin = np.array(skin, np.float32)
    hair = np.array(hair, np.float32)
    chin = 0.0

    # --- silhouette masks (neck, ears, head) and base colours
    img = Image.new("RGB", (w, h), (0, 0, 0))
    alpha = Image.new("L", (w, h), 0)
    d, da = ImageDraw.Draw(img), ImageDraw.Draw(alpha)
    neck_col = tuple(int(c) for c in skin * 0.88)
    for dr, col in ((da, 255), (d, neck_col)):
        dr.rectangle(box(-0.17, 0.25, 0.17, SPRITE_BOTTOM), fill=col)
        dr.ellipse(box(-0.5, 0.72, 0.5, 1.3), fill=col)  # shoulders
    shirt = (70, 90, 130)
    d.ellipse(box(-0.5, 0.74, 0.5, 1.3), fill=shirt)
    d.polygon([P(-0.17, 0.62), P(0.0, 0.8), P(0.17, 0.62), P(0.17, 0.76), P(-0.17, 0.76)], fill=neck_col)
    skin_t = tuple(int(c) for c in skin)
    for sx in (-1, 1):  # ears
        for dr, col in ((da, 255), (d, tuple(int(c) for c in skin * 0.9))):
            dr.ellipse(box(sx * 0.40 - 0.05, -0.1, sx * 0.40 + 0.05, 0.12), fill=col)
    head = box(-HEAD_W / 2, -HEAD_H / 2, HEAD_W / 2, HEAD_H / 2 + chin)
    da.ellipse(head, fill=255)
    d.ellipse(head, fill=skin_t)
    # jaw: a slightly squarer lower face
    d.polygon([P(-0.35, 0.05), P(-0.2, 0.45 + chin), P(0.2, 0.45 + chin), P(0.35, 0.05)], fill=skin_t)
    da.polygon([P(-0.35, 0.05), P(-0.2, 0.45 + chin), P(0.2, 0.45 + chin), P(0.35, 0.05)], fill=255)

    # --- shading: darker towards the silhouette, a shadow under the chin
    rgb = np.asarray(img, np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx - cx) / F, (yy - cy) / F
    r2 = (u / (HEAD_W / 2)) ** 2 + (v / (HEAD_H / 2)) ** 2
    shade = 1.06 - 0.28 * np.clip(r2, 0, 1.4) ** 1.5
    shade -= 0.25 * np.exp(-(((v - 0.52 - chin) / 0.06) ** 2)) * (np.abs(u) < 0.2)  # under-chin shadow
    shade -= 0.10 * np.exp(-(((u - 0.05) / 0.05) ** 2) - ((v - 0.03) / 0.09) ** 2)  # side of the nose
    for sx in (-1, 1):  # eye sockets
        shade -= 0.10 * np.exp(-(((u - sx * EYE_DX) / 0.1) ** 2) - ((v - EYE_Y + 0.01) / 0.05) ** 2)
    rgb = _shade(rgb, shade)
    blush = np.exp(-(((np.abs(u) - 0.19) / 0.07) ** 2) - ((v - 0.12) / 0.06) ** 2)
    rgb[..., 0] += 18 * blush
    rgb[..., 1] -= 6 * blush
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)

    # --- hair: a cap over the top of the head
    hair_t = tuple(int(c) for c in hair)
    hair_mask = Image.new("L", (w, h), 0)
    dh = ImageDraw.Draw(hair_mask)
    dh.ellipse(box(-HEAD_W / 2 - 0.03, -HEAD_H / 2 - 0.07, HEAD_W / 2 + 0.03, 0.3), fill=255)
    dh.ellipse(box(-0.33, -0.36, 0.33, 0.62), fill=0)  # the face below the hairline
    dh.rectangle(box(-0.6, -0.04, 0.6, 0.5), fill=0)
    img.paste(Image.new("RGB", (w, h), hair_t), (0, 0), hair_mask)
    alpha.paste(255, (0, 0), hair_mask)
    d = ImageDraw.Draw(img)

    # --- eyes, lids, brows
    for sx in (-1, 1):
        ex = sx * EYE_DX
        d.ellipse(box(ex - EYE_W / 2, EYE_Y - EYE_H / 2, ex + EYE_W / 2, EYE_Y + EYE_H / 2), fill=(245, 243, 238))
        ir = 0.026
        d.ellipse(box(ex - ir, EYE_Y - ir, ex + ir, EYE_Y + ir), fill=(70, 95, 60))
        d.ellipse(box(ex - 0.012, EYE_Y - 0.012, ex + 0.012, EYE_Y + 0.012), fill=(15, 12, 10))
        d.ellipse(box(ex + 0.004, EYE_Y - 0.012, ex + 0.012, EYE_Y - 0.004), fill=(250, 250, 250))
        lid = tuple(int(c) for c in skin * 0.78)
        d.arc(
            box(ex - EYE_W / 2, EYE_Y - EYE_H / 2, ex + EYE_W / 2, EYE_Y + EYE_H / 2),
            180,
            360,
            fill=(40, 30, 25),
            width=max(1, int(0.012 * F)),
        )
        d.arc(
            box(ex - EYE_W / 2, EYE_Y - EYE_H * 0.9, ex + EYE_W / 2, EYE_Y + EYE_H * 0.3),
            200,
            340,
            fill=lid,
            width=max(1, int(0.008 * F)),
        )
        brow = [P(ex - sx * 0.075, BROW_Y + 0.02), P(ex - sx * 0.02, BROW_Y - 0.012), P(ex + sx * 0.075, BROW_Y)]
        d.line(brow, fill=tuple(int(c) for c in hair * 0.9), width=max(1, int(0.026 * F)), joint="curve")

    # --- nose: bridge shadow, tip, nostrils
    nose_dark = tuple(int(c) for c in skin * 0.72)
    d.line(
        [P(0.035, -0.03), P(0.045, NOSE_TIP_Y - 0.03)],
        fill=tuple(int(c) for c in skin * 0.85),
        width=max(1, int(0.014 * F)),
    )
    d.arc(box(-0.06, NOSE_TIP_Y - 0.05, 0.06, NOSE_TIP_Y + 0.03), 20, 160, fill=nose_dark, width=max(1, int(0.012 * F)))
    for sx in (-1, 1):
        d.ellipse(
            box(sx * 0.035 - 0.014, NOSE_TIP_Y - 0.005, sx * 0.035 + 0.014, NOSE_TIP_Y + 0.012), fill=(70, 40, 35)
        )

    size = (w // s, h // s)
    rgb = np.asarray(img.resize(size, Image.BOX).filter(ImageFilter.GaussianBlur(radius=0.5)), np.float32)
    a = np.asarray(alpha.resize(size, Image.BOX).filter(ImageFilter.GaussianBlur(radius=0.4)), np.float32) / 255.0
    return img, np.concatenate([rgb * a[..., None], a[..., None]], axis=-1)  # premultiplied RGBA


def _mouth_region(f_px: float) -> tuple[int, int, int, int]:
    """Sprite pixel box (x0, y0, x1, y1) that holds the mouth at every opening (inside the opaque face)."""
    w = int(np.ceil(SPRITE_W * f_px))
    cx, cy = w / 2, -SPRITE_TOP * f_px
    x0, x1 = int(np.floor(cx - 0.17 * f_px)), int(np.ceil(cx + 0.17 * f_px))
    y0 = int(np.floor(cy + (MOUTH_Y - 0.3 * MAX_OPEN - UPPER_LIP - 0.02) * f_px))
    y1 = int(np.ceil(cy + (MOUTH_Y + 0.7 * MAX_OPEN + LOWER_LIP + 0.02) * f_px))
    return x0, y0, x1, y1


def _draw_mouth(base_img: Image.Image, base: np.ndarray, f_px: float, level_open: float) -> np.ndarray:
    """The sprite with the mouth at ``level_open`` drawn into it (only the mouth region is redrawn)."""
    s = SUPERSAMPLE
    F = f_px * s
    rx0, ry0, rx1, ry1 = _mouth_region(f_px)
    img = base_img.crop((rx0 * s, ry0 * s, rx1 * s, ry1 * s))
    d = ImageDraw.Draw(img)
    cx, cy = base_img.width / 2 - rx0 * s, -SPRITE_TOP * F - ry0 * s

    def P(x, y):  # F units -> supersampled region pixels
        return (cx + x * F, cy + y * F)

    def box(x0, y0, x1, y1):
        (a, b), (c, e) = P(x0, y0), P(x1, y1)
        return [a, b, c, e]

    half_w, open_top, open_bot, _ = _mouth_geometry(level_open)
    # --- mouth: inner mouth (dark, teeth), upper lip with cupid's bow, lower lip
    lip = (178, 88, 90)
    lip_dark = (150, 68, 72)
    top_outer = open_top - UPPER_LIP
    bot_outer = open_bot + LOWER_LIP
    if open_bot - open_top > 0.004:
        d.ellipse(box(-half_w * 0.92, open_top - 0.01, half_w * 0.92, open_bot + 0.005), fill=(55, 18, 22))
        teeth_h = min(0.025, (open_bot - open_top) * 0.35)
        d.chord(
            box(-half_w * 0.7, open_top - 0.012, half_w * 0.7, open_top + 2 * teeth_h), 0, 180, fill=(235, 230, 220)
        )
        d.ellipse(
            box(-half_w * 0.5, open_bot - 0.3 * (open_bot - open_top), half_w * 0.5, open_bot + 0.005),
            fill=(160, 60, 70),
        )  # tongue
    upper = [
        P(-half_w, MOUTH_Y),
        P(-half_w * 0.5, top_outer + 0.004),
        P(-half_w * 0.15, top_outer),
        P(0, top_outer + 0.008),
        P(half_w * 0.15, top_outer),
        P(half_w * 0.5, top_outer + 0.004),
        P(half_w, MOUTH_Y),
        P(half_w * 0.5, open_top + 0.002),
        P(0, open_top + 0.004),
        P(-half_w * 0.5, open_top + 0.002),
    ]
    d.polygon(upper, fill=lip_dark)
    lower = [
        P(-half_w, MOUTH_Y),
        P(-half_w * 0.5, open_bot - 0.002),
        P(0, open_bot),
        P(half_w * 0.5, open_bot - 0.002),
        P(half_w, MOUTH_Y),
        P(half_w * 0.6, bot_outer - 0.01),
        P(0, bot_outer),
        P(-half_w * 0.6, bot_outer - 0.01),
    ]
    d.polygon(lower, fill=lip)
    d.line(
        [
            P(-half_w, MOUTH_Y),
            P(-half_w * 0.5, open_top + 0.003),
            P(0, open_top + 0.004),
            P(half_w * 0.5, open_top + 0.003),
            P(half_w, MOUTH_Y),
        ],
        fill=(90, 35, 40),
        width=max(1, int(0.008 * F)),
    )

    rgb = np.asarray(img.resize((rx1 - rx0, ry1 - ry0), Image.BOX), np.float32)
    out = base.copy()
    a = out[ry0:ry1, rx0:rx1, 3:]
    out[ry0:ry1, rx0:rx1, :3] = rgb * a
    return out


@lru_cache(maxsize=256)
def _base_sprite(f_px_q: int, skin: tuple, hair: tuple) -> tuple[Image.Image, np.ndarray]:
    return _draw_base(f_px_q / 4.0, skin, hair)


@lru_cache(maxsize=4096)
def _sprite(f_px_q: int, skin: tuple, hair: tuple, level: int) -> np.ndarray:
    base_img, base = _base_sprite(f_px_q, skin, hair)
    return _draw_mouth(base_img, base, f_px_q / 4.0, level / (MOUTH_LEVELS - 1))


@lru_cache(maxsize=64)
def _solid_background(h: int, w: int, colour: tuple) -> np.ndarray:
    """A plain colour with a soft vertical gradient (cached)."""
    g = np.linspace(1.08, 0.9, h, dtype=np.float32)[:, None, None]
    return np.clip(np.array(colour, np.float32)[None, None] * g, 0, 255).repeat(w, axis=1)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class FaceRenderer:
    """Renders the drawn face; holds the noise bank (sprites are cached module-wide)."""

    def __init__(self):
        self._noise = np.random.default_rng(1234).normal(0, 1, size=(256, 256, 3)).astype(np.float32)

    def render(
        self,
        mouth_open: float,
        *,
        size: int | tuple[int, int] = 128,
        center: tuple[float, float] = (0.5, 0.5),
        scale: float = 0.62,
        skin: tuple[int, int, int] = SKIN_TONES[1],
        hair: tuple[int, int, int] = HAIR_COLOURS[0],
        background: tuple[int, int, int] | np.ndarray = DEFAULT_BACKGROUND,
        rng: np.random.Generator | None = None,
        noise: float = 3.0,
    ) -> np.ndarray:
        """One frame. See the module docstring for the arguments. Returns (H, W, 3) uint8 RGB."""
        H, W = _hw(size)
        level = int(round(float(np.clip(mouth_open, 0.0, 1.0)) * (MOUTH_LEVELS - 1)))
        f_px_q = int(round(scale * H * 4))
        spr = _sprite(f_px_q, tuple(int(c) for c in skin), tuple(int(c) for c in hair), level)  # (h, w, 4)
        if isinstance(background, np.ndarray):
            out = background.astype(np.float32)
            if out.shape != (H, W, 3):
                raise ValueError(f"background must be ({H}, {W}, 3), got {background.shape}")
        else:
            out = _solid_background(H, W, tuple(int(c) for c in background)).copy()
        f_px = f_px_q / 4.0
        x0 = int(round(center[0] * W - spr.shape[1] / 2))
        y0 = int(round(center[1] * H + SPRITE_TOP * f_px))
        # clip the sprite to the frame
        sx0, sy0 = max(0, -x0), max(0, -y0)
        fx0, fy0 = max(0, x0), max(0, y0)
        fx1, fy1 = min(W, x0 + spr.shape[1]), min(H, y0 + spr.shape[0])
        if fx1 > fx0 and fy1 > fy0:
            s = spr[sy0 : sy0 + fy1 - fy0, sx0 : sx0 + fx1 - fx0]
            region = out[fy0:fy1, fx0:fx1]
            region *= 1.0 - s[..., 3:]
            region += s[..., :3]
        if rng is not None and noise > 0:
            oy, ox = rng.integers(0, 256 - min(H, 256) + 1), rng.integers(0, 256 - min(W, 256) + 1)
            n = self._noise[oy : oy + H, ox : ox + W]
            if n.shape[:2] == (H, W):
                out += noise * n
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    @staticmethod
    def mouth_box(
        mouth_open: float,
        *,
        size: int | tuple[int, int] = 128,
        center: tuple[float, float] = (0.5, 0.5),
        scale: float = 0.62,
    ) -> tuple[float, float, float, float]:
        """Outer box of the lips, (x0, y0, x1, y1) in frame pixels, for the same arguments as :meth:`render`."""
        H, W = _hw(size)
        level = int(round(float(np.clip(mouth_open, 0.0, 1.0)) * (MOUTH_LEVELS - 1)))
        half_w, open_top, open_bot, _ = _mouth_geometry(level / (MOUTH_LEVELS - 1))
        f_px = round(scale * H * 4) / 4.0
        cx = round(center[0] * W - np.ceil(SPRITE_W * f_px) / 2) + np.ceil(SPRITE_W * f_px) / 2
        cy = round(center[1] * H + SPRITE_TOP * f_px) - SPRITE_TOP * f_px
        return (
            cx - half_w * f_px,
            cy + (open_top - UPPER_LIP) * f_px,
            cx + half_w * f_px,
            cy + (open_bot + LOWER_LIP) * f_px,
        )


_DEFAULT = FaceRenderer()


def render_face(mouth_open: float, **kwargs) -> np.ndarray:
    """One frame of the drawn face (shared cache). Keyword arguments as :meth:`FaceRenderer.render`.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    return _DEFAULT.render(mouth_open, **kwargs)


def mouth_box(
    mouth_open: float = 1.0,
    *,
    size: int | tuple[int, int] = 128,
    center: tuple[float, float] = (0.5, 0.5),
    scale: float = 0.62,
    **_render_only,
) -> tuple[float, float, float, float]:
    """Outer lip box (x0, y0, x1, y1) in frame pixels for the same arguments as :func:`render_face`.

    Render-only keywords (skin, hair, background, rng, noise) are accepted and ignored, so one kwargs dict can be
    passed to both functions.
    """
    return FaceRenderer.mouth_box(mouth_open, size=size, center=center, scale=scale)
