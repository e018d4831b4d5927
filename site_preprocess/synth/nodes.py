"""Lymph nodes: where they sit, their shape, and how ECE shows on CT.

The renderings vary the way they do between patients and readers (Aiken et al. 2015; Park et al. 2023 on CT signs
of ECE): an ECE-positive node may show any mix of an irregular/lobulated margin, an ill-defined margin fading into
the fat, spiculated strands, perinodal fat stranding all round or on one side only, and central necrosis; none of
the signs is always there. ECE-negative (metastatic) nodes are mostly smooth and keep a clean fat plane, but some
are mildly lobulated, necrotic/cystic, keep a fatty hilum, or sit in faintly stranded fat (inflammation). So no
single sign, and not the node's size, separates the classes on its own.
Nodes sit at levels Ib-V, each in its own fat envelope (nodes lie in the fat between the neck's muscles).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HU_FAT = -95.0

# (share, x range (lateral, mm from the midline), y range (anterior -, posterior +), dz range from the neck centre)
LEVELS = {
    "II-IV": (0.72, (32, 44), (-12, 12), (-30, 30)),
    "Ib": (0.1, (14, 26), (-40, -28), (12, 30)),
    "V": (0.18, (38, 47), (10, 26), (-26, 22)),
}


@dataclass
class Node:
    center: np.ndarray  # (3,) LPS mm
    semi_axes: np.ndarray  # (3,) mm
    rotation: np.ndarray  # (3, 3) node frame -> patient
    lobulation: list[tuple[np.ndarray, float, float]]  # (direction, frequency, amplitude) margin ripples
    hu: float
    necrosis: float  # 0 = none, else relative radius of the necrotic core
    ece: bool
    subtle: bool
    spicules: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # (dir, length mm, radius mm)
    group: int = 0  # which nodal ROI contains it (matted nodes share one contour)
    # perinodal fat stranding: width (mm, 0 = none), HU it raises the fat to, and the side it shows on
    # (a unit direction and the cosine above which it shows; -1 = all round)
    halo_mm: float = 0.0
    halo_hu: float = -60.0
    halo_dir: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    halo_cos: float = -1.0
    blur_mm: float = 0.0  # ill-defined margin: the node's HU fades into the fat over this width
    rim_mm: float = 1.8  # ECE-negative: width of the clean fat plane kept around the node
    hilum: float = 0.0  # fatty hilum: relative size of a fat notch at one pole (0 = none)
    envelope_mm: float = 6.0  # the fat the node lies in: at least this far around the node,
    envelope_stretch: np.ndarray = field(default_factory=lambda: np.ones(3))  # farther along some axes (x, y, z)
    envelope_shift: np.ndarray = field(default_factory=lambda: np.zeros(3))  # and off-centre (mm)

    def level(self, pts: np.ndarray) -> np.ndarray:
        """Signed shape function: < 0 inside the node body, 0 on its margin (scaled radial distance)."""
        q = (pts - self.center) @ self.rotation / self.semi_axes
        r = np.linalg.norm(q, axis=-1)
        unit = q / np.maximum(r, 1e-9)[..., None]
        radius = np.ones_like(r)
        for direction, freq, amp in self.lobulation:
            radius = radius + amp * np.cos(freq * np.arccos(np.clip(unit @ direction, -1, 1)))
        return r - radius

    def max_extent(self) -> float:
        return float(self.semi_axes.max() * (1 + sum(abs(a) for _, _, a in self.lobulation)))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def along_the_neck(rng: np.random.Generator, max_tilt_deg: float = 20.0) -> np.ndarray:
    """A node frame whose third axis runs craniocaudally, tilted by up to max_tilt_deg, its first two turned at
    random in the axial plane: cervical nodes are ovoid and lie along the lymphatic chains (jugular, spinal
    accessory), so their long (longitudinal) axis is craniocaudal and their short axis axial."""
    from scipy.spatial.transform import Rotation
    turn = rng.uniform(0, 2 * np.pi)
    axis = np.array([*_unit_2d(rng), 0.0])  # a horizontal tilt axis
    tilt = np.deg2rad(rng.uniform(0, max_tilt_deg))
    return Rotation.from_rotvec(tilt * axis).as_matrix() @ Rotation.from_rotvec([0.0, 0.0, turn]).as_matrix()


def _unit_2d(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, 2 * np.pi)
    return np.array([np.cos(a), np.sin(a)])


def _unit(rng: np.random.Generator) -> np.ndarray:
    d = rng.normal(size=3)
    return d / np.linalg.norm(d)


def node_centre(rng: np.random.Generator, side: float, z_center: float, inner_axes: tuple[float, float],
                neck_shift, radius: float) -> np.ndarray:
    """A centre at a nodal level, the node inside the neck's muscle compartment (under the subcutaneous fat)."""
    names = list(LEVELS)
    shares = np.array([LEVELS[n][0] for n in names])
    for _attempt in range(30):
        _, xr, yr, zr = LEVELS[names[rng.choice(len(names), p=shares / shares.sum())]]
        x, y = side * rng.uniform(*xr), rng.uniform(*yr)
        # the node's far edge stays 2 mm inside the compartment (x, y in the neck's frame)
        ex, ey = abs(x) + radius + 2.0, abs(y) + radius + 2.0
        if (ex / inner_axes[0]) ** 2 + (y / inner_axes[1]) ** 2 <= 1.0 and (x / inner_axes[0]) ** 2 + (
                ey / inner_axes[1]) ** 2 <= 1.0:
            return np.array([x + neck_shift[0], y + neck_shift[1], z_center + rng.uniform(*zr)])
    x, y = side * rng.uniform(32, 40), rng.uniform(-8, 8)  # the lateral neck: always room there
    return np.array([x + neck_shift[0], y + neck_shift[1], z_center + rng.uniform(-25, 25)])


def make_node(rng: np.random.Generator, center, semi, ece: bool, subtle: bool, group: int) -> Node:
    node = in_irregular_fat(rng, Node(center=np.asarray(center, float), semi_axes=np.asarray(semi, float),
                                      rotation=random_rotation(rng), lobulation=[], hu=float(rng.uniform(30, 65)),
                                      necrosis=0.0, ece=ece, subtle=subtle, group=group))
    if ece and not subtle:
        for _ in range(int(rng.integers(2, 7))):
            node.lobulation.append((_unit(rng), float(rng.integers(3, 7)), float(rng.uniform(0.06, 0.2))))
        node.halo_mm = float(rng.uniform(2.5, 9.0))
        node.halo_hu = float(rng.uniform(-50, 10))
        for _ in range(int(rng.integers(0, 9))):
            node.spicules.append((_unit(rng), float(rng.uniform(3, 10)), float(rng.uniform(0.5, 1.2))))
        node.blur_mm = float(rng.uniform(1.0, 3.5)) if rng.random() < 0.5 else 0.0
        node.necrosis = float(rng.uniform(0.3, 0.65)) if rng.random() < 0.55 else 0.0
    elif ece:  # subtle: one or two of the milder signs
        signs = rng.permutation(["margin", "stranding", "blur"])[:int(rng.integers(1, 3))]
        if "margin" in signs:
            for _ in range(int(rng.integers(1, 4))):
                node.lobulation.append((_unit(rng), float(rng.integers(3, 7)), float(rng.uniform(0.04, 0.09))))
        if "stranding" in signs:
            node.halo_mm, node.halo_hu = float(rng.uniform(2.0, 4.5)), float(rng.uniform(-70, -45))
        if "blur" in signs:
            node.blur_mm = float(rng.uniform(1.0, 2.0))
        node.necrosis = float(rng.uniform(0.3, 0.6)) if rng.random() < 0.45 else 0.0
    else:
        if rng.random() < 0.25:  # mildly lobulated without ECE
            for _ in range(int(rng.integers(1, 3))):
                node.lobulation.append((_unit(rng), float(rng.integers(2, 5)), float(rng.uniform(0.02, 0.06))))
        node.rim_mm = float(rng.uniform(1.0, 2.5))
        node.necrosis = float(rng.uniform(0.3, 0.7)) if rng.random() < 0.25 else 0.0
        node.hilum = float(rng.uniform(0.25, 0.45)) if node.necrosis == 0 and rng.random() < 0.25 else 0.0
        if rng.random() < 0.1:  # faint inflammatory stranding
            node.halo_mm, node.halo_hu = float(rng.uniform(2.0, 4.0)), float(rng.uniform(-80, -65))
    if node.halo_mm > 0 and rng.random() < 0.4:  # on one side of the node only
        node.halo_dir, node.halo_cos = _unit(rng), float(rng.uniform(-0.3, 0.3))
    return node


def small_normal_node(rng: np.random.Generator, center) -> Node:
    """A normal lymph node (not contoured in RT planning): small, flat oval, often with a fatty hilum."""
    long = rng.uniform(5, 10) / 2
    node = Node(center=np.asarray(center, float),
                semi_axes=np.array([long, long * rng.uniform(0.4, 0.65), long * rng.uniform(0.5, 1.0)]),
                rotation=random_rotation(rng), lobulation=[], hu=float(rng.uniform(30, 55)), necrosis=0.0,
                ece=False, subtle=False, rim_mm=1.0, envelope_mm=float(rng.uniform(2.0, 4.0)),
                hilum=float(rng.uniform(0.3, 0.5)) if rng.random() < 0.6 else 0.0)
    _irregular_envelope(rng, node)
    return node


def in_irregular_fat(rng: np.random.Generator, node: Node) -> Node:
    """A contoured node's fat (both generators' nodes in the varied neck): 2.5-6 mm around it at least, irregular."""
    node.envelope_mm = float(rng.uniform(2.5, 6.0))
    _irregular_envelope(rng, node)
    return node


def _irregular_envelope(rng: np.random.Generator, node: Node) -> None:
    """Fat planes follow the muscles, not the node: the fat is an off-centre ellipsoid, longer along some axes."""
    node.envelope_stretch = rng.uniform(1.0, 3.0, size=3)
    node.envelope_shift = rng.uniform(-1, 1, size=3) * node.envelope_mm


def paint_envelope(node: Node, pts: np.ndarray, hu: np.ndarray, allowed: np.ndarray) -> None:
    """Fat around the node (painted before the neck's vessels and muscles, which may then abut it)."""
    extent = node.max_extent() + node.envelope_mm * node.envelope_stretch
    centre = node.center + node.envelope_shift
    near = np.all(np.abs(pts - centre) <= extent, axis=1) & allowed
    idx = np.nonzero(near)[0]
    if idx.size:
        p = pts[idx]
        inside = (node.level(p) * float(node.semi_axes.mean()) < node.envelope_mm) | (
            np.sum(((p - centre) / extent) ** 2, axis=1) <= 1.0)
        hu[idx[inside]] = HU_FAT


def paint_spicules(node: Node, p: np.ndarray, dist: np.ndarray, values: np.ndarray) -> None:
    """Strands of node density reaching into the perinodal fat (p: points, dist: their distance off the node)."""
    for direction, length, radius in node.spicules:
        start = node.center + direction * node.semi_axes.min()
        rel = p - start
        t = np.clip(rel @ direction, 0.0, length + node.semi_axes.max())
        off = np.linalg.norm(rel - t[:, None] * direction, axis=1)
        strand = (off < radius) & (dist > 0) & (dist < length)
        values[strand] = node.hu - 5.0


def points_near(node: Node, pts: np.ndarray, margin: float) -> np.ndarray:
    """Indices of the points within the node's bounding cube grown by margin mm (what painting it can touch)."""
    return np.nonzero(np.all(np.abs(pts - node.center) <= node.max_extent() + margin, axis=1))[0]


def paint_node(node: Node, pts: np.ndarray, hu: np.ndarray, rng: np.random.Generator) -> None:
    idx = points_near(node, pts, max(node.halo_mm, node.blur_mm, node.rim_mm) + 12.0)
    if idx.size == 0:
        return
    p = pts[idx]
    f = node.level(p)
    # Surface distance in mm, approximately: scaled radial distance times the mean radius.
    dist = f * float(node.semi_axes.mean())
    values = hu[idx]
    fat_like = values < -40
    if node.halo_mm > 0:  # perinodal fat stranding, all round or on one side
        facing = ((p - node.center) @ node.halo_dir) / np.maximum(np.linalg.norm(p - node.center, axis=1), 1e-6)
        halo = (dist > 0) & (dist < node.halo_mm) & fat_like & (facing > node.halo_cos)
        values[halo] = np.maximum(values[halo], node.halo_hu + 10.0 * (rng.random(int(halo.sum())) - 0.5))
    paint_spicules(node, p, dist, values)
    if not node.ece:  # preserved fat plane: a thin clean fat rim around the node
        rim = (dist > 0) & (dist < node.rim_mm)
        values[rim] = np.minimum(values[rim], HU_FAT + 10.0)
    if node.blur_mm > 0:  # ill-defined margin: the node's density fades out into the surrounding fat
        fade = (dist > 0) & (dist < node.blur_mm) & (values < node.hu)
        w = 1.0 - dist[fade] / node.blur_mm
        values[fade] = w * node.hu + (1 - w) * values[fade]
    values[f <= 0] = node.hu
    q = (p - node.center) @ node.rotation / node.semi_axes
    if node.necrosis > 0:
        core = np.linalg.norm(q, axis=1) < node.necrosis
        values[core] = float(rng.uniform(8, 22))
    if node.hilum > 0:  # fat entering at one pole of the node's long axis
        hilum = np.linalg.norm(q - np.array([0.85, 0.0, 0.0]), axis=1) < node.hilum
        values[hilum & (f <= 0)] = float(rng.uniform(-90, -50))
    hu[idx] = values
