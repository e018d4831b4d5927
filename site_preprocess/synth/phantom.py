"""A synthetic neck in patient coordinates (DICOM LPS, millimetres), independent of any scanner grid.

The anatomy and the lymph nodes are continuous shapes, so every site samples the same kind of patient on its own
grid, and the planning-system contours are traced from the shapes at sub-voxel precision (not from voxels).

Two generators share this neck. The plain one (the default; `plain_nodes.py`) follows the CT literature in one
rendering: ECE-positive nodes have lobulated margins, spiculated strands into the perinodal fat, fat stranding all
round, frequent necrosis and sometimes matted nodes; ECE-negative nodes are smooth ovals with a preserved fat plane;
a share of positives are "subtle" (mild irregularity and stranding only). The varied one (`varied=True`;
`nodes.py`) puts nodes at levels Ib-V, each in its own fat, and shows ECE as any mix of its signs (irregular or
ill-defined margins, spicules, stranding all round or on one side, necrosis), ECE-negative nodes mostly but not
always clean; it adds normal small nodes (never contoured), the oral cavity (`upper_neck.py`), the couch and a
thermoplastic mask (`immobilisation.py`) and a scan per patient (`scanner.py`).

The neck around the nodes holds the structures a node is mistaken for on real CT (see `Anatomy`): vessels whose
HU follows the contrast phase (unenhanced planning CTs show veins at node HU), small muscles running along the
neck, submandibular glands and the mandible above, shoulders, clavicles and the lung apices of the thoracic inlet
below (planning CTs reach into the upper chest; a network that never saw it marks its fat and muscle as nodes).
They are drawn from the patient's own seed, apart from the nodes, so the nodes, labels and contours do not depend
on them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .immobilisation import Fixation, make_fixation, paint_fixation
from .nodes import (HU_FAT, Node, along_the_neck, in_irregular_fat, make_node, node_centre, paint_envelope,
                    paint_node, random_rotation, small_normal_node)
from .plain_nodes import make_plain_node, paint_plain_node
from .scanner import NOMINAL, Scan, reconstruct
from .upper_neck import UpperNeck, add_metal_streaks, ellipsoid, make_upper_neck, paint_upper_neck

HU_AIR, HU_MUSCLE, HU_CSF = -1000.0, 50.0, 15.0


@dataclass
class Anatomy:
    """Node mimics around the nodes. Tubes are (x, y at the neck centre, semi-axis x, y, tilt dx/dz, dy/dz, HU)."""
    artery_hu: float
    vein_hu: float
    jugular_axes: tuple[tuple[float, float], tuple[float, float]]  # (rx, ry) of the right and the left jugular
    tubes: list[tuple[float, float, float, float, float, float, float]]
    glands: list[tuple[np.ndarray, np.ndarray, float]]  # submandibular glands: centre (LPS mm), semi-axes, HU
    mandible_dz: float  # the mandible's arc above this height (relative to the neck centre)
    shoulder_dz: float  # shoulders and clavicles below this height
    lung_apex_dz: float  # the lung apices' domes below this height
    lungs: list[tuple[float, float, float, float]]  # per side: centre x, y (neck frame) and full semi-axes x, y
    # the varied generator's (None / empty in the plain one):
    upper: UpperNeck | None  # oral cavity and oropharynx above the mandible's lower border
    small_nodes: list[Node]  # normal lymph nodes (never contoured), in patient coordinates
    fixation: Fixation | None  # couch and thermoplastic mask


@dataclass
class Patient:
    body_axes: tuple[float, float]
    fat_thickness: float
    neck_shift: tuple[float, float]
    nodes: list[Node]
    ece: bool
    has_primary: bool
    z_center: float  # patient z of the neck centre (table position differs per patient)
    texture_seed: int
    anatomy: Anatomy
    varied: bool = False  # drawn by the varied generator (nodes.py, upper_neck.py, immobilisation.py, scanner.py)
    plain_signs: bool = True  # the contoured nodes drawn and painted as the plain generator does (plain_nodes.py)


def make_patient(rng: np.random.Generator, ece: bool | None, n_nodes: int | None = None,
                 varied: bool = False, plain_signs: bool = False, longitudinal: bool = False) -> Patient:
    """Draw one patient; ece=None draws nodes without a defined label (unlabelled CT). varied: the varied generator
    (wider habitus, nodes at levels Ib-V with varied ECE renderings, oral cavity, fixation); otherwise the plain one,
    whose draws are kept as they were so a seed gives the same patient. plain_signs (with varied): the varied neck
    and scan, its nodes at levels Ib-V in their own fat, but sized, shaped and painted as the plain generator does
    (one rendering of ECE), to tell what the varied neck does from what the varied signs do. longitudinal
    (`ecefl synth --node-axes longitudinal`, session 41): every contoured node ovoid along the neck
    (nodes.along_the_neck), its craniocaudal axis 1.0-1.7x its largest axial radius (long-to-short axis ratio
    ~1.05-2.4, as metastatic nodes' < 2 mostly is); off, an ellipsoid turned at random, the draws of before."""
    plain_signs = plain_signs or not varied
    if varied:
        body = (rng.uniform(54, 74), rng.uniform(48, 66))
        fat_thickness = rng.uniform(4, 14)
        neck_shift = (rng.uniform(-4, 4), rng.uniform(-4, 4))
        inner = (body[0] - fat_thickness, body[1] - fat_thickness)  # the muscle compartment's semi-axes
    else:
        body = (rng.uniform(58, 70), rng.uniform(52, 62))
    z_center = rng.uniform(-40, 40)
    n_nodes = n_nodes or int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    is_positive = bool(ece) if ece is not None else bool(rng.random() < 0.4)
    subtle = is_positive and rng.random() < 0.25
    # Which nodes carry ECE: at least the first one in a positive patient.
    ece_nodes = [is_positive and (i == 0 or rng.random() < 0.4) for i in range(n_nodes)]
    nodes: list[Node] = []
    sides = rng.permutation([-1.0, 1.0])
    for i in range(n_nodes):
        side = sides[i % 2]
        if plain_signs:
            diameter = rng.uniform(12, 30) if ece_nodes[i] else rng.uniform(8, 24)
            semi = diameter / 2 * np.array([1.0, rng.uniform(0.7, 0.95), rng.uniform(0.8, 1.3)])
        else:
            diameter = rng.uniform(10, 32) if ece_nodes[i] else rng.uniform(8, 28)
            semi = diameter / 2 * np.array([1.0, rng.uniform(0.6, 0.95), rng.uniform(0.7, 1.4)])
        if longitudinal:
            semi[2] = diameter / 2 * rng.uniform(1.0, 1.7)
        if varied:
            center = node_centre(rng, side, z_center, inner, neck_shift, float(semi.max()) * 1.25)
        else:
            center = np.array([side * rng.uniform(34, 44), rng.uniform(-10, 12), z_center + rng.uniform(-28, 28)])
        new_node = _plain_node_in_its_fat if varied and plain_signs else make_plain_node if plain_signs else make_node
        nodes.append(new_node(rng, center, semi, ece_nodes[i], subtle, group=i))
        if longitudinal:
            nodes[-1].rotation = along_the_neck(rng)
        if ece_nodes[i] and not subtle and rng.random() < 0.2:  # matted: a second, fused node
            offset = random_rotation(rng)[:, 0] * semi.max() * 0.9
            offset[2] *= 0.5
            nodes.append(new_node(rng, center + offset, semi * rng.uniform(0.6, 0.8), True, False, group=i))
            if longitudinal:
                nodes[-1].rotation = along_the_neck(rng)
    if not varied:
        fat_thickness = rng.uniform(5, 11)
        neck_shift = (rng.uniform(-4, 4), rng.uniform(-4, 4))
        inner = (body[0] - fat_thickness, body[1] - fat_thickness)
    has_primary = bool(rng.random() < 0.7)
    texture_seed = int(rng.integers(0, 2**31 - 1))
    anatomy = _make_anatomy(np.random.default_rng([texture_seed, 11]), nodes, neck_shift, z_center, inner, varied)
    return Patient(body_axes=body, fat_thickness=fat_thickness, neck_shift=neck_shift, nodes=nodes, ece=is_positive,
                   has_primary=has_primary, z_center=z_center, texture_seed=texture_seed, anatomy=anatomy,
                   varied=varied, plain_signs=plain_signs)


def _plain_node_in_its_fat(rng: np.random.Generator, center, semi, ece: bool, subtle: bool, group: int) -> Node:
    """A plain generator's node with the varied neck's fat around it (as `make_node` draws it)."""
    return in_irregular_fat(rng, make_plain_node(rng, center, semi, ece, subtle, group))


def _make_anatomy(rng: np.random.Generator, nodes: list[Node], neck_shift, z_center: float, inner,
                  varied: bool) -> Anatomy:
    """The node mimics of one patient, kept clear of its nodes (a mimic touching a node would blur its contour)."""
    phase = rng.choice(["unenhanced", "venous", "arterial"], p=[0.35, 0.4, 0.25])
    blood = rng.uniform(35, 55)  # unenhanced blood: the HU of a node
    artery = {"unenhanced": blood, "venous": rng.uniform(140, 220), "arterial": rng.uniform(250, 380)}[phase]
    vein = {"unenhanced": blood, "venous": rng.uniform(130, 210), "arterial": rng.uniform(60, 130)}[phase]
    jugular = tuple((float(rng.uniform(4, 8)), float(rng.uniform(3.5, 6.5))) for _ in range(2))
    # mimics are drawn in the neck's frame (the neck is shifted in the body, the nodes are not)
    node_xy = [(node.center[0] - neck_shift[0], node.center[1] - neck_shift[1]) for node in nodes]

    def clear_of_nodes(centre_at, radius: float) -> bool:
        """centre_at(z) -> the mimic's (x, y) at patient height z; clear by 3 mm in-plane at each node's height."""
        for node, (nx, ny) in zip(nodes, node_xy):
            cx, cy = centre_at(node.center[2])
            if np.hypot(nx - cx, ny - cy) < node.max_extent() + radius + 3.0:
                return False
        return True

    tubes = []
    for side in (-1.0, 1.0):
        # two scalene / levator muscles in the posterior triangle, an external jugular under the skin
        for kind in ("muscle", "muscle", "vein"):
            for _attempt in range(20):
                if kind == "muscle":
                    x, y = side * rng.uniform(20, 42), rng.uniform(2, 24)
                    rx, ry, hu = rng.uniform(3, 6), rng.uniform(4, 8), rng.uniform(42, 62)
                else:
                    x, y = side * rng.uniform(38, 50), rng.uniform(-14, 4)
                    rx = ry = rng.uniform(1.8, 3.5)
                    hu = vein
                tx, ty = rng.uniform(-0.15, 0.15, size=2)

                def centre_at(z, x=x, y=y, tx=tx, ty=ty):
                    return x + tx * (z - z_center), y + ty * (z - z_center)

                if clear_of_nodes(centre_at, max(rx, ry)):
                    tubes.append((float(x), float(y), float(rx), float(ry), float(tx), float(ty), float(hu)))
                    break
    glands = []
    for side in (-1.0, 1.0):
        centre = np.array([side * rng.uniform(20, 30), rng.uniform(-36, -26), z_center + rng.uniform(28, 45)])
        semi = np.array([rng.uniform(10, 15), rng.uniform(8, 12), rng.uniform(9, 13)])
        if all(np.linalg.norm([nx - centre[0], ny - centre[1], node.center[2] - centre[2]])
               > node.max_extent() + semi.max() + 6.0 for node, (nx, ny) in zip(nodes, node_xy)):
            glands.append((centre, semi, float(rng.uniform(35, 75))))
    # the mandible above the highest node, the shoulders below the lowest (by 3 mm at least)
    top = max(node.center[2] + node.max_extent() for node in nodes) - z_center
    bottom = min(node.center[2] - node.max_extent() for node in nodes) - z_center
    shoulder_dz = float(min(rng.uniform(-70, -35), bottom - 3.0))
    # the apices rise up to ~2 cm above the clavicles, beside the spine, and stay below the lowest node
    lungs = [(float(side * rng.uniform(36, 46)), float(rng.uniform(6, 18)), float(rng.uniform(20, 28)),
              float(rng.uniform(18, 26))) for side in (-1.0, 1.0)]
    mandible_dz = float(max(rng.uniform(35, 55), top + 3.0))
    small = []
    for _ in range(int(rng.integers(0, 5)) if varied else 0):  # normal nodes, clear of the contoured ones by 4 mm
        centre = node_centre(rng, float(rng.choice([-1.0, 1.0])), z_center, inner, neck_shift, 6.0)
        candidate = small_normal_node(rng, centre)
        if all(np.linalg.norm(candidate.center - nd.center) > nd.max_extent() + candidate.max_extent() + 4.0
               for nd in nodes):
            small.append(candidate)
    return Anatomy(artery_hu=float(artery), vein_hu=float(vein), jugular_axes=jugular, tubes=tubes, glands=glands,
                   mandible_dz=mandible_dz, shoulder_dz=shoulder_dz,
                   lung_apex_dz=float(min(shoulder_dz + rng.uniform(-10, 18), bottom - 6.0)), lungs=lungs,
                   upper=make_upper_neck(rng, mandible_dz) if varied else None, small_nodes=small,
                   fixation=make_fixation(rng) if varied else None)


def render_hu(patient: Patient, points: np.ndarray, voxel_mm: np.ndarray, noise_hu: float,
              rng: np.random.Generator, scan: Scan = NOMINAL) -> np.ndarray:
    """HU at voxel centres `points` (shape (..., 3) LPS mm, a regular grid), through the scan's kernel and noise."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    sx, sy = patient.neck_shift
    x, y = x - sx, y - sy
    dz = z - patient.z_center
    ax, ay = patient.body_axes
    anatomy = patient.anatomy
    taper = 1.0 + 0.0015 * dz  # the neck widens slightly towards the shoulders
    # below the shoulder line the body widens sideways into the shoulders (up to twice the neck's width)
    widen = 1.0 + np.clip((anatomy.shoulder_dz - dz) / 30.0, 0.0, 1.0)
    e_body = (x / (ax * taper * widen)) ** 2 + (y / (ay * taper)) ** 2
    inner = ((x / (ax * taper * widen - patient.fat_thickness)) ** 2
             + (y / (ay * taper - patient.fat_thickness)) ** 2)

    hu = np.full(points.shape[:-1], HU_AIR, dtype=np.float32)
    hu[e_body <= 1.0] = HU_FAT
    tex_rng = np.random.default_rng(patient.texture_seed)
    muscle = HU_MUSCLE + 8.0 * _smooth_field(tex_rng, hu.shape, 3.0)
    inside = inner <= 1.0  # under the subcutaneous fat
    hu = np.where(inside, muscle, hu)

    def disc(cx, cy, rx, ry):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0

    for side in (-1.0, 1.0):
        hu[disc(side * 38, 0, 17, 21) & inside] = HU_FAT  # lateral neck fat where most nodes sit
    flat = points.reshape(-1, 3)
    hu_flat = hu.reshape(-1)  # a view: painting it paints hu
    if patient.varied:
        for node in patient.nodes + anatomy.small_nodes:  # each node in its fat
            paint_envelope(node, flat, hu_flat, inside.reshape(-1))
    for k, side in enumerate((-1.0, 1.0)):
        hu[disc(side * 47, -17, 8, 19)] = 55.0  # sternocleidomastoid
        hu[disc(side * 22, -6, 3.5, 3.5)] = anatomy.artery_hu  # common/internal carotid
        hu[disc(side * 30, -1, *anatomy.jugular_axes[k])] = anatomy.vein_hu  # internal jugular vein
    if anatomy.upper:  # the oral cavity first: the glands in its floor's fat and the mandible come with the mimics
        paint_upper_neck(anatomy.upper, x, y, dz, inside, hu, disc, (muscle - HU_MUSCLE) / 8.0)
    _paint_mimics(anatomy, x, y, dz, z, e_body <= 1.0, inside, hu, disc)
    hu[disc(0, 22, 14, 12)] = 330.0  # vertebral body (cancellous)
    hu[disc(0, 22, 14, 12) & ~disc(0, 22, 12, 10)] = 800.0  # cortex
    hu[disc(0, 38, 11, 10)] = 650.0  # posterior arch
    hu[disc(0, 38, 7, 6.5)] = HU_CSF  # spinal canal
    larynx = dz <= (anatomy.upper.floor_dz if anatomy.upper else np.inf)  # above it the oropharynx (upper_neck)
    hu[disc(0, -24, 9, 7) & larynx] = -30.0  # larynx wall
    hu[disc(0, -24, 7, 5) & larynx] = -960.0  # airway
    if patient.has_primary:  # a primary tumour beside the airway on upper slices
        hu[disc(7, -20, 10, 8) & (dz > 10) & (dz < 40)] = 65.0

    if anatomy.fixation:
        paint_fixation(anatomy.fixation, x, y, z, np.sqrt(e_body), (ax + ay) / 2, ay, hu)
    hu_flat = hu.reshape(-1)
    for node in anatomy.small_nodes:  # normal nodes, never contoured: drawn by nodes.py whatever the signs
        paint_node(node, flat, hu_flat, rng)
    for node in patient.nodes:
        (paint_plain_node if patient.plain_signs else paint_node)(node, flat, hu_flat, rng)
    hu = hu_flat.reshape(hu.shape)
    if anatomy.upper:
        add_metal_streaks(anatomy.upper, x, y, dz, hu)
    # Arrays are (slices, rows, cols); voxel_mm is in that order.
    return reconstruct(hu, voxel_mm, noise_hu, scan, rng)


def _paint_mimics(anatomy: Anatomy, x, y, dz, z, body, inside, hu, disc) -> None:
    """Small muscles and veins along the neck, submandibular glands and mandible above, shoulders below.
    body: inside the skin; inside: under the subcutaneous fat."""
    for cx, cy, rx, ry, tx, ty, value in anatomy.tubes:
        hu[disc(cx + tx * dz, cy + ty * dz, rx, ry) & body] = value
    for centre, semi, value in anatomy.glands:  # in a fat capsule, as a node sits in fat
        hu[ellipsoid(x, y, z, centre, semi, pad=3.0) & inside] = HU_FAT
        hu[ellipsoid(x, y, z, centre, semi) & inside] = value
    ring = disc(0, -8, 42, 44) & ~disc(0, -8, 36, 38) & (y < -8)  # the mandible's anterior arc
    hu[ring & (dz > anatomy.mandible_dz) & inside] = 900.0
    below = dz < anatomy.shoulder_dz  # the shoulders' muscle comes with the widened body
    for side in (-1.0, 1.0):
        # an intermuscular fat plane in the shoulder, the clavicle in front of it
        hu[below & inside & disc(side * 70, 8, 10, 14) & ~disc(side * 70, 8, 7, 11)] = HU_FAT
        clavicle = below & (dz > anatomy.shoulder_dz - 12) & (side * x > 12) & (side * x < 75) & (np.abs(y + 12) < 5)
        hu[clavicle & inside] = 750.0
    # lung apices: domes that widen downwards (a paraboloid, full width 3 cm below the apex), aerated parenchyma
    depth = np.maximum(anatomy.lung_apex_dz - dz, 0.0)
    scale = np.sqrt(np.minimum(depth / 30.0, 1.0))
    for cx, cy, rx, ry in anatomy.lungs:
        lung = (depth > 0) & inside & (((x - cx) / np.maximum(rx * scale, 1e-3)) ** 2
                                       + ((y - cy) / np.maximum(ry * scale, 1e-3)) ** 2 <= 1.0)
        hu[lung] = -840.0


def _smooth_field(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=sigma)
    return f / max(float(f.std()), 1e-6)


def nodes_level(nodes: list[Node], pts: np.ndarray) -> np.ndarray:
    """Union of node bodies as one level function (< 0 inside any of them)."""
    out = np.full(pts.shape[:-1], np.inf)
    for node in nodes:
        out = np.minimum(out, node.level(pts))
    return out
