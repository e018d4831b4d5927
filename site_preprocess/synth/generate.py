"""`ecefl synth`: write synthetic hospitals as real DICOM (CT series + RTSTRUCT) with labels.csv.

Layout per site: DIR/<site>/dicom/<PatientID>/CT/*.dcm, DIR/<site>/dicom/<PatientID>/RTSTRUCT.dcm (labelled
patients), DIR/<site>/labels.csv (patient_id,ece), and DIR/<site>/synth_manifest.json (generator truth, kept
beside the DICOM as a hospital's own records would be).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .contours import ellipse_polygon, trace_slice
from .dicom_writer import det_uid, write_ct_series, write_rtstruct
from .phantom import Patient, make_patient, nodes_level, render_hu
from .profiles import SiteProfile, site_profile
from .scanner import NOMINAL, draw_scan

NODE_AXES = ("longitudinal", "random")  # how the contoured nodes' axes lie (synthesize's node_axes)
FIRST_NAMES = ("Avery", "Blake", "Casey", "Dana", "Emery", "Finley", "Gray", "Harper", "Indy", "Jules")


def synthesize(out: Path, sites: int = 3, cases_per_site: int = 16, unlabeled_per_site: int = 8,
               seed: int = 0, progress: bool = True, only: list[int] | None = None, workers: int = 1,
               varied: bool = False, plain_signs: bool = False, node_axes: str = "random") -> list[Path]:
    """only: synthesise just these site indices (each site's data depends on its index alone, so a subset is
    identical to those sites of the full set). workers > 1: patients are written in that many processes (each
    patient depends on (seed, site, index) alone, so the files are identical). varied: the varied generator
    (domain randomisation: oral cavity, fixation, normal nodes, nodes at levels Ib-V with varied ECE renderings,
    per-patient scans; docs/BENCHMARKS.md, session 36); off, the plain generator's bytes of before. plain_signs (with
    varied): the varied neck and scans with the plain generator's nodes and ECE rendering (session 37).
    node_axes: "random" (the default: ellipsoids turned at random, the bytes of before) or "longitudinal", the
    contoured nodes ovoid along the neck as cervical nodes lie (phantom.make_patient; session 41)."""
    if plain_signs and not varied:
        raise ValueError("plain_signs applies to the varied generator (the plain one always renders ECE so)")
    if node_axes not in NODE_AXES:
        raise ValueError(f"node_axes must be one of {NODE_AXES}, not {node_axes!r}")
    out = Path(out)
    site_dirs = []
    pool = None
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        pool = ProcessPoolExecutor(workers)
    for site_index in range(sites):
        if only is not None and site_index not in only:
            continue
        profile = site_profile(site_index)
        site_dir = out / profile.name
        site_rng = np.random.default_rng([seed, site_index, 7919])
        n_pos = int(round(cases_per_site * profile.positive_fraction))
        if cases_per_site >= 2:
            n_pos = min(max(n_pos, 1), cases_per_site - 1)  # every site sees both classes
        labels = np.array([1] * n_pos + [0] * (cases_per_site - n_pos))
        site_rng.shuffle(labels)
        manifest, label_rows = {"site": profile.name, "seed": seed, "patients": []}, []
        if varied:
            manifest["varied"] = True
            manifest["ece_signs"] = "plain" if plain_signs else "varied"
        if node_axes != "random":  # the default's manifest stays byte-identical to before
            manifest["node_axes"] = node_axes
        total = cases_per_site + unlabeled_per_site
        eces = [int(labels[n]) if n < cases_per_site else None for n in range(total)]
        args = [(site_dir / "dicom", profile, site_index, n, eces[n], seed, varied, plain_signs,
                 node_axes == "longitudinal")
                for n in range(total)]
        records = pool.map(_write_patient_args, args) if pool else map(_write_patient_args, args)
        for n, record in enumerate(tqdm(records, total=total, desc=f"synth {profile.name}", unit="patient",
                                        disable=not progress)):
            manifest["patients"].append(record)
            if eces[n] is not None:
                label_rows.append((record["patient_id"], eces[n]))
        with open(site_dir / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient_id", "ece"])
            writer.writerows(label_rows)
        (site_dir / "synth_manifest.json").write_text(json.dumps(manifest, indent=1))
        site_dirs.append(site_dir)
    if pool:
        pool.shutdown()
    return site_dirs


def _write_patient_args(args: tuple) -> dict:
    return _write_patient(*args)


def _phi(profile: SiteProfile, site_index: int, n: int, rng: np.random.Generator, seed: int) -> dict:
    letter = chr(ord("A") + site_index % 26)
    pid = profile.patient_id_format.format(n=n + 1 + 100 * site_index)
    return {
        "name": f"ZZSYN{letter}{n:03d}^{FIRST_NAMES[n % len(FIRST_NAMES)]}",
        "patient_id": pid,
        "birth_date": f"19{int(rng.integers(40, 80))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "sex": "M" if rng.random() < 0.75 else "F",
        "study_uid": det_uid(seed, profile.name, n, "study"),
        "study_date": f"2025{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "study_time": f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}00",
        "study_id": f"ST{letter}{n:04d}",
        "accession": f"ACC{letter}{n:05d}Q",
        "physician": f"ZZREF{letter}^Doctor",
        "institution": profile.institution,
        "for_uid": det_uid(seed, profile.name, n, "frame"),
    }


def scan_start(patient: Patient, n_slices: int, dz: float) -> float:
    """z of the lowest slice, drawn apart from the patient's other draws, so a seed keeps its nodes and noise.
    Plain generator: the scan centred on the neck or reaching lower into the thoracic inlet, never so low that a node
    comes within 5 mm of its top. Varied: planning CTs are placed differently, some reaching up into the oral cavity,
    others down into the thoracic inlet; every node stays at least 5 mm inside the scan, which ends at most 5 cm
    above the floor of the mouth and 6 cm below the shoulders."""
    length = (n_slices - 1) * dz
    if not patient.varied:
        top = max(nd.center[2] + nd.max_extent() for nd in patient.nodes) - patient.z_center
        room = max(length / 2 - top - 5.0, 0.0)
        lower = np.random.default_rng([patient.texture_seed, 13]).uniform(0, room)
        return patient.z_center - length / 2 - lower
    top = max(nd.center[2] + nd.max_extent() for nd in patient.nodes)
    bottom = min(nd.center[2] - nd.max_extent() for nd in patient.nodes)
    anatomy = patient.anatomy
    lowest = max(top + 5.0 - length, patient.z_center + anatomy.shoulder_dz - 60.0)
    highest = min(bottom - 5.0, patient.z_center + anatomy.mandible_dz + 50.0 - length)
    if highest < lowest:  # a short scan: the nodes decide
        lowest = highest = min(max((lowest + highest) / 2, top + 5.0 - length), bottom - 5.0)
    return float(np.random.default_rng([patient.texture_seed, 13]).uniform(lowest, highest))


def _write_patient(dicom_root: Path, profile: SiteProfile, site_index: int, n: int, ece: int | None,
                   seed: int, varied: bool = False, plain_signs: bool = False, longitudinal: bool = False) -> dict:
    rng = np.random.default_rng([seed, site_index, n])
    patient = make_patient(rng, None if ece is None else bool(ece), varied=varied, plain_signs=plain_signs,
                           longitudinal=longitudinal)
    phi = _phi(profile, site_index, n, rng, seed)
    scan = draw_scan(patient.texture_seed) if varied else NOMINAL
    dr, dc = (round(v * scan.fov_scale, 4) for v in profile.pixel_spacing) if varied else profile.pixel_spacing
    dz = profile.slice_thickness
    n_slices = int(round(profile.z_extent_mm * scan.length_scale / dz)) + 1
    x0 = -profile.cols * dc / 2 + rng.uniform(-3, 3)
    y0 = -profile.rows * dr / 2 + rng.uniform(-3, 3)
    z0 = scan_start(patient, n_slices, dz) + rng.uniform(-1, 1)
    zs = z0 + dz * np.arange(n_slices)
    xs = x0 + dc * np.arange(profile.cols)
    ys = y0 + dr * np.arange(profile.rows)
    gz, gy, gx = np.meshgrid(zs, ys, xs, indexing="ij")
    pts = np.stack([gx, gy, gz], axis=-1)
    hu = render_hu(patient, pts, np.array([dz, dr, dc]), profile.noise_hu, rng, scan)

    patient_dir = dicom_root / phi["patient_id"]
    series_uid = det_uid(seed, profile.name, n, "ct-series")
    sop_uids = [det_uid(seed, profile.name, n, "ct", k) for k in range(n_slices)]
    if profile.instance_number_head_first:
        instance_numbers = [n_slices - k for k in range(n_slices)]
    else:
        instance_numbers = [k + 1 for k in range(n_slices)]
    if profile.file_naming == "sop_uid":
        names = [f"CT.{uid}.dcm" for uid in sop_uids]
    elif profile.file_naming == "im_number":
        names = [f"IM{inst:05d}" for inst in instance_numbers]
    else:
        perm = rng.permutation(n_slices)
        names = [f"slice_{int(perm[k]):03d}.dcm" for k in range(n_slices)]
    positions = [np.array([x0, y0, z]) for z in zs]
    write_ct_series(patient_dir / "CT", hu, positions, [1, 0, 0, 0, 1, 0], (dr, dc), profile, phi,
                    series_uid, names, instance_numbers, sop_uids)

    record = {"patient_id": phi["patient_id"], "ece": ece, "labelled": ece is not None,
              "subtle": any(nd.subtle for nd in patient.nodes),
              "node_diameters_mm": [round(float(2 * nd.semi_axes.max()), 1) for nd in patient.nodes],
              "n_slices": n_slices, "pixel_spacing": [dr, dc], "slice_thickness": dz}
    if varied:
        record["scan"] = {"psf_mm": list(scan.psf_mm), "sharpen": scan.sharpen,
                          "noise_hu": profile.noise_hu * scan.noise_scale,
                          "dental_metal": patient.anatomy.upper.metal is not None}
    if ece is not None:
        rois = _rois(patient, profile, zs)
        write_rtstruct(patient_dir / "RTSTRUCT.dcm", rois, phi, series_uid, sop_uids, list(zs),
                       (seed, profile.name, n))
        record["nodal_rois"] = [r["name"] for r in rois if r.get("nodal")]
    return record


def _rois(patient: Patient, profile: SiteProfile, zs: np.ndarray) -> list[dict]:
    rois = []
    groups = sorted({nd.group for nd in patient.nodes})
    for g in groups:
        members = [nd for nd in patient.nodes if nd.group == g]
        reach = max(nd.max_extent() for nd in members) + 2.0
        cx = float(np.mean([nd.center[0] for nd in members]))
        cy = float(np.mean([nd.center[1] for nd in members]))
        span = reach + max(float(np.abs(nd.center[:2] - [cx, cy]).max()) for nd in members)
        bbox = (cx - span, cx + span, cy - span, cy + span)
        polys = []
        for z in zs:
            polys += trace_slice(lambda p, m=members: nodes_level(m, p), float(z), bbox)
        rois.append({"name": profile.nodal_roi_names[g % len(profile.nodal_roi_names)], "type": "GTV",
                     "polygons": polys, "nodal": True})
    body, cord, parotid, primary, ptv, ctv_n, extra = profile.distractor_rois
    sx, sy = patient.neck_shift
    ax, ay = patient.body_axes
    zc = patient.z_center
    rois.append({"name": body, "type": "EXTERNAL", "polygons": [
        ellipse_polygon(sx, sy, ax * (1 + 0.0015 * (z - zc)), ay * (1 + 0.0015 * (z - zc)), z) for z in zs]})
    rois.append({"name": cord, "type": "ORGAN", "polygons": [ellipse_polygon(sx, sy + 38, 5, 4.5, z) for z in zs]})
    rois.append({"name": parotid, "type": "ORGAN", "polygons": [
        ellipse_polygon(sx + 40, sy - 8, 12, 16, z) for z in zs if z > zc + 30]})
    if patient.has_primary:
        rois.append({"name": primary, "type": "GTV", "polygons": [
            ellipse_polygon(sx + 7, sy - 20, 10, 8, z) for z in zs if zc + 10 < z < zc + 40]})
    ptv_polys = []
    for nd in patient.nodes:  # a 5 mm margin around each node (ellipse approximation on each slice)
        for z in zs:
            if abs(z - nd.center[2]) < nd.semi_axes.max() + 5:
                ptv_polys.append(ellipse_polygon(nd.center[0], nd.center[1], nd.semi_axes.max() + 5,
                                                 nd.semi_axes.max() + 5, z, n=48))
    rois.append({"name": ptv, "type": "PTV", "polygons": ptv_polys})
    rois.append({"name": ctv_n, "type": "CTV", "polygons": [
        ellipse_polygon(sx + side * 38, sy, 20, 24, z) for side in (-1, 1) for z in zs]})
    if extra:
        rois.append({"name": extra, "type": "ORGAN" if not extra.startswith("z") else "CONTROL",
                     "polygons": [], "empty": True})
    return rois
