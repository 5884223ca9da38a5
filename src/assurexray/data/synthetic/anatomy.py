"""Bones as projected-thickness shapes (hollow tubes and ellipsoids) per anatomical scene."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

END_SQUASH = 1.6    # bone ends are caps this many times flatter than a hemisphere




@dataclass(frozen=True)
class Tube:
    """A hollow cylinder in scene units from p0 to p1 (p1 = the joint end)."""
    name: str
    p0: tuple[float, float]
    p1: tuple[float, float]
    radius: float
    flare0: float = 0.0       # extra radius, as a fraction, bulging at each end
    flare1: float = 0.0
    cortex: float = 0.3       # cortical thickness as a fraction of the shaft radius (1: solid)
    marrow: float = 0.2       # medulla density relative to cortex
    density: float = 1.0



@dataclass(frozen=True)
class Blob:
    """A hollow ellipsoid (carpal, talus, femoral head, iliac wing); depth = its thickness."""
    name: str
    center: tuple[float, float]
    axes: tuple[float, float]
    angle: float = 0.0
    depth: float = 0.0        # 0: min(axes)
    cortex: float = 0.25
    marrow: float = 0.3
    density: float = 1.0


def build_scene(scene: str, rng, view: str) -> tuple[list, list]:
    """(bones, soft tissue) of one scene in units; the joint is at the origin, limbs run along y."""
    s = rng.uniform(0.85, 1.15)
    spread = {"frontal": 1.0, "oblique": 0.7, "lateral": 0.35}[view]
    builders = {"knee": _knee, "ankle": _ankle, "elbow": _elbow, "wrist": _wrist,
                "shoulder": _shoulder, "hip": _hip, "hand": _hand, "foot": _foot}
    return builders[scene](s, spread)


def _knee(s, spread):
    fib = 0.27 * s * spread
    bones = [Tube("femur", (0, -3), (0, -0.03), 0.16 * s, flare1=0.85),
             Tube("tibia", (0, 3), (0, 0.03), 0.14 * s, flare1=0.75),
             Tube("fibula", (fib, 3), (fib, 0.2 * s), 0.05 * s, flare1=0.5)]
    if spread < 0.5:
        bones.append(Blob("patella", (-0.26 * s, -0.1 * s), (0.06 * s, 0.12 * s)))
    return bones, [Tube("soft", (0, -3), (0, 3), 0.4 * s, cortex=1.0)]


def _ankle(s, spread):
    fib = 0.22 * s * spread
    bones = [Tube("tibia", (0, -3), (0, -0.03), 0.12 * s, flare1=0.6),
             Tube("fibula", (fib, -3), (fib, 0.1 * s), 0.045 * s, flare1=0.5),
             Blob("talus", (0, 0.17 * s), (0.17 * s, 0.12 * s)),
             Blob("calcaneus", (0.12 * s, 0.42 * s), (0.3 * s, 0.13 * s), angle=0.2)]
    return bones, [Tube("soft", (0, -3), (0.1, 0.5), 0.4 * s, cortex=1.0)]


def _elbow(s, spread):
    off = 0.085 * s * (0.5 + spread / 2)
    bones = [Tube("humerus", (0, -3), (0, -0.03), 0.12 * s, flare1=1.0),
             Tube("radius", (-off, 3), (-off, 0.04), 0.055 * s, flare1=0.4),
             Tube("ulna", (off, 3), (off, 0.0), 0.06 * s, flare1=0.6)]
    return bones, [Tube("soft", (0, -3), (0, 3), 0.42 * s, cortex=1.0)]


def _wrist(s, spread):
    off = 0.09 * s * (0.5 + spread / 2)
    bones = [Tube("radius", (-off, -3), (-off, -0.03), 0.075 * s, flare1=0.6),
             Tube("ulna", (off, -3), (off, -0.06), 0.05 * s, flare1=0.3)]
    for i in range(7):
        bones.append(Blob(f"carpal{i}", ((i % 4 - 1.5) * 0.09 * s, (0.09 + 0.13 * (i // 4)) * s),
                          (0.05 * s, 0.045 * s)))
    for i in range(4):
        x = (i - 1.5) * 0.085 * s
        bones.append(Tube(f"metacarpal{i}", (x * 1.3, 3), (x, 0.34 * s), 0.035 * s, 0.4, 0.4))
    return bones, [Tube("soft", (0, -3), (0, 3), 0.33 * s, cortex=1.0)]


def _shoulder(s, spread):
    bones = [Tube("humerus", (0.1, 3), (0, 0.05), 0.12 * s, flare1=1.3),
             Blob("glenoid", (-0.12 * s, -0.12 * s), (0.3 * s, 0.11 * s), angle=-0.5, depth=0.08),
             Tube("clavicle", (-1.8, -0.55 * s), (0.3 * s, -0.42 * s), 0.05 * s, 0.2, 0.4)]
    return bones, [Blob("soft", (0.1, 0.3), (1.4 * s, 2.5), cortex=1.0, depth=0.5 * s)]


def _hip(s, spread):
    bones = [Blob("ilium", (-0.5 * s, -0.6 * s), (0.7 * s, 0.42 * s), angle=0.35, depth=0.07,
                  cortex=0.12),
             Blob("roof", (-0.08 * s, -0.16 * s), (0.3 * s, 0.1 * s), angle=-0.25, depth=0.12),
             Tube("ischium", (-0.3 * s, 0.7 * s), (-0.08 * s, 0.12 * s), 0.1 * s, flare0=0.5),
             Blob("pubis", (-0.55 * s, 0.45 * s), (0.32 * s, 0.2 * s), angle=-0.2, depth=0.06,
                  cortex=0.35, marrow=0.0),
             Blob("sacrum", (-1.35 * s, -0.45 * s), (0.3 * s, 0.6 * s), depth=0.15),
             Blob("head", (0.0, 0.0), (0.19 * s, 0.19 * s)),
             Tube("neck", (0.42 * s, 0.3 * s), (0.05 * s, 0.03 * s), 0.09 * s),
             Tube("femur", (0.62 * s, 3), (0.46 * s, 0.38 * s), 0.14 * s, flare1=0.7)]
    return bones, [Blob("soft", (-0.3, 0.2), (5.0, 4.0), cortex=1.0, depth=0.35 * s)]


def _rays(s, spread, lengths, base_y, n_rays, carpals):
    bones = [Blob(f"base{i}", ((i % 3 - 1) * 0.13 * s, base_y + 0.12 * s * (i // 3)),
                  (0.07 * s, 0.06 * s)) for i in range(carpals)]
    soft = [Blob("palm", (0, base_y + 0.35 * s), (0.4 * s, 0.55 * s), cortex=1.0, depth=0.2 * s)]
    for i in range(n_rays):
        angle = (i - (n_rays - 1) / 2) * 0.16 * (0.4 + 0.6 * spread)
        d = np.array([math.sin(angle), math.cos(angle)])
        p = np.array([(i - (n_rays - 1) / 2) * 0.1 * s, base_y + 0.2 * s])
        for j, length in enumerate(lengths):
            q = p + d * length * s
            radius = (0.05 if j == 0 else 0.04) * s
            bones.append(Tube(f"ray{i}_{j}", tuple(p), tuple(q - d * 0.02 * s), radius, 0.5, 0.4))
            p = q
        soft.append(Tube(f"finger{i}", (0, base_y + 0.2 * s), tuple(p), 0.08 * s, cortex=1.0))
    return bones, soft


def _hand(s, spread):
    return _rays(s, spread, [0.62, 0.38, 0.25, 0.18], -0.7, 5, 6)


def _foot(s, spread):
    return _rays(s, spread, [0.75, 0.3, 0.18], -0.8, 5, 6)


def scaled(shape, origin: np.ndarray, rot: np.ndarray, unit: float):
    """A scene shape moved to pixel coordinates (rotation ``rot``, ``unit`` px per scene unit)."""
    def tf(p):
        return tuple(origin + unit * rot @ np.asarray(p, dtype=float))
    if isinstance(shape, Tube):
        return replace(shape, p0=tf(shape.p0), p1=tf(shape.p1), radius=shape.radius * unit)
    major = rot @ [math.cos(shape.angle), math.sin(shape.angle)]   # rot may include a mirror
    return replace(shape, center=tf(shape.center), axes=(shape.axes[0] * unit, shape.axes[1] * unit),
                   angle=math.atan2(major[1], major[0]), depth=shape.depth * unit)


def window(shape_hw, x0, y0, x1, y1):
    """Clipped integer window and its pixel-centre coordinate grids (xs: 1 x w, ys: h x 1)."""
    h, w = shape_hw
    ix0, iy0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
    ix1, iy1 = min(int(math.ceil(x1)) + 1, w), min(int(math.ceil(y1)) + 1, h)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    xs = np.arange(ix0, ix1, dtype=np.float32)[None, :]
    ys = np.arange(iy0, iy1, dtype=np.float32)[:, None]
    return (slice(iy0, iy1), slice(ix0, ix1)), xs, ys


def tube_radius(t: Tube, tc):
    """Radius along the axis (tc in [0, 1]): shaft radius plus end bulges (metaphysis, head)."""
    length = math.dist(t.p0, t.p1)
    reach = 1.6 * t.radius / max(length, 1e-6)
    bulge = t.flare0 * np.exp(-(tc / reach) ** 2) + t.flare1 * np.exp(-((1 - tc) / reach) ** 2)
    return t.radius * (1 + bulge)


def draw_tube(acc: np.ndarray, t: Tube) -> None:
    """Add the projected thickness of a hollow tube (rounded ends) to ``acc`` (pixels)."""
    r_max = t.radius * (1 + max(t.flare0, t.flare1))
    win = window(acc.shape, min(t.p0[0], t.p1[0]) - r_max, min(t.p0[1], t.p1[1]) - r_max,
                  max(t.p0[0], t.p1[0]) + r_max, max(t.p0[1], t.p1[1]) + r_max)
    if win is None:
        return
    sl, xs, ys = win
    length = max(math.dist(t.p0, t.p1), 1e-6)
    ux, uy = (t.p1[0] - t.p0[0]) / length, (t.p1[1] - t.p0[1]) / length
    rx, ry = xs - t.p0[0], ys - t.p0[1]
    along = (rx * ux + ry * uy) / length
    tc = np.clip(along, 0, 1)
    # ends are flattened caps (articular surfaces), not hemispheres
    dist2 = (rx * -uy + ry * ux) ** 2 + ((along - tc) * length * END_SQUASH) ** 2
    r = tube_radius(t, tc)
    outer = np.sqrt(np.maximum(r * r - dist2, 0))
    ri = np.maximum(r - t.cortex * t.radius, 0)
    inner = np.sqrt(np.maximum(ri * ri - dist2, 0))
    acc[sl] += t.density * 2 * (outer - inner * (1 - t.marrow))


def draw_blob(acc: np.ndarray, b: Blob) -> None:
    """Add the projected thickness of a hollow ellipsoid to ``acc`` (pixels)."""
    a, c = b.axes
    reach = max(a, c)
    (cx, cy) = b.center
    win = window(acc.shape, cx - reach, cy - reach, cx + reach, cy + reach)
    if win is None:
        return
    sl, xs, ys = win
    cos, sin = math.cos(b.angle), math.sin(b.angle)
    dx, dy = xs - b.center[0], ys - b.center[1]
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    depth = b.depth or min(a, c)
    shell = b.cortex * min(a, c)
    outer = depth * np.sqrt(np.maximum(1 - (u / a) ** 2 - (v / c) ** 2, 0))
    ai, ci = max(a - shell, 1e-3), max(c - shell, 1e-3)
    inner = max(depth - shell, 0) * np.sqrt(np.maximum(1 - (u / ai) ** 2 - (v / ci) ** 2, 0))
    acc[sl] += b.density * 2 * (outer - inner * (1 - b.marrow))


def draw_shape(acc: np.ndarray, shape) -> None:
    (draw_tube if isinstance(shape, Tube) else draw_blob)(acc, shape)
