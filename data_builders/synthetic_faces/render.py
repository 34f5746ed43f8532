"""Procedural face videos: identities and rendering, vectorised over frames in numpy.

Coordinates: the image spans [-1, 1] on both axes (x right, y down; one unit is
half the image side). The face is drawn in face coordinates (u, v), same unit,
related to the image by a per-frame similarity transform (head motion). Every
part is a signed distance `d` (face units) turned into coverage by
`clip(0.5 - d / pixel, 0, 1)`: analytic anti-aliasing, no supersampling.
AU intensities (0..5, `timeline.py`) deform the parts through `appearance`: a
trace (intensity < 1.5) is faint, and the change becomes evident around the label
threshold 2, as FACS's intensity B describes; at intensity 5 the deformations are
3-6 pixels at 64x64. All randomness comes from `rng`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_builders.synthetic_faces.timeline import AUS, sample_au_intensities

__all__ = ["AUS", "Identity", "render_frames", "sample_au_intensities", "sample_identity"]

_COL = {au: i for i, au in enumerate(AUS)}
_CHUNK = 32  # frames rendered at once (bounds memory at 224x224)
_SKINS = np.array([[0.96, 0.80, 0.69], [0.87, 0.67, 0.52], [0.70, 0.50, 0.36], [0.45, 0.31, 0.22]])
_HAIRS = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.72, 0.60, 0.36], [0.52, 0.24, 0.12],
                   [0.55, 0.55, 0.55]])
_IRISES = np.array([[0.30, 0.18, 0.08], [0.25, 0.40, 0.60], [0.30, 0.42, 0.25], [0.12, 0.08, 0.06]])
_DARK = np.array([0.12, 0.07, 0.06])


@dataclasses.dataclass(frozen=True)
class Identity:
    """Per-subject geometry (face units) and colours (RGB in [0, 1])."""

    face_w: float
    face_h: float
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    iris_r: float
    brow_y: float
    brow_len: float
    brow_thick: float
    brow_arch: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_upper: float
    lip_lower: float
    hairline: float
    hair_len: float
    hair_tilt: float
    wrinkles: float
    lip_red: float
    scale: float
    offset: tuple[float, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    background: tuple[float, float, float]
    background2: tuple[float, float, float]


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[float, ...]:
    c = palette[rng.integers(len(palette))] + rng.uniform(-jitter, jitter, 3)
    return tuple(float(x) for x in np.clip(c, 0.0, 1.0))


def sample_identity(rng: np.random.Generator) -> Identity:
    """One random face: geometry, skin tone, hair, eye and background colours."""
    u = rng.uniform
    eye_dx, eye_y = u(0.24, 0.31), u(-0.16, -0.08)
    nose_y = u(0.18, 0.25)
    t = u(0.0, 1.0) * (len(_SKINS) - 1)
    k = min(int(t), len(_SKINS) - 2)
    skin = (1 - (t - k)) * _SKINS[k] + (t - k) * _SKINS[k + 1] + u(-0.03, 0.03, 3)
    bg = u(0.15, 0.85, 3)
    return Identity(
        face_w=u(0.60, 0.76), face_h=u(0.78, 0.88), eye_dx=eye_dx, eye_y=eye_y,
        eye_w=u(0.12, 0.15), eye_h=u(0.07, 0.09), iris_r=u(0.045, 0.056),
        brow_y=eye_y - u(0.15, 0.20), brow_len=u(0.14, eye_dx - 0.07), brow_thick=u(0.03, 0.065),
        brow_arch=u(0.0, 0.04), nose_y=nose_y, nose_w=u(0.13, 0.18), mouth_y=nose_y + u(0.20, 0.26),
        mouth_w=u(0.2, 0.25), lip_upper=u(0.045, 0.065), lip_lower=u(0.055, 0.08),
        hairline=u(-0.64, -0.48), hair_len=u(-0.1, 0.6), hair_tilt=u(-0.12, 0.12), wrinkles=u(0.0, 0.3),
        lip_red=u(0.35, 0.6), scale=u(0.95, 1.05),
        offset=(u(-0.04, 0.04), u(-0.03, 0.03)),
        skin=tuple(float(x) for x in np.clip(skin, 0, 1)), hair=_pick(rng, _HAIRS, 0.05),
        iris=_pick(rng, _IRISES, 0.04), background=tuple(float(x) for x in bg),
        background2=tuple(float(x) for x in np.clip(bg + u(-0.25, 0.25, 3), 0, 1)),
    )


def _smooth(rng: np.random.Generator, n: int, amp: float, periods=(30.0, 150.0)) -> np.ndarray:
    """`[n]` slow random signal in [-amp, amp]: two sinusoids of random period and phase."""
    t = np.arange(n)
    p, ph = rng.uniform(*periods, 2), rng.uniform(0, 2 * np.pi, 2)
    return amp * 0.5 * (np.sin(2 * np.pi * t / p[0] + ph[0]) + np.sin(2 * np.pi * t / p[1] + ph[1]))


def _sample_motion(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-frame head pose, gaze, blinks and lighting, each `[n]`."""
    m = {
        "tx": _smooth(rng, n, 0.04), "ty": _smooth(rng, n, 0.03), "rot": _smooth(rng, n, np.radians(4)),
        "scale": 1 + _smooth(rng, n, 0.03), "gaze_x": _smooth(rng, n, 0.025, (15, 60)),
        "gaze_y": _smooth(rng, n, 0.01, (15, 60)), "bright": 1 + _smooth(rng, n, 0.08),
        "grad": _smooth(rng, n, 0.12),
    }
    m["grad_dir"] = np.full(n, rng.uniform(0, 2 * np.pi))
    blink = np.ones(n)
    for c in rng.integers(0, n, rng.poisson(n / 80)):
        for dt, o in ((-1, 0.5), (0, 0.1), (1, 0.5)):
            if 0 <= c + dt < n:
                blink[c + dt] = min(blink[c + dt], o)
    m["blink"] = blink
    return m


def _ink(skin: np.ndarray, k: float) -> np.ndarray:
    """Colour of a line or fold on `skin`: darker by a factor and an offset (visible on dark skin too)."""
    return np.clip(skin * k - 0.07, 0.0, 1.0)


def _cov(d, px):
    """Coverage of a shape from its signed distance (analytic anti-aliasing)."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _ellipse(x, y, a, b):
    """Approximate signed distance to an axis-aligned ellipse centred at 0."""
    k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = np.sqrt((x / a**2) ** 2 + (y / b**2) ** 2) + 1e-9
    return k0 * (k0 - 1.0) / k1


def _segment(x, y, x0, y0, x1, y1):
    """Distance to the segment (x0, y0)-(x1, y1); endpoints may be per-frame `[t, 1, 1]`."""
    dx, dy = x1 - x0, y1 - y0
    h = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return np.hypot(x - x0 - h * dx, y - y0 - h * dy)


class _Canvas:
    """A chunk of frames being painted: face coordinates, windows and alpha blending."""

    def __init__(self, size: int, pose: dict[str, np.ndarray], ident: Identity):
        g = ((np.arange(size, dtype=np.float32) + 0.5) * 2.0 / size - 1.0)
        self.size, self.x, self.y = size, g[None, None, :], g[:, None][None]
        c = lambda k: pose[k].astype(np.float32)[:, None, None]  # noqa: E731
        self.tx, self.ty = c("tx") + ident.offset[0], c("ty") + ident.offset[1]
        self.sc, self.cos, self.sin = c("scale") * ident.scale, np.cos(c("rot")), np.sin(c("rot"))
        dx, dy = self.x - self.tx, self.y - self.ty
        self.u = (self.cos * dx + self.sin * dy) / self.sc
        self.v = (-self.sin * dx + self.cos * dy) / self.sc
        self.px = float(2.0 / size / np.mean(self.sc))
        self.img = np.zeros((len(pose["tx"]), size, size, 3), np.float32)

    def window(self, u0, u1, v0, v1):
        """(row slice, col slice) of the pixels that can see face box [u0,u1]x[v0,v1] in any frame."""
        us, vs = np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1])
        x = self.tx + self.sc * (self.cos * us - self.sin * vs)
        y = self.ty + self.sc * (self.sin * us + self.cos * vs)
        lo = lambda a: int(np.clip(np.floor((a.min() + 1) * self.size / 2) - 2, 0, self.size))  # noqa: E731
        hi = lambda a: int(np.clip(np.ceil((a.max() + 1) * self.size / 2) + 2, 0, self.size))  # noqa: E731
        return slice(lo(y), hi(y)), slice(lo(x), hi(x))

    def uv(self, win):
        return self.u[:, win[0], win[1]], self.v[:, win[0], win[1]]

    def paint(self, win, alpha, color):
        """Alpha-blend `color` ((3,) or `[t, h, w, 3]`) with coverage `alpha` `[t, h, w]`."""
        a = np.asarray(alpha, np.float32)
        hit = a.any(axis=0)  # blend only the bounding box of the covered pixels
        rows, cols = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(hit.any(axis=0))
        if not len(rows):
            return
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        color = np.asarray(color, np.float32)
        if color.ndim == 4:
            color = color[:, r0:r1, c0:c1]
        region = self.img[:, win[0], win[1]][:, r0:r1, c0:c1]
        region += a[:, r0:r1, c0:c1, None] * (color - region)


def _lines(cv, win, segs, thick, alpha, color):
    """Paint a set of line segments [(x0, y0, x1, y1), ...] with one per-frame alpha."""
    if not np.any(alpha):
        return
    u, v = cv.uv(win)
    d = np.min([_segment(u, v, *s) for s in segs], axis=0) - thick
    cv.paint(win, _cov(d, cv.px) * alpha, color)


def _draw_head(cv: _Canvas, f: Identity, a: dict[int, np.ndarray]) -> None:
    skin, hair = np.array(f.skin), np.array(f.hair)
    bgy = (cv.y + 1) / 2
    cv.img[:] = (1 - bgy[..., None]) * np.array(f.background) + bgy[..., None] * np.array(f.background2)
    full = (slice(None), slice(None))
    u, v = cv.u, cv.v
    cv.paint(full, _cov(np.maximum(np.abs(u) - 0.36, 0.3 - v), cv.px), skin * 0.78)  # neck
    hair_back = np.maximum(_ellipse(u, v + 0.08, f.face_w + 0.09, f.face_h + 0.08), v - f.hair_len)
    cv.paint(full, _cov(hair_back, cv.px), hair)
    for s in (-1, 1):
        cv.paint(full, _cov(_ellipse(u - s * (f.face_w - 0.01), v - f.eye_y - 0.08, 0.07, 0.14), cv.px),
                 skin * 0.88)
    jaw = 1.0 + 0.2 * a[26] - 0.08 * a[17]  # jaw drop stretches the face below the mouth
    vj = np.where(v > f.mouth_y, f.mouth_y + (v - f.mouth_y) / jaw, v)
    face = _ellipse(u, vj, f.face_w, f.face_h)
    r2 = (u / f.face_w) ** 2 + (vj / f.face_h) ** 2
    shade = (1.0 - 0.22 * np.clip(r2, 0, 1) ** 2)[..., None]
    cv.paint(full, _cov(face, cv.px), shade * skin)
    # forehead wrinkles: central ones for AU1, lateral ones for AU2
    win = cv.window(-0.5, 0.5, f.brow_y - 0.22, f.brow_y - 0.06)
    u, v = cv.uv(win)
    au_ = np.abs(u)
    for y0 in (f.brow_y - 0.11, f.brow_y - 0.17):
        line = _cov(np.abs(v - y0 - 0.05 * au_**2) - 0.012, cv.px)
        central = np.clip((0.18 - au_) / 0.04, 0, 1)
        lateral = np.clip((au_ - 0.14) / 0.04, 0, 1) * np.clip((0.44 - au_) / 0.04, 0, 1)
        alpha = f.wrinkles * 0.5 + 0.6 * a[1] * central + 0.6 * a[2] * lateral
        cv.paint(win, line * alpha, _ink(skin, 0.6))
    u, v = cv.u, cv.v
    fringe = np.maximum(face, v - (f.hairline + f.hair_tilt * u + 0.2 * (u / f.face_w) ** 2))
    cv.paint(full, _cov(fringe, cv.px), hair)


def _draw_brows_eyes(cv: _Canvas, f: Identity, a: dict[int, np.ndarray], m: dict[str, np.ndarray]) -> None:
    skin = np.array(f.skin)
    brow_col = np.minimum(np.array(f.hair) * 0.8, skin * 0.45)
    lift_in = 0.17 * a[1] + 0.03 * a[2] - 0.13 * a[4] - 0.03 * a[9]
    lift_out = 0.15 * a[2] + 0.02 * a[1] - 0.07 * a[4] - 0.03 * a[9]
    inward = 0.05 * a[4]
    for s in (-1, 1):
        cx = s * (f.eye_dx + 0.01)
        win = cv.window(cx - 0.3, cx + 0.3, f.brow_y - 0.3, f.brow_y + 0.22)
        u, v = cv.uv(win)
        # xi: -1 at the inner end, +1 at the outer end of the brow
        xi = (s * (u - cx) + inward) / f.brow_len
        yc = f.brow_y - lift_in * (1 - xi) / 2 - lift_out * (1 + xi) / 2 - f.brow_arch * (1 - xi**2)
        slope = (lift_in - lift_out) / (2 * f.brow_len) + 2 * f.brow_arch * xi / f.brow_len
        thick = f.brow_thick * (1 - 0.25 * (xi + 1) / 2)
        d = np.maximum(np.abs(v - yc) / np.sqrt(1 + slope**2) - thick / 2, (np.abs(xi) - 1) * f.brow_len)
        cv.paint(win, _cov(d, cv.px), brow_col)
        # vertical frown line between the brows (AU4)
        gx = s * 0.035
        frown = [(gx, f.brow_y - 0.02, gx + s * 0.01, f.brow_y + 0.09)]
        _lines(cv, win, frown, 0.011, 0.7 * a[4], _ink(skin, 0.55))

        ex, ey = s * f.eye_dx, f.eye_y
        h_up = f.eye_h * (1 - 0.5 * a[7] - 0.15 * a[4]) * m["blink"]
        h_lo = 0.75 * f.eye_h * (1 - 0.7 * a[7] - 0.5 * a[6])
        win = cv.window(ex - f.eye_w - 0.12, ex + f.eye_w + 0.12, ey - 0.16, ey + 0.2)
        u, v = cv.uv(win)
        dx = u - ex
        q = 1 - (dx / f.eye_w) ** 2
        y_up, y_lo = ey - h_up * q, ey + h_lo * q
        crease = _cov(np.maximum(np.abs(v - (ey - (f.eye_h + 0.035) * q)) - 0.008, -q), cv.px)
        cv.paint(win, crease * 0.5, _ink(skin, 0.7))
        opening = _cov(np.maximum(y_up - v, v - y_lo), cv.px)
        cv.paint(win, opening, (0.93, 0.92, 0.9))
        ir = np.hypot(dx - m["gaze_x"], v - ey - m["gaze_y"])
        cv.paint(win, opening * _cov(ir - f.iris_r, cv.px), f.iris)
        cv.paint(win, opening * _cov(ir - 0.45 * f.iris_r, cv.px), _DARK * 0.5)
        lash = np.maximum(np.abs(v - y_up) - 0.016, np.abs(dx) - 1.05 * f.eye_w)
        cv.paint(win, _cov(lash, cv.px), _DARK)
        cv.paint(win, _cov(np.maximum(np.abs(v - y_lo) - 0.008, -q), cv.px) * 0.5, _ink(skin, 0.55))
        # cheek raiser (AU6): raised cheek shading, infraorbital furrow, crow's feet
        cy = ey + 0.27 - 0.09 * a[6]
        cheek = np.clip(1 - np.sqrt((dx / 0.16) ** 2 + ((v - cy) / 0.09) ** 2), 0, 1)
        cv.paint(win, cheek * (0.1 + 0.45 * a[6]), skin * 0.8 + np.array([0.15, 0.0, 0.0]))
        fy = ey + 0.75 * f.eye_h + 0.06 - 0.05 * a[6]
        furrow = np.maximum(np.abs(v - fy - 0.03 * (dx / f.eye_w) ** 2) - 0.01, np.abs(dx) - f.eye_w)
        cv.paint(win, _cov(furrow, cv.px) * 0.7 * a[6], _ink(skin, 0.6))
        ox = ex + s * (f.eye_w + 0.02)
        feet = [(ox, ey + k * 0.025, ox + s * 0.1, ey + k * 0.06) for k in (-1, 0, 1)]
        _lines(cv, win, feet, 0.011, 0.3 * f.wrinkles + 0.75 * a[6], _ink(skin, 0.6))


def _draw_nose_mouth(cv: _Canvas, f: Identity, a: dict[int, np.ndarray]) -> None:
    skin = np.array(f.skin)
    lip_col = (1 - f.lip_red) * skin + f.lip_red * np.array([0.8, 0.22, 0.25])
    win = cv.window(-0.3, 0.3, f.eye_y, f.nose_y + 0.08)
    _lines(cv, win, [(s * 0.05, f.eye_y + 0.05, s * 0.06, f.nose_y - 0.06) for s in (-1, 1)], 0.01, 0.15,
           _ink(skin, 0.7))
    _lines(cv, win, [(-0.07, y, 0.07, y) for y in (-0.05, 0.0, 0.05)], 0.012, 0.8 * a[9], _ink(skin, 0.55))
    lift = 0.05 * a[9] + 0.025 * a[10]
    u, v = cv.uv(win)
    for s in (-1, 1):
        nx, ny = s * f.nose_w * 0.5 * (1 + 0.25 * a[9]), f.nose_y - lift
        ala = np.abs(_ellipse(u - nx - s * 0.015, v - ny + 0.01, 0.045, 0.04)) - 0.007
        ala = np.maximum(ala, np.maximum(ny - 0.03 - v, s * (nx - u)))
        cv.paint(win, _cov(ala, cv.px) * 0.5, _ink(skin, 0.6))
        cv.paint(win, _cov(_ellipse(u - nx, v - ny, 0.035 * (1 + 0.35 * a[9]), 0.02), cv.px) * 0.9, _DARK)

    mw = f.mouth_w * (1 + 0.32 * a[12] - 0.42 * a[23] - 0.1 * a[24] + 0.05 * a[26])
    cdy = -0.15 * a[12] + 0.15 * a[15]
    y0 = f.mouth_y - 0.035 * a[10]
    press = 1 - 0.9 * a[24]
    gap_u = (0.06 * a[10] + 0.02 * a[25] + 0.02 * a[26]) * press
    gap_l = np.maximum((0.05 * a[25] + 0.17 * a[26]) * press - 0.05 * a[17], 0)
    tu = f.lip_upper * np.maximum(1 - 0.7 * a[23] - 0.65 * a[24], 0.25)
    tl = f.lip_lower * np.maximum(1 - 0.7 * a[23] - 0.65 * a[24] + 0.6 * a[17], 0.25)
    win = cv.window(-0.5, 0.5, f.nose_y - 0.1, f.mouth_y + 0.45)
    # nasolabial folds (AU10, AU12, AU9) and marionette lines (AU15)
    folds = [(s * (f.nose_w * 0.5 + 0.08), f.nose_y - 0.03 - lift, s * (mw + 0.05), y0 + cdy + 0.05)
             for s in (-1, 1)]
    fold_alpha = np.minimum(0.05 + f.wrinkles + 0.55 * a[10] + 0.5 * a[12] + 0.3 * a[9], 0.9)
    _lines(cv, win, folds, 0.011, fold_alpha, _ink(skin, 0.6))
    _lines(cv, win, [(s * mw, y0 + cdy + 0.02, s * (mw + 0.03), y0 + cdy + 0.13) for s in (-1, 1)], 0.01,
           0.8 * a[15], _ink(skin, 0.55))
    u, v = cv.uv(win)
    xi = u / mw
    q = np.clip(1 - xi**2, 0, None)
    end = (np.abs(xi) - 1) * mw
    line = y0 + cdy * xi**2
    up_bot, lo_top = line - gap_u * q**0.6, line + gap_l * q**0.6
    up_top, lo_bot = up_bot - tu * np.sqrt(q), lo_top + tl * np.sqrt(q)
    # lip pressor (AU24): skin bulges above and below the lips
    bulge = [(-0.7 * mw, y, 0.7 * mw, y) for y in (y0 - tu - 0.04, y0 + tl + gap_l + 0.045)]
    _lines(cv, win, bulge, 0.015, 0.9 * a[24], _ink(skin, 0.55))
    inside = np.maximum(np.maximum(up_bot - v, v - lo_top), end)
    cv.paint(win, _cov(inside, cv.px), (0.3, 0.08, 0.08))
    cv.paint(win, _cov(np.maximum(inside, v - up_bot - 0.035), cv.px), (0.92, 0.9, 0.85))
    lower_teeth = _cov(np.maximum(inside, lo_top - 0.025 - v), cv.px) * np.minimum(gap_l / 0.08, 1)
    cv.paint(win, lower_teeth, (0.9, 0.88, 0.83))
    cv.paint(win, _cov(np.maximum(np.maximum(up_top - v, v - up_bot), end), cv.px), lip_col)
    cv.paint(win, _cov(np.maximum(np.maximum(lo_top - v, v - lo_bot), end), cv.px), lip_col * 1.05)
    closed = np.maximum(np.abs(v - line) - 0.013 - 0.01 * a[24] - 0.008 * a[23], (np.abs(xi) - 1.05) * mw)
    cv.paint(win, _cov(closed, cv.px) * 0.85 * (1 - np.minimum((gap_u + gap_l) / 0.03, 1)), lip_col * 0.35)
    # chin raiser (AU17): deeper mentolabial sulcus, dimpled chin boss
    jaw = 1.0 + 0.2 * a[26] - 0.08 * a[17]
    sy = y0 + gap_l + tl + 0.05
    _lines(cv, win, [(-0.1, sy + 0.015, 0.0, sy), (0.0, sy, 0.1, sy + 0.015)], 0.011, 0.15 + 0.6 * a[17],
           _ink(skin, 0.6))
    cy = f.mouth_y + (f.face_h - f.mouth_y) * 0.6 * jaw
    boss = np.clip(1 - np.sqrt((u / 0.13) ** 2 + ((v - cy - 0.04) / 0.08) ** 2), 0, 1)
    cv.paint(win, np.minimum(3 * boss, 1) * 0.5 * a[17], _ink(skin, 0.8))
    dots = [(-0.05, 0.0), (0.05, 0.0), (0.0, 0.035), (-0.035, 0.07), (0.035, 0.07)]
    _lines(cv, win, [(x, cy + y, x, cy + y) for x, y in dots], 0.022, 0.85 * a[17], _ink(skin, 0.6))


def appearance(intensity: np.ndarray) -> np.ndarray:
    """Deformation amplitude in [0, 1] of an AU intensity 0..5.

    Up to 0.2 for traces (intensity <= 1.5), a smooth rise to 0.75 between 1.5
    and 2.5 (the label threshold is 2), then linear to 1 at intensity 5.
    """
    i = np.clip(np.asarray(intensity, np.float32), 0, 5)
    s = np.clip((i - 1.5) / 1.0, 0, 1)
    return (0.2 * np.minimum(i / 1.5, 1) + 0.55 * s * s * (3 - 2 * s)
            + 0.25 * np.clip((i - 2.5) / 2.5, 0, 1)).astype(np.float32)


def render_frames(identity: Identity, intensities: np.ndarray, image_size: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Render one continuous video of `identity` making the given AU intensities.

    Args:
      identity: from `sample_identity`.
      intensities: float `[T, 14]`, 0..5, columns in `AUS` order.
      image_size: output side `S` in pixels.
      rng: head motion, gaze, blinks, lighting drift and pixel noise.
    Returns:
      uint8 `[T, S, S, 3]`.
    """
    intensities = np.asarray(intensities, np.float32)
    n = len(intensities)
    motion = _sample_motion(rng, n)
    out = np.empty((n, image_size, image_size, 3), np.uint8)
    for t0 in range(0, n, _CHUNK):
        sl = slice(t0, min(t0 + _CHUNK, n))
        m = {k: val[sl].astype(np.float32)[:, None, None] for k, val in motion.items()}
        a = {au: appearance(intensities[sl, _COL[au]])[:, None, None] for au in AUS}
        cv = _Canvas(image_size, {k: val[sl] for k, val in motion.items()}, identity)
        _draw_head(cv, identity, a)
        _draw_brows_eyes(cv, identity, a, m)
        _draw_nose_mouth(cv, identity, a)
        img = cv.img
        ramp = np.cos(m["grad_dir"]) * cv.x + np.sin(m["grad_dir"]) * cv.y
        img *= (m["bright"] + m["grad"] * ramp)[..., None]
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.012)
        out[sl] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out
