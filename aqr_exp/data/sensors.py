"""The sensor rig and the two sensor models: a ray-cast spinning LiDAR and flat-shaded
pinhole cameras. Both see the same `BodySet`, so the two modalities agree.

Frames follow nuScenes: ego x forward, y left, z up; the LiDAR is yawed by -90 deg (its x
points to the ego's right); cameras look along their z axis with x right and y down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from aqr_exp.data.world import BodySet

# Camera axes (x right, y down, z forward) in the frame of a camera looking along ego x.
_CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_FULL_WIDTH, _FULL_HEIGHT = 1600, 900  # the real cameras' resolution


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """A 4x4 rigid transform."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    return m


def quaternion(rotation: np.ndarray) -> list[float]:
    """[w, x, y, z] of a rotation matrix (nuScenes' convention), w >= 0."""
    m = rotation
    w = math.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, m[2, 1] - m[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, m[0, 2] - m[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, m[1, 0] - m[0, 1])
    return [w, x, y, z]


@dataclass(frozen=True)
class Sensor:
    """One sensor's mounting on the ego (and, for a camera, its intrinsics at 1600x900)."""

    channel: str
    translation: tuple[float, float, float]
    yaw_deg: float
    focal: float = 0.0
    principal: tuple[float, float] = (0.0, 0.0)

    @property
    def is_camera(self) -> bool:
        return self.channel.startswith("CAM")

    def rotation(self) -> np.ndarray:
        """Sensor-to-ego rotation."""
        r = rot_z(math.radians(self.yaw_deg))
        return r @ _CAM_AXES if self.is_camera else r

    def to_ego(self) -> np.ndarray:
        return pose(self.rotation(), np.array(self.translation))

    def intrinsic(self, width: int, height: int) -> np.ndarray:
        """The real camera's intrinsics scaled to the generated image size."""
        sx, sy = width / _FULL_WIDTH, height / _FULL_HEIGHT
        return np.array(
            [
                [self.focal * sx, 0.0, self.principal[0] * sx],
                [0.0, self.focal * sy, self.principal[1] * sy],
                [0.0, 0.0, 1.0],
            ]
        )


# Mountings and intrinsics close to nuScenes' own rig.
LIDAR = Sensor("LIDAR_TOP", (0.943713, 0.0, 1.84023), -90.0)
CAMERAS: tuple[Sensor, ...] = (
    Sensor("CAM_FRONT", (1.70, 0.016, 1.51), 0.0, 1266.4, (816.3, 491.5)),
    Sensor("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -55.0, 1260.8, (807.9, 495.3)),
    Sensor("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, 1272.6, (826.6, 479.8)),
    Sensor("CAM_BACK", (0.03, 0.0, 1.57), 180.0, 809.2, (829.2, 481.8)),
    Sensor("CAM_BACK_LEFT", (1.04, 0.48, 1.56), 110.0, 1256.7, (817.8, 451.9)),
    Sensor("CAM_BACK_RIGHT", (1.05, -0.48, 1.56), -110.0, 1259.5, (807.3, 501.2)),
)


def bodies_in_frame(bodies: BodySet, frame_to_global: np.ndarray) -> BodySet:
    """The bodies seen from a frame whose z axis is vertical (the ego's, the LiDAR's)."""
    rot = frame_to_global[:3, :3]
    yaw = math.atan2(rot[1, 0], rot[0, 0])
    r2 = rot[:2, :2]
    return BodySet(
        xy=(bodies.xy - frame_to_global[:2, 3]) @ r2,
        z0=bodies.z0 - frame_to_global[2, 3],
        yaw=bodies.yaw - yaw,
        size=bodies.size,
        color=bodies.color,
        intensity=bodies.intensity,
        part_body=bodies.part_body,
        part_frac=bodies.part_frac,
    )


@dataclass
class Scan:
    """One LiDAR sweep: points (N, 5: x, y, z, intensity, ring) in the LiDAR frame, the body
    each point hit (-1 for the ground), and per body its points and the rays that would hit
    it were nothing in front of it (annotated objects keep every point they get)."""

    points: np.ndarray
    owner: np.ndarray
    points_per_body: np.ndarray
    rays_per_body: np.ndarray


class Lidar:
    """A spinning LiDAR: beams denser near the horizon (where the objects are), one ray per
    beam and azimuth step, first hit wins. Ground and clutter returns are thinned so a
    frame stays ~20k points while a traffic cone at 25 m still gets ~10."""

    def __init__(
        self,
        height: float = LIDAR.translation[2],
        azimuth_steps: int = 900,
        max_range: float = 60.0,
        ground_keep: float = 0.35,
        clutter_keep: float = 0.5,
    ) -> None:
        self.height = height
        self.max_range = max_range
        self.ground_keep = ground_keep
        self.clutter_keep = clutter_keep
        self.elevation = np.radians(
            np.concatenate(
                [
                    np.linspace(-25.0, -10.0, 6),
                    np.linspace(-9.2, 1.0, 28),  # where the objects are
                    np.linspace(1.8, 10.0, 5),
                ]
            )
        )
        self.azimuth = -math.pi + (np.arange(azimuth_steps) + 0.5) * (2 * math.pi / azimuth_steps)
        ce, se = np.cos(self.elevation)[:, None], np.sin(self.elevation)[:, None]
        self.dirs = np.stack(
            [
                ce * np.cos(self.azimuth)[None],
                ce * np.sin(self.azimuth)[None],
                np.broadcast_to(se, (len(se), azimuth_steps)),
            ],
            axis=-1,
        )
        with np.errstate(divide="ignore"):
            t_ground = np.where(se < 0, -height / se, np.inf)
        t_ground = np.where(t_ground <= max_range, t_ground, np.inf)
        self.t_ground = np.broadcast_to(t_ground, (len(se), azimuth_steps)).copy()

    def scan(self, bodies: BodySet, num_objects: int, rng: np.random.Generator) -> Scan:
        """Cast every ray against the ground and the bodies (given in the LiDAR frame; the
        first `num_objects` are annotated objects, the rest clutter)."""
        t_buf = self.t_ground.copy()
        owner = np.full(t_buf.shape, -1, dtype=np.int64)
        depth_in = np.zeros(t_buf.shape)  # how far the ray runs inside the part it hit
        total = np.zeros(len(bodies), dtype=np.int64)
        centre, half, part_yaw = bodies.parts_geometry()
        ranges = bodies.part_ranges()
        feet = bodies.footprints()
        for b in range(len(bodies)):
            window = self._window(bodies, b, feet[b])
            if window is None:
                continue
            rows, cols = window
            dirs = self.dirs[rows, cols]
            best_t = np.full(dirs.shape[:2], np.inf)
            best_in = np.zeros(dirs.shape[:2])
            for p in range(ranges[b], ranges[b + 1]):
                t_hit, thickness = _ray_box(dirs, centre[p], half[p], part_yaw[p])
                better = t_hit < best_t
                best_t = np.where(better, t_hit, best_t)
                best_in = np.where(better, thickness, best_in)
            best_t = np.where(best_t <= self.max_range, best_t, np.inf)
            hit = np.isfinite(best_t)
            total[b] = int(hit.sum())
            if not total[b]:
                continue
            cur = t_buf[rows, cols]
            upd = best_t < cur
            t_buf[rows, cols] = np.where(upd, best_t, cur)
            owner[rows, cols] = np.where(upd, b, owner[rows, cols])
            depth_in[rows, cols] = np.where(upd, best_in, depth_in[rows, cols])

        beam, col = np.nonzero(np.isfinite(t_buf))
        who = owner[beam, col]
        keep_p = np.where(
            who < 0, self.ground_keep, np.where(who < num_objects, 1.0, self.clutter_keep)
        )
        keep = rng.random(len(who)) < keep_p
        beam, col, who = beam[keep], col[keep], who[keep]
        t = t_buf[beam, col]
        # Points on a body sit a few mm inside the surface the ray entered, so they lie
        # strictly inside its box; ground points sit a few mm below the boxes' bottoms.
        inset = np.minimum(rng.uniform(0.005, 0.03, len(t)), 0.45 * depth_in[beam, col])
        xyz = self.dirs[beam, col] * np.where(who >= 0, t + inset, t)[:, None]
        ground = who < 0
        xyz[ground, 2] = -self.height - rng.uniform(0.005, 0.03, int(ground.sum()))
        base = np.where(ground, 4.0, bodies.intensity[np.maximum(who, 0)])
        intensity = np.clip(base + rng.normal(0.0, 3.0, len(t)), 0.0, 255.0)
        points = np.concatenate([xyz, intensity[:, None], beam[:, None].astype(np.float64)], axis=1)
        per_body = np.bincount(who[who >= 0], minlength=len(bodies))
        return Scan(points.astype(np.float32), who, per_body, total)

    def _window(
        self, bodies: BodySet, b: int, corners: np.ndarray
    ) -> tuple[slice, np.ndarray] | None:
        """The beams (rows) and azimuth steps (columns) that can hit body b (footprint
        `corners`)."""
        dist = np.hypot(corners[:, 0], corners[:, 1])
        centre_az = math.atan2(bodies.xy[b, 1], bodies.xy[b, 0])
        rel = (
            np.remainder(
                np.arctan2(corners[:, 1], corners[:, 0]) - centre_az + math.pi, 2 * math.pi
            )
            - math.pi
        )
        r = float(np.hypot(*bodies.xy[b]))
        reach = 0.5 * float(np.hypot(bodies.size[b, 0], bodies.size[b, 1]))
        near, far = max(0.3, r - reach), max(float(dist.max()), r + reach)
        if near > self.max_range:
            return None
        z_bot, z_top = bodies.z0[b], bodies.z0[b] + bodies.size[b, 2]
        el_lo = math.atan2(z_bot, near if z_bot < 0 else far)
        el_hi = math.atan2(z_top, near if z_top > 0 else far)
        b0 = int(np.searchsorted(self.elevation, el_lo, "left"))
        b1 = int(np.searchsorted(self.elevation, el_hi, "right"))
        if b1 <= b0:
            return None
        n_az = len(self.azimuth)
        step = 2 * math.pi / n_az
        lo = centre_az + float(rel.min()) + math.pi
        hi = centre_az + float(rel.max()) + math.pi
        cols = np.arange(math.floor(lo / step) - 1, math.ceil(hi / step) + 1) % n_az
        return slice(b0, b1), cols


def _ray_box(
    dirs: np.ndarray, centre: np.ndarray, half: np.ndarray, yaw: float
) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays from the origin against a z-yawed box: the entry distance (inf
    where missed; rays that only graze an edge count as misses) and the length inside."""
    c, s = math.cos(yaw), math.sin(yaw)
    # Ray origin and directions in the box's frame.
    origin = np.array([-c * centre[0] - s * centre[1], s * centre[0] - c * centre[1], -centre[2]])
    d = np.stack(
        [c * dirs[..., 0] + s * dirs[..., 1], -s * dirs[..., 0] + c * dirs[..., 1], dirs[..., 2]],
        axis=-1,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-half - origin) * inv
        t2 = (half - origin) * inv
    t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
    thickness = t_far - t_near
    hit = (thickness > 0.02) & (t_near > 0)
    return np.where(hit, t_near, np.inf), np.where(hit, thickness, 0.0)


# Box corners: index = 4 * (z > 0) + 2 * (y > 0) + (x > 0); faces as corner loops with
# their outward normals.
_CORNER_SIGNS = np.array(
    [[(i & 1) * 2 - 1, (i >> 1 & 1) * 2 - 1, (i >> 2 & 1) * 2 - 1] for i in range(8)],
    dtype=np.float64,
)
_FACES = np.array(
    [[1, 3, 7, 5], [0, 4, 6, 2], [2, 6, 7, 3], [0, 1, 5, 4], [4, 5, 7, 6], [0, 2, 3, 1]]
)
_FACE_NORMALS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)
_LIGHT = np.array([0.55, 0.35, 0.76])  # a fixed sun, so faces of different headings differ
_SKY_TOP, _SKY_HORIZON = np.array([170, 190, 215]), np.array([215, 220, 225])
_GROUND_FAR, _GROUND_NEAR = np.array([125, 124, 120]), np.array([95, 95, 92])
_SHADOW = (60, 60, 58)
_NEAR = 0.1


def part_corners(bodies: BodySet) -> np.ndarray:
    """(P, 8, 3) corners of every part (in the frame the bodies are given in)."""
    centre, half, yaw = bodies.parts_geometry()
    local = _CORNER_SIGNS[None] * half[:, None]
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = centre[:, None, 0] + c * local[..., 0] - s * local[..., 1]
    y = centre[:, None, 1] + s * local[..., 0] + c * local[..., 1]
    z = centre[:, None, 2] + local[..., 2]
    return np.stack([x, y, z], axis=-1)


class CameraRenderer:
    """Flat-shaded boxes over a sky and ground backdrop, painter's order by depth."""

    def __init__(self, camera: Sensor, width: int, height: int) -> None:
        self.camera = camera
        self.width, self.height = width, height
        self.k = camera.intrinsic(width, height)
        self.background = self._backdrop()

    def _backdrop(self) -> np.ndarray:
        """Sky above the horizon (row cy for a level camera), ground below, as gradients."""
        rows = np.arange(self.height, dtype=np.float64)[:, None]
        horizon = self.k[1, 2]
        sky_f = np.clip(rows / max(horizon, 1.0), 0.0, 1.0)
        sky = _SKY_TOP + (_SKY_HORIZON - _SKY_TOP) * sky_f
        ground_f = np.clip((rows - horizon) / max(self.height - horizon, 1.0), 0.0, 1.0)
        ground = _GROUND_FAR + (_GROUND_NEAR - _GROUND_FAR) * ground_f
        col = np.where(rows < horizon, sky, ground)
        return np.broadcast_to(col[:, None, :], (self.height, self.width, 3)).astype(np.uint8)

    def render(self, bodies: BodySet, corners: np.ndarray, cam_to_global: np.ndarray) -> np.ndarray:
        """An RGB image of the bodies (global frame; `corners` from `part_corners`)."""
        img = self.background.copy()
        world_to_cam = np.linalg.inv(cam_to_global)
        rot, trans = world_to_cam[:3, :3], world_to_cam[:3, 3]
        cam_pos = cam_to_global[:3, 3]
        cam_corners = corners @ rot.T + trans
        in_front = cam_corners[..., 2].max(axis=1) > _NEAR
        # Shadows: each body's footprint, a little enlarged, dark on the ground.
        for b, foot in enumerate(bodies.footprints()):
            grow = foot - bodies.xy[b]
            grow = foot + 0.15 * grow / np.linalg.norm(grow, axis=1, keepdims=True)
            pts = np.concatenate([grow, np.zeros((4, 1))], axis=1) @ rot.T + trans
            self._fill(img, pts, _SHADOW)

        faces = []
        part_yaw = bodies.yaw[bodies.part_body]
        for p in np.nonzero(in_front)[0]:
            c, s = math.cos(part_yaw[p]), math.sin(part_yaw[p])
            normals = _FACE_NORMALS @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
            centres = corners[p][_FACES].mean(axis=1)
            facing = np.einsum("fd,fd->f", normals, centres - cam_pos) < 0
            color = bodies.color[bodies.part_body[p]].astype(np.float64)
            for f in np.nonzero(facing)[0]:
                shade = 0.55 + 0.45 * max(0.0, float(normals[f] @ _LIGHT))
                faces.append(
                    (float(np.linalg.norm(centres[f] - cam_pos)), p, f, tuple(color * shade))
                )
        for _, p, f, color in sorted(faces, key=lambda x: -x[0]):
            self._fill(img, cam_corners[p][_FACES[f]], color)
        return img

    def _fill(self, img: np.ndarray, poly_cam: np.ndarray, color: tuple[float, ...]) -> None:
        poly = _clip_near(poly_cam)
        if len(poly) < 3:
            return
        uv = poly[:, :2] / poly[:, 2:3] @ self.k[:2, :2].T + self.k[:2, 2]
        if (
            uv[:, 0].max() < 0
            or uv[:, 1].max() < 0
            or uv[:, 0].min() >= self.width
            or uv[:, 1].min() >= self.height
        ):
            return
        uv = np.clip(uv, -1e5, 1e5)
        pts = np.round(uv * 16).astype(np.int32)
        cv2.fillPoly(img, [pts], tuple(round(v) for v in color), lineType=cv2.LINE_AA, shift=4)


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Clip a convex polygon (K, 3) in camera coordinates to z >= _NEAR."""
    inside = poly[:, 2] >= _NEAR
    if inside.all():
        return poly
    if not inside.any():
        return poly[:0]
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        if a[2] >= _NEAR:
            out.append(a)
        if (a[2] >= _NEAR) != (b[2] >= _NEAR):
            out.append(a + (b - a) * ((_NEAR - a[2]) / (b[2] - a[2])))
    return np.array(out)
