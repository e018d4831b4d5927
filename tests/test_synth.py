"""The synthetic generator: deterministic, valid DICOM, sites that differ like real hospitals."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from site_preprocess.synth import synthesize


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    synthesize(tmp_path / "a", sites=1, cases_per_site=2, unlabeled_per_site=1, seed=3, progress=False)
    # written by 2 worker processes: the same bytes as in one process
    synthesize(tmp_path / "b", sites=1, cases_per_site=2, unlabeled_per_site=1, seed=3, progress=False, workers=2)
    synthesize(tmp_path / "c", sites=1, cases_per_site=2, unlabeled_per_site=1, seed=4, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_sites_differ_like_hospitals(synth_root):
    seen = {}
    for site in sorted(p for p in synth_root.iterdir() if p.is_dir()):
        patient = next(p for p in (site / "dicom").iterdir() if (p / "RTSTRUCT.dcm").exists())
        ds = pydicom.dcmread(next((patient / "CT").iterdir()))
        rs = pydicom.dcmread(patient / "RTSTRUCT.dcm")
        seen[site.name] = (tuple(float(v) for v in ds.PixelSpacing), float(ds.SliceThickness), ds.Rows, ds.Columns,
                           int(ds.PixelRepresentation), float(ds.RescaleIntercept), float(ds.RescaleSlope),
                           tuple(sorted(r.ROIName for r in rs.StructureSetROISequence)))
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and rs.Modality == "RTSTRUCT"
        assert str(ds.PatientName).startswith("ZZSYN")
        labels = list(csv.DictReader(open(site / "labels.csv")))
        assert {r["ece"] for r in labels} == {"0", "1"}
    assert len({v[:4] for v in seen.values()}) == 4  # grids
    assert len({v[4:7] for v in seen.values()}) >= 3  # storage conventions
    assert len({v[7] for v in seen.values()}) == 4  # ROI naming


def test_ece_positive_nodes_show_perinodal_stranding(synth_root, preprocessed):
    """Fat around ECE+ nodes is denser (stranding) than around ECE- nodes, on average over the cases."""
    import nibabel as nib
    rims = {0: [], 1: []}
    for out in preprocessed.values():
        for item in json.loads((out / "datalist.json").read_text())["training"]:
            nodes = np.asarray(nib.load(out / item["nodes"]).dataobj).astype(bool)
            hu = np.asarray(nib.load(out / item["image"]).dataobj).astype(float)
            shell = ndimage.binary_dilation(nodes, iterations=3) & ~ndimage.binary_dilation(nodes, iterations=1)
            rims[item["ece"]].append(float(np.median(hu[shell])))
    assert rims[0] and rims[1]
    assert np.mean(rims[1]) > np.mean(rims[0]) + 10


def test_the_neck_holds_node_mimics_that_leave_the_nodes_and_their_fat_plane_alone():
    """Unenhanced vessels, small muscles and glands at node HU sit in the neck (what a network must learn not to
    call a node), drawn apart from the nodes: the same nodes with or without them, none inside a node, and an ECE-
    node's fat plane stays fat."""
    from site_preprocess.synth.phantom import make_patient, nodes_level, render_hu
    unenhanced, at_node_hu, planes = [], [], []
    for n in range(24):
        rng = np.random.default_rng([5, 0, n])
        patient = make_patient(rng, ece=bool(n % 2))
        again = make_patient(np.random.default_rng([5, 0, n]), ece=bool(n % 2))
        assert [nd.center.tolist() for nd in patient.nodes] == [nd.center.tolist() for nd in again.nodes]
        anatomy = patient.anatomy
        unenhanced.append(anatomy.vein_hu < 100)
        sx, sy = patient.neck_shift
        centres = [(x + sx, y + sy, patient.z_center) for x, y, *_ in anatomy.tubes]
        centres += [(c[0] + sx, c[1] + sy, c[2]) for c, _, _ in anatomy.glands]
        centres = np.array(centres, float)
        assert (nodes_level(patient.nodes, centres) > 0).all()  # no mimic centre inside a node
        hu = render_hu(patient, centres[:, None, None, :], np.full(3, 100.0), 0.0, rng)[:, 0, 0]  # no blur
        at_node_hu.append(int(((hu > 30) & (hu < 80)).sum()))
        zs = patient.z_center + np.arange(-30, 31, 2.0)
        g = np.arange(-90, 90, 1.5)
        gz, gy, gx = np.meshgrid(zs, g, g, indexing="ij")
        pts = np.stack([gx, gy, gz], axis=-1)
        hu = render_hu(patient, pts, np.array([2.0, 1.5, 1.5]), 0.0, rng)
        for nd in patient.nodes:
            if not nd.ece:
                shell = np.abs(np.linalg.norm((pts - nd.center) @ nd.rotation / nd.semi_axes, axis=-1) - 1.12) < 0.05
                planes.append(float(np.median(hu[shell])))
    assert 4 <= sum(unenhanced) <= 16  # a share of planning CTs is unenhanced: veins at node HU
    assert np.median(at_node_hu) >= 4  # muscles, glands (and unenhanced veins) at a node's HU
    assert planes and np.median(planes) < -20  # the clean fat rim of an ECE- node is kept


def _lungs(patient, z0: float, top: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """The scan rendered on a 4 x 2 x 2 mm grid: its slice heights and its air inside the body beside the midline's
    airways (lung)."""
    from site_preprocess.synth.phantom import render_hu
    sx, _ = patient.neck_shift
    zs = np.arange(z0, top + 1e-6, 4.0)
    g = np.arange(-90, 90, 2.0)
    gz, gy, gx = np.meshgrid(zs, g, g, indexing="ij")
    hu = render_hu(patient, np.stack([gx, gy, gz], axis=-1), np.array([4.0, 2.0, 2.0]), 0.0, rng)
    body = ndimage.binary_fill_holes(hu > -500, structure=np.ones((1, 3, 3)))
    return zs, (hu < -700) & body & (np.abs(gx - sx) > 16)


def test_the_scan_reaches_into_the_thoracic_inlet_with_lung_apices_below_every_node():
    """Planning CTs reach below the neck: some scans are placed lower (every node still 5 mm inside), and below
    the shoulders the lung apices appear, as air inside the body beside the spine, never at a node's height."""
    from site_preprocess.synth.generate import scan_start
    from site_preprocess.synth.phantom import make_patient
    extent, dz, lowered, lung_slices = 110.0, 2.0, [], 0
    for n in range(24):
        rng = np.random.default_rng([9, 1, n])
        patient = make_patient(rng, ece=bool(n % 2))
        n_slices = int(extent / dz) + 1
        z0 = scan_start(patient, n_slices, dz)
        assert scan_start(patient, n_slices, dz) == z0  # deterministic per patient
        top, bottom = z0 + extent, z0
        for nd in patient.nodes:
            assert bottom + 5.0 <= nd.center[2] - nd.max_extent() and nd.center[2] + nd.max_extent() <= top - 5.0 + 1e-6
        lowered.append(patient.z_center - extent / 2 - z0)
        lowest_node = min(nd.center[2] - nd.max_extent() for nd in patient.nodes)
        apex = patient.z_center + patient.anatomy.lung_apex_dz
        assert apex <= lowest_node - 6.0 + 1e-6
        zs, lung = _lungs(patient, z0, top, rng)
        assert not lung[zs > apex].any()
        lung_slices += int(lung.any(axis=(1, 2)).sum())
    assert np.mean(lowered) > 5.0 and min(lowered) >= 0.0
    assert lung_slices > 24  # the apices are in view in a share of the scans


def test_varied_scans_reach_up_into_the_mouth_or_down_into_the_thoracic_inlet_with_every_node_inside():
    """The varied generator: planning CTs are placed and sized differently. Some reach up into the oral cavity
    (tongue in view), others down below the shoulders, where the lung apices appear as air inside the body beside
    the spine, never at a node's height; every node stays 5 mm inside the scan."""
    from site_preprocess.synth.generate import scan_start
    from site_preprocess.synth.phantom import make_patient
    from site_preprocess.synth.scanner import draw_scan
    dz, lung_slices, mouths, chests = 2.0, 0, 0, 0
    for n in range(24):
        rng = np.random.default_rng([9, 1, n])
        patient = make_patient(rng, ece=bool(n % 2), varied=True)
        n_slices = int(110.0 * draw_scan(patient.texture_seed).length_scale / dz) + 1
        extent = (n_slices - 1) * dz
        z0 = scan_start(patient, n_slices, dz)
        assert scan_start(patient, n_slices, dz) == z0  # deterministic per patient
        top, bottom = z0 + extent, z0
        for nd in patient.nodes:
            assert bottom + 5.0 - 1e-6 <= nd.center[2] - nd.max_extent()
            assert nd.center[2] + nd.max_extent() <= top - 5.0 + 1e-6
        anatomy = patient.anatomy
        mouths += int(top > patient.z_center + anatomy.upper.tongue[0][2])
        chests += int(bottom < patient.z_center + anatomy.shoulder_dz - 10.0)
        lowest_node = min(nd.center[2] - nd.max_extent() for nd in patient.nodes)
        apex = patient.z_center + anatomy.lung_apex_dz
        assert apex <= lowest_node - 6.0 + 1e-6
        anatomy.fixation.mask_gap = None  # the mask's shell would close the air around the body into "body"
        zs, lung = _lungs(patient, z0, top, rng)
        assert not lung[zs > apex].any()
        lung_slices += int(lung.any(axis=(1, 2)).sum())
    assert mouths >= 4 and chests >= 4
    assert lung_slices > 24  # the apices are in view in a share of the scans


def test_the_signs_of_ece_vary_and_none_separates_the_classes_alone():
    """The varied generator: real ECE shows any mix of its signs and ECE-negative nodes sometimes show one of them
    (Aiken 2015): no sign, nor the size, is a label by itself; and each patient's scan differs (kernel, noise, field
    of view, length)."""
    from site_preprocess.synth.phantom import make_patient
    from site_preprocess.synth.scanner import draw_scan
    pos, neg, scans = [], [], []
    for n in range(80):
        patient = make_patient(np.random.default_rng([11, 2, n]), ece=bool(n % 2), varied=True)
        scans.append(draw_scan(patient.texture_seed))
        for nd in patient.nodes:
            (pos if nd.ece else neg).append(nd)

    def share(nodes, sign):
        return np.mean([bool(sign(nd)) for nd in nodes])

    overt = [nd for nd in pos if not nd.subtle]
    assert 0.2 < share(overt, lambda nd: nd.halo_cos > -1) < 0.7  # stranding on one side only
    assert 0.2 < share(overt, lambda nd: nd.blur_mm > 0) < 0.8  # ill-defined margin
    assert share(overt, lambda nd: not nd.spicules) > 0.05
    subtle = [nd for nd in pos if nd.subtle]
    assert subtle and share(subtle, lambda nd: nd.halo_mm > 0) < 0.9
    assert share(neg, lambda nd: nd.lobulation) > 0.1 and share(neg, lambda nd: nd.hilum > 0) > 0.1
    assert share(neg, lambda nd: nd.necrosis > 0) > 0.1 and share(neg, lambda nd: nd.halo_mm > 0) > 0.02
    assert share(neg, lambda nd: nd.halo_mm == 0 and nd.rim_mm > 0) > 0.8  # most keep their clean fat plane
    big_negative = np.percentile([nd.semi_axes.max() for nd in neg], 90)
    assert big_negative > np.median([nd.semi_axes.max() for nd in pos])  # size overlaps
    for field in ("noise_scale", "fov_scale", "length_scale"):
        values = [getattr(s, field) for s in scans]
        assert max(values) / min(values) > 1.3
    assert 0.1 < np.mean([s.sharpen > 0 for s in scans]) < 0.5  # edge-enhancing kernels


def test_plain_ece_signs_in_the_varied_neck_keep_its_neck_and_the_plain_rendering():
    """`--varied --plain-ece-signs` (session 37's A/B): the varied neck (levels Ib-V, each node in its own irregular
    fat, oral cavity, fixation) with the plain generator's nodes: every overt ECE node spiculated and lobulated,
    every ECE-negative one a smooth oval, and on the rendered CT the fat around positives stranded, around
    negatives clean."""
    from site_preprocess.synth.nodes import HU_FAT
    from site_preprocess.synth.phantom import make_patient, render_hu
    shell_hu = {True: [], False: []}
    levels_off_the_plain_range = 0
    for n in range(16):
        patient = make_patient(np.random.default_rng([12, 1, n]), ece=bool(n % 2), varied=True, plain_signs=True)
        assert patient.varied and patient.plain_signs and patient.anatomy.upper and patient.anatomy.fixation
        for nd in patient.nodes:
            assert np.any(nd.envelope_stretch > 1.0) and 2.5 <= nd.envelope_mm <= 6.0  # the varied neck's fat
            assert nd.halo_mm == 0 and nd.blur_mm == 0 and nd.hilum == 0  # none of nodes.py's renderings
            if nd.ece and not nd.subtle:
                assert 4 <= len(nd.spicules) <= 8 and len(nd.lobulation) >= 3
            elif not nd.ece:
                assert not nd.spicules and not nd.lobulation
        node = patient.nodes[0]
        levels_off_the_plain_range += not (-10 <= node.center[1] - patient.neck_shift[1] <= 12)
        # a 1 mm grid around the first node; its perinodal shell (0.5-1.5 mm outside) on the noiseless CT
        axis = np.arange(-24.0, 24.0, 1.0)
        gz, gy, gx = np.meshgrid(axis, axis, axis, indexing="ij")
        pts = np.stack([gx, gy, gz], axis=-1) + node.center
        hu = render_hu(patient, pts, np.ones(3), 0.0, np.random.default_rng(0))
        dist = node.level(pts.reshape(-1, 3)).reshape(hu.shape) * float(node.semi_axes.mean())
        if not node.ece or not node.subtle:
            shell_hu[node.ece].append(float(np.median(hu[(dist > 0.5) & (dist < 1.5)])))
    assert levels_off_the_plain_range >= 1  # nodes at levels Ib or V, not only the plain generator's II-IV
    assert max(shell_hu[False]) < HU_FAT + 40 < min(shell_hu[True])  # clean plane vs stranded fat


def test_the_oral_cavity_holds_node_like_tonsils_in_fat_that_are_never_contoured():
    """The varied generator: above the floor of the mouth, palatine tonsils at a node's HU in their parapharyngeal fat,
    outside every contoured node."""
    from site_preprocess.synth.phantom import make_patient, nodes_level, render_hu
    tonsil_hu, fat_beside = [], []
    for n in range(12):
        rng = np.random.default_rng([13, 0, n])
        patient = make_patient(rng, ece=bool(n % 2), varied=True)
        sx, sy = patient.neck_shift
        for centre, semi, _ in patient.anatomy.upper.tonsils:
            # a line of points outwards from the tonsil's centre, 0.5 mm apart
            out = np.sign(centre[0]) * np.arange(0, 40) * 0.5
            pts = np.stack([centre[0] + sx + out, np.full(40, centre[1] + sy),
                            np.full(40, patient.z_center + centre[2])], axis=-1)
            assert (nodes_level(patient.nodes, pts) > 0).all()
            hu = render_hu(patient, pts[:, None, None, :], np.full(3, 100.0), 0.0, rng)[:, 0, 0]
            tonsil_hu.append(hu[0])
            fat_beside.append(hu[int(round((semi[0] + 2.0) / 0.5))])
    assert 40 <= np.median(tonsil_hu) <= 90 and np.median(fat_beside) < -60


def test_a_varied_hospital_is_deterministic_and_preprocesses_with_its_nodes(tmp_path):
    """`ecefl synth --varied`: the same bytes in one or two processes, a scan per patient (field of view, length),
    and the site preprocessing takes every case with node masks of the generator's size (the nodes' volume and the
    3 mm soft-tissue dilation: no contour lost to the new anatomy)."""
    import nibabel as nib
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    synthesize(tmp_path / "a", sites=1, cases_per_site=4, unlabeled_per_site=0, seed=2, progress=False, varied=True)
    synthesize(tmp_path / "b", sites=1, cases_per_site=4, unlabeled_per_site=0, seed=2, progress=False, varied=True,
               workers=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    site = tmp_path / "a" / "hospital-a"
    manifest = json.loads((site / "synth_manifest.json").read_text())
    assert manifest["varied"] and len({tuple(p["pixel_spacing"]) for p in manifest["patients"]}) == 4
    assert len({p["n_slices"] for p in manifest["patients"]}) >= 3
    assert run_preprocess(site / "dicom", site / "labels.csv", tmp_path / "pre", SiteConfig(), progress=False) == 0
    datalist = json.loads((tmp_path / "pre" / "datalist.json").read_text())["training"]
    assert len(datalist) == 4
    volumes = []
    for item in datalist:
        img = nib.load(tmp_path / "pre" / item["nodes"])
        volumes.append(float(np.asarray(img.dataobj).astype(bool).sum() * np.prod(img.header.get_zooms()[:3])) / 1e3)
    # ml, an ellipsoid of the largest diameter with the mean axis ratios (~0.6 of the sphere), per patient
    drawn = [sum(4 / 3 * np.pi * (d / 2) ** 3 * 0.6 for d in p["node_diameters_mm"]) / 1e3
             for p in manifest["patients"]]
    ratios = np.array(sorted(volumes)) / np.array(sorted(drawn))  # case ids are pseudonyms: matched by rank
    assert ((ratios > 0.6) & (ratios < 1.8)).all(), ratios


def test_longitudinal_nodes_lie_along_the_neck_as_ovoids_and_the_default_stays_turned_at_random(tmp_path):
    """`--node-axes longitudinal` (session 41): every contoured node's longest axis runs craniocaudally (tilt <= 20
    degrees) and is its craniocaudal semi-axis, 1.0-1.7x its largest axial one; the default draws ellipsoids turned at
    random (the draws of before). Preprocessed, the longitudinal node masks are longer along z than across; an
    unknown choice is refused."""
    import nibabel as nib
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    from site_preprocess.synth.phantom import make_patient
    along, random_turn = [], []
    for n in range(24):
        for longitudinal, into in ((True, along), (False, random_turn)):
            patient = make_patient(np.random.default_rng([21, 0, n]), ece=bool(n % 2), longitudinal=longitudinal)
            for nd in patient.nodes:
                longest = nd.rotation[:, int(np.argmax(nd.semi_axes))]
                into.append(abs(longest[2]))
                if longitudinal:
                    assert 1.0 <= nd.semi_axes[2] / nd.semi_axes[:2].max() <= 1.7 + 1e-9
    assert min(along) >= np.cos(np.deg2rad(20)) - 1e-9
    assert np.median(random_turn) < 0.8  # random orientations: |cos| to z is uniform on [0, 1]
    with pytest.raises(ValueError, match="node_axes"):
        synthesize(tmp_path / "x", sites=1, cases_per_site=1, unlabeled_per_site=0, progress=False, node_axes="z")
    synthesize(tmp_path / "s", sites=1, cases_per_site=3, unlabeled_per_site=0, seed=4, progress=False,
               node_axes="longitudinal")
    site = tmp_path / "s" / "hospital-a"
    assert json.loads((site / "synth_manifest.json").read_text())["node_axes"] == "longitudinal"
    assert run_preprocess(site / "dicom", site / "labels.csv", tmp_path / "pre", SiteConfig(), progress=False) == 0
    ratios = []
    for item in json.loads((tmp_path / "pre" / "datalist.json").read_text())["training"]:
        img = nib.load(tmp_path / "pre" / item["nodes"])
        labels, count = ndimage.label(np.asarray(img.dataobj) > 0)
        for k in range(1, count + 1):
            extent = np.ptp(np.argwhere(labels == k), 0) * np.asarray(img.header.get_zooms()[:3])
            ratios.append(extent[2] / extent[:2].max())
    assert len(ratios) >= 3 and np.median(ratios) > 1.1, ratios
