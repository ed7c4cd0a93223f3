"""The synthetic world: the ten nuScenes detection classes as drawn shapes, and one scene's
simulation (ego motion, objects that appear, move and leave, static clutter).

Everything lives in the global frame: z up, the ground at z = 0, box bottoms on the ground.
An object is a box (length along its heading) made of solid parts; the annotated box is the
hull of its parts, so every LiDAR point on an object lies inside its annotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A part: (x0, x1, y0, y1, z0, z1) as fractions of the box's length, width (both from -0.5 to
# 0.5, x forward) and height (0 at the bottom, 1 at the top).
Part = tuple[float, float, float, float, float, float]
FULL_BOX: tuple[Part, ...] = ((-0.5, 0.5, -0.5, 0.5, 0.0, 1.0),)


@dataclass(frozen=True)
class ObjectClass:
    """How the generator draws one detection class (the label is its index in `CLASSES`)."""

    name: str
    category: str  # the nuScenes category name
    size: tuple[float, float, float]  # mean length, width, height (m)
    color: tuple[int, int, int]  # flat RGB colour in the camera images
    intensity: float  # mean LiDAR intensity
    parts: tuple[Part, ...]
    weight: float  # relative frequency
    p_moving: float
    speed: tuple[float, float]  # m/s, for the moving ones
    moving_attribute: str  # '' for classes without attributes
    static_attribute: str


# Label order is mmdet3d's NuScenesDataset.METAINFO['classes']. The attributes are the ones
# NuScenesMetric assigns to a prediction from its speed (> 0.2 m/s means moving), so ground
# truth fed back as predictions scores a perfect attribute error.
CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass(
        "car",
        "vehicle.car",
        (4.6, 1.9, 1.7),
        (235, 23, 23),
        40.0,
        ((-0.5, 0.5, -0.5, 0.5, 0.0, 0.55), (-0.32, 0.18, -0.45, 0.45, 0.55, 1.0)),
        0.16,
        0.4,
        (3.0, 9.0),
        "vehicle.moving",
        "vehicle.parked",
    ),
    ObjectClass(
        "truck",
        "vehicle.truck",
        (7.0, 2.5, 3.0),
        (235, 129, 23),
        36.0,
        ((-0.5, 0.24, -0.5, 0.5, 0.0, 1.0), (0.26, 0.5, -0.46, 0.46, 0.0, 0.72)),
        0.09,
        0.3,
        (3.0, 8.0),
        "vehicle.moving",
        "vehicle.parked",
    ),
    ObjectClass(
        "trailer",
        "vehicle.trailer",
        (12.0, 2.9, 3.9),
        (23, 235, 129),
        30.0,
        ((-0.5, 0.42, -0.5, 0.5, 0.0, 1.0), (0.42, 0.5, -0.08, 0.08, 0.0, 0.3)),
        0.07,
        0.15,
        (3.0, 7.0),
        "vehicle.moving",
        "vehicle.parked",
    ),
    ObjectClass(
        "bus",
        "vehicle.bus.rigid",
        (11.0, 2.9, 3.5),
        (235, 228, 23),
        45.0,
        FULL_BOX,
        0.07,
        0.4,
        (3.0, 8.0),
        "vehicle.moving",
        "vehicle.stopped",
    ),
    ObjectClass(
        "construction_vehicle",
        "vehicle.construction",
        (6.5, 2.8, 3.2),
        (235, 23, 129),
        38.0,
        (
            (-0.5, 0.2, -0.5, 0.5, 0.0, 0.55),
            (-0.2, 0.2, -0.45, 0.0, 0.55, 1.0),
            (0.2, 0.5, -0.15, 0.15, 0.1, 0.8),
        ),
        0.07,
        0.2,
        (1.0, 3.0),
        "vehicle.moving",
        "vehicle.parked",
    ),
    ObjectClass(
        "bicycle",
        "vehicle.bicycle",
        (1.7, 0.6, 1.3),
        (23, 94, 235),
        25.0,
        ((-0.5, 0.5, -0.15, 0.15, 0.0, 0.65), (-0.25, 0.1, -0.5, 0.5, 0.65, 1.0)),
        0.09,
        0.5,
        (2.0, 5.0),
        "cycle.with_rider",
        "cycle.without_rider",
    ),
    ObjectClass(
        "motorcycle",
        "vehicle.motorcycle",
        (2.1, 0.8, 1.5),
        (23, 217, 235),
        28.0,
        ((-0.5, 0.5, -0.3, 0.3, 0.0, 0.55), (-0.25, 0.15, -0.5, 0.5, 0.55, 1.0)),
        0.09,
        0.4,
        (3.0, 9.0),
        "cycle.with_rider",
        "cycle.without_rider",
    ),
    ObjectClass(
        "pedestrian",
        "human.pedestrian.adult",
        (0.7, 0.7, 1.75),
        (217, 23, 235),
        20.0,
        (
            (-0.5, 0.5, -0.3, 0.3, 0.0, 0.47),
            (-0.3, 0.3, -0.5, 0.5, 0.47, 0.86),
            (-0.18, 0.18, -0.18, 0.18, 0.86, 1.0),
        ),
        0.14,
        0.6,
        (0.8, 1.8),
        "pedestrian.moving",
        "pedestrian.standing",
    ),
    ObjectClass(
        "traffic_cone",
        "movable_object.trafficcone",
        (0.4, 0.4, 1.0),
        (59, 235, 23),
        80.0,
        (
            (-0.5, 0.5, -0.5, 0.5, 0.0, 0.12),
            (-0.42, 0.42, -0.42, 0.42, 0.12, 0.45),
            (-0.33, 0.33, -0.33, 0.33, 0.45, 0.75),
            (-0.22, 0.22, -0.22, 0.22, 0.75, 1.0),
        ),
        0.1,
        0.0,
        (0.0, 0.0),
        "",
        "",
    ),
    ObjectClass(
        "barrier",
        "movable_object.barrier",
        (2.5, 0.5, 1.0),
        (94, 23, 235),
        60.0,
        ((-0.5, 0.5, -0.5, 0.5, 0.0, 0.35), (-0.5, 0.5, -0.25, 0.25, 0.35, 1.0)),
        0.12,
        0.0,
        (0.0, 0.0),
        "",
        "",
    ),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)

# Unannotated clutter is drawn in near-neutral colours, so no class colour is ambiguous.
_WALL_COLORS = ((150, 146, 140), (128, 126, 124), (168, 160, 150), (110, 112, 116))
_SMALL_CLUTTER_COLORS = ((85, 85, 88), (105, 100, 95), (140, 138, 135))

R_MIN = 3.0  # objects' centres lie between R_MIN and R_MAX metres from the ego
R_MAX = 28.0
_EGO_CLEARANCE = 3.0  # no object's footprint comes this close to the ego position
_GAP = 0.3  # free space kept around every footprint
_SPAWN_TRIES = 40


@dataclass
class BodySet:
    """Boxes made of parts, in one frame: footprint centres, yaw, sizes, looks."""

    xy: np.ndarray  # (M, 2) footprint centre
    z0: np.ndarray  # (M,) bottom height
    yaw: np.ndarray  # (M,)
    size: np.ndarray  # (M, 3) length, width, height
    color: np.ndarray  # (M, 3) uint8 RGB
    intensity: np.ndarray  # (M,)
    part_body: np.ndarray  # (P,) index of each part's body, bodies' parts contiguous
    part_frac: np.ndarray  # (P, 6) the part as fractions of its body's box

    def __len__(self) -> int:
        return len(self.yaw)

    def parts_geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each part as a box: centre (P, 3), half sizes (P, 3), yaw (P,)."""
        b = self.part_body
        size = self.size[b]
        f = self.part_frac
        local = np.stack(
            [(f[:, 0] + f[:, 1]) / 2 * size[:, 0], (f[:, 2] + f[:, 3]) / 2 * size[:, 1]], axis=1
        )
        cos, sin = np.cos(self.yaw[b]), np.sin(self.yaw[b])
        cx = self.xy[b, 0] + cos * local[:, 0] - sin * local[:, 1]
        cy = self.xy[b, 1] + sin * local[:, 0] + cos * local[:, 1]
        cz = self.z0[b] + (f[:, 4] + f[:, 5]) / 2 * size[:, 2]
        half = np.stack([f[:, 1] - f[:, 0], f[:, 3] - f[:, 2], f[:, 5] - f[:, 4]], axis=1)
        return np.stack([cx, cy, cz], axis=1), half * size / 2, self.yaw[b]

    def footprints(self) -> np.ndarray:
        """(M, 4, 2) corners of each body's footprint."""
        return footprint(self.xy, self.yaw, self.size[:, 0], self.size[:, 1])

    def part_ranges(self) -> np.ndarray:
        """(M + 1,) offsets: body i owns parts [r[i], r[i + 1])."""
        return np.searchsorted(self.part_body, np.arange(len(self) + 1))

    @staticmethod
    def concat(sets: list[BodySet]) -> BodySet:
        offsets = np.cumsum([0] + [len(s) for s in sets[:-1]])
        return BodySet(
            xy=np.concatenate([s.xy for s in sets]),
            z0=np.concatenate([s.z0 for s in sets]),
            yaw=np.concatenate([s.yaw for s in sets]),
            size=np.concatenate([s.size for s in sets]),
            color=np.concatenate([s.color for s in sets]),
            intensity=np.concatenate([s.intensity for s in sets]),
            part_body=np.concatenate([s.part_body + o for s, o in zip(sets, offsets, strict=True)]),
            part_frac=np.concatenate([s.part_frac for s in sets]),
        )


def make_bodies(
    xy: np.ndarray,
    yaw: np.ndarray,
    size: np.ndarray,
    color: np.ndarray,
    intensity: np.ndarray,
    parts: list[tuple[Part, ...]],
) -> BodySet:
    """Bodies standing on the ground (z0 = 0)."""
    counts = [len(p) for p in parts]
    part_frac = np.array([q for p in parts for q in p], dtype=np.float64).reshape(-1, 6)
    return BodySet(
        xy=np.asarray(xy, dtype=np.float64).reshape(-1, 2),
        z0=np.zeros(len(parts)),
        yaw=np.asarray(yaw, dtype=np.float64).reshape(-1),
        size=np.asarray(size, dtype=np.float64).reshape(-1, 3),
        color=np.asarray(color, dtype=np.uint8).reshape(-1, 3),
        intensity=np.asarray(intensity, dtype=np.float64).reshape(-1),
        part_body=np.repeat(np.arange(len(parts)), counts),
        part_frac=part_frac,
    )


@dataclass
class Track:
    """One object instance: constant size, heading and velocity, alive on key frames
    `first`..`last` of its scene."""

    label: int
    size: np.ndarray  # l, w, h
    yaw: float
    velocity: np.ndarray  # global vx, vy (m/s)
    origin: np.ndarray  # global xy at scene time 0 (the position is origin + velocity * t)
    first: int
    last: int

    @property
    def moving(self) -> bool:
        return bool(np.any(self.velocity != 0.0))

    @property
    def attribute(self) -> str:
        cls = CLASSES[self.label]
        return cls.moving_attribute if self.moving else cls.static_attribute

    def xy(self, t: float) -> np.ndarray:
        return self.origin + self.velocity * t


@dataclass
class SceneSim:
    """One simulated scene: the ego drives straight at constant speed and yaw."""

    ego_start: np.ndarray  # global xy at t = 0
    ego_yaw: float
    ego_speed: float
    key_times: np.ndarray  # (S,) seconds since the scene's start
    tracks: list[Track]
    clutter: BodySet

    def ego_xy(self, t: float) -> np.ndarray:
        heading = np.array([math.cos(self.ego_yaw), math.sin(self.ego_yaw)])
        return self.ego_start + heading * self.ego_speed * t

    def tracks_on(self, key: int) -> list[int]:
        """Indices of the tracks annotated on key frame `key`."""
        return [i for i, tr in enumerate(self.tracks) if tr.first <= key <= tr.last]

    def bodies(self, track_ids: list[int], t: float) -> BodySet:
        """The given tracks at time t followed by the clutter (so body i is track_ids[i])."""
        tracks = [self.tracks[i] for i in track_ids]
        objects = make_bodies(
            xy=np.array([tr.xy(t) for tr in tracks]),
            yaw=np.array([tr.yaw for tr in tracks]),
            size=np.array([tr.size for tr in tracks]),
            color=np.array([CLASSES[tr.label].color for tr in tracks]),
            intensity=np.array([CLASSES[tr.label].intensity for tr in tracks]),
            parts=[CLASSES[tr.label].parts for tr in tracks],
        )
        return BodySet.concat([objects, self.clutter])


def footprint(xy: np.ndarray, yaw: np.ndarray, length: np.ndarray, width: np.ndarray) -> np.ndarray:
    """(N, 4, 2) corners of oriented rectangles."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
    signs = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64) / 2
    dims = np.stack([np.broadcast_to(length, yaw.shape), np.broadcast_to(width, yaw.shape)], axis=1)
    local = signs[None] * dims[:, None]
    cos, sin = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x = xy[:, None, 0] + cos * local[..., 0] - sin * local[..., 1]
    y = xy[:, None, 1] + sin * local[..., 0] + cos * local[..., 1]
    return np.stack([x, y], axis=-1)


def overlaps_any(rect: np.ndarray, rects: np.ndarray) -> bool:
    """Whether rectangle `rect` (4, 2) intersects any of `rects` (N, 4, 2): separating axes."""
    if len(rects) == 0:
        return False
    a = np.broadcast_to(rect, rects.shape)
    separated = np.zeros(len(rects), dtype=bool)
    for poly in (a, rects):
        for k in (0, 1):
            edge = poly[:, k + 1] - poly[:, k]
            axis = np.stack([-edge[:, 1], edge[:, 0]], axis=1)
            pa = np.einsum("nkd,nd->nk", a, axis)
            pb = np.einsum("nkd,nd->nk", rects, axis)
            separated |= (pa.max(1) < pb.min(1)) | (pb.max(1) < pa.min(1))
    return not bool(np.all(separated))


def _rect(xy: np.ndarray, yaw: float, size: np.ndarray, gap: float = _GAP) -> np.ndarray:
    return footprint(xy, np.array([yaw]), size[0] + 2 * gap, size[1] + 2 * gap)[0]


def _make_clutter(
    rng: np.random.Generator, start: np.ndarray, yaw: float, path: float, corridor: np.ndarray
) -> BodySet:
    """Buildings along both sides of the road, poles and street furniture in between."""
    heading = np.array([math.cos(yaw), math.sin(yaw)])
    normal = np.array([-heading[1], heading[0]])
    xy, yaws, sizes, colors = [], [], [], []
    for side in (1.0, -1.0):
        offset = rng.uniform(31.0, 36.0)
        s = -70.0
        while s < path + 70.0:
            length, depth, height = rng.uniform(8, 30), rng.uniform(4, 12), rng.uniform(3, 9)
            xy.append(start + heading * (s + length / 2) + normal * side * (offset + depth / 2))
            yaws.append(yaw)
            sizes.append((length, depth, height))
            colors.append(_WALL_COLORS[rng.integers(len(_WALL_COLORS))])
            s += length + rng.uniform(2, 12)
    rects = [corridor]
    for _ in range(int((path + 60.0) / 5.0)):
        centre = (
            start
            + heading * rng.uniform(-30.0, path + 30.0)
            + normal * rng.choice([-1.0, 1.0]) * rng.uniform(6.0, 28.0)
        )
        if rng.random() < 0.5:
            size = np.array([0.3, 0.3, rng.uniform(3.0, 6.0)])
        else:
            size = np.array([rng.uniform(0.6, 1.6), rng.uniform(0.5, 1.2), rng.uniform(0.6, 1.4)])
        item_yaw = yaw + rng.uniform(-0.2, 0.2)
        rect = _rect(centre, item_yaw, size)
        if overlaps_any(rect, np.array(rects)):
            continue
        rects.append(rect)
        xy.append(centre)
        yaws.append(item_yaw)
        sizes.append(tuple(size))
        colors.append(_SMALL_CLUTTER_COLORS[rng.integers(len(_SMALL_CLUTTER_COLORS))])
    n = len(xy)
    return make_bodies(
        xy=np.array(xy),
        yaw=np.array(yaws),
        size=np.array(sizes),
        color=np.array(colors),
        intensity=rng.uniform(8.0, 30.0, n),
        parts=[FULL_BOX] * n,
    )


def _half_diagonal(size: np.ndarray) -> float:
    return 0.5 * math.hypot(size[0], size[1])


def _in_region(xy: np.ndarray, size: np.ndarray, ego: np.ndarray) -> bool:
    r = float(np.hypot(*(xy - ego)))
    return max(R_MIN, _half_diagonal(size) + _EGO_CLEARANCE) <= r <= R_MAX


def simulate_scene(
    rng: np.random.Generator,
    num_samples: int,
    objects_per_sample: tuple[int, int],
    key_interval: float = 0.5,
) -> SceneSim:
    """Simulate one scene: key frames `key_interval` s apart, every class placed on the first
    frame, the object count kept near a per-scene target, moving objects leaving the region
    or stopping at an obstacle end their track; every track spans >= 2 key frames."""
    ego_yaw = float(rng.uniform(-math.pi, math.pi))
    ego_speed = 0.0 if rng.random() < 0.25 else float(rng.uniform(2.0, 7.0))
    ego_start = rng.uniform(-15.0, 15.0, 2)
    key_times = np.arange(num_samples) * key_interval
    path = ego_speed * float(key_times[-1])
    heading = np.array([math.cos(ego_yaw), math.sin(ego_yaw)])
    corridor_centre = ego_start + heading * path / 2
    corridor = footprint(corridor_centre, np.array([ego_yaw]), path + 20.0, 5.0)[0]
    clutter = _make_clutter(rng, ego_start, ego_yaw, path, corridor)
    obstacles = np.concatenate(
        [
            corridor[None],
            footprint(
                clutter.xy,
                clutter.yaw,
                clutter.size[:, 0] + 2 * _GAP,
                clutter.size[:, 1] + 2 * _GAP,
            ),
        ]
    )
    sim = SceneSim(ego_start, ego_yaw, ego_speed, key_times, [], clutter)
    target = int(rng.integers(objects_per_sample[0], objects_per_sample[1] + 1))
    weights = np.array([c.weight for c in CLASSES])
    weights /= weights.sum()

    active: list[Track] = []
    for key, t in enumerate(key_times):
        t = float(t)
        ego = sim.ego_xy(t)
        kept: list[Track] = []
        rects: list[np.ndarray] = []
        # Static objects first: a moving one that runs into anything ends there.
        for tr in sorted(active, key=lambda tr: tr.moving):
            xy = tr.xy(t)
            rect = _rect(xy, tr.yaw, tr.size)
            if not _in_region(xy, tr.size, ego) or (
                tr.moving
                and overlaps_any(
                    rect, np.concatenate([obstacles, np.array(rects).reshape(-1, 4, 2)])
                )
            ):
                continue
            tr.last = key
            kept.append(tr)
            rects.append(rect)
        active = kept

        if key == num_samples - 1:
            break  # a track born on the last frame would have a single annotation
        if key == 0:
            # Every class once, static and near, so every split has every class.
            for label in rng.permutation(len(CLASSES)):
                _spawn(
                    rng,
                    sim,
                    int(label),
                    key,
                    t,
                    ego,
                    active,
                    rects,
                    obstacles,
                    static=True,
                    r_max=20.0,
                )
        tries = 0
        while len(active) < target and tries < _SPAWN_TRIES:
            tries += 1
            label = int(rng.choice(len(CLASSES), p=weights))
            _spawn(
                rng, sim, label, key, t, ego, active, rects, obstacles, static=False, r_max=R_MAX
            )

    sim.tracks = [tr for tr in sim.tracks if tr.last > tr.first]
    return sim


def _spawn(
    rng: np.random.Generator,
    sim: SceneSim,
    label: int,
    key: int,
    t: float,
    ego: np.ndarray,
    active: list[Track],
    rects: list[np.ndarray],
    obstacles: np.ndarray,
    static: bool,
    r_max: float,
) -> bool:
    """Try a few placements of one new object of class `label`; keep the first free one."""
    cls = CLASSES[label]
    size = np.array(cls.size) * np.clip(1.0 + 0.05 * rng.standard_normal(3), 0.88, 1.12)
    r_min = max(R_MIN, _half_diagonal(size) + _EGO_CLEARANCE)
    if r_min >= r_max:
        return False
    if cls.name == "pedestrian" or rng.random() < 0.3:
        yaw = float(rng.uniform(-math.pi, math.pi))
    else:  # along the road, either way (barriers also across it)
        turns = int(rng.integers(4)) if cls.name == "barrier" else 2 * int(rng.integers(2))
        yaw = sim.ego_yaw + turns * math.pi / 2 + float(rng.normal(0.0, 0.1))
    yaw = math.remainder(yaw, 2 * math.pi)
    moving = not static and rng.random() < cls.p_moving
    speed = float(rng.uniform(*cls.speed)) if moving else 0.0
    velocity = speed * np.array([math.cos(yaw), math.sin(yaw)])
    occupied = np.concatenate([obstacles, np.array(rects).reshape(-1, 4, 2)])
    for _ in range(8):
        r = rng.uniform(r_min, r_max)
        angle = rng.uniform(-math.pi, math.pi)
        xy = ego + r * np.array([math.cos(angle), math.sin(angle)])
        rect = _rect(xy, yaw, size)
        if overlaps_any(rect, occupied):
            continue
        track = Track(label, size, yaw, velocity, xy - velocity * t, key, key)
        sim.tracks.append(track)
        active.append(track)
        rects.append(rect)
        return True
    return False
