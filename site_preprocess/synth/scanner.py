"""What differs between two scans of one site: reconstruction kernel, dose (noise), field of view, length and
calibration. Drawn per patient, apart from the patient's anatomy and nodes (its own random stream), so a seed keeps
its nodes and labels whatever the scanner draws."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Scan:
    psf_mm: tuple[float, float, float]  # Gaussian point-spread sigma (z, row, column), mm: soft to sharp kernels
    sharpen: float  # unsharp-mask gain of an edge-enhancing kernel (0 = none)
    noise_scale: float  # times the site's noise level (dose, patient size)
    noise_grain_vox: float  # correlation of the noise, voxels (fine for sharp kernels, coarse for soft ones)
    hu_offset: float  # calibration drift, HU
    fov_scale: float  # times the site's pixel spacing (reconstruction field of view)
    length_scale: float  # times the site's scan length


def draw_scan(texture_seed: int) -> Scan:
    rng = np.random.default_rng([texture_seed, 17])
    psf = float(rng.uniform(0.45, 1.1))
    return Scan(psf_mm=(float(rng.uniform(0.4, 0.9)), psf, psf),
                sharpen=float(rng.uniform(0.3, 0.8)) if rng.random() < 0.3 else 0.0,
                noise_scale=float(rng.uniform(0.6, 1.8)), noise_grain_vox=float(rng.uniform(0.5, 1.2)),
                hu_offset=float(rng.uniform(-6, 6)), fov_scale=float(rng.uniform(1.0, 1.35)),
                length_scale=float(rng.uniform(1.0, 1.5)))


NOMINAL = Scan(psf_mm=(0.55, 0.7, 0.7), sharpen=0.0, noise_scale=1.0, noise_grain_vox=0.7, hu_offset=0.0,
               fov_scale=1.0, length_scale=1.0)


def reconstruct(hu: np.ndarray, voxel_mm: np.ndarray, noise_hu: float, scan: Scan,
                rng: np.random.Generator) -> np.ndarray:
    """Scanner point-spread, kernel edge enhancement, then correlated noise. Arrays are (slices, rows, cols)."""
    sigma_vox = np.array(scan.psf_mm) / np.maximum(voxel_mm, 0.3)
    out = ndimage.gaussian_filter(hu, sigma=sigma_vox)
    if scan.sharpen > 0:
        out = out + scan.sharpen * (out - ndimage.gaussian_filter(out, sigma=1.0 / np.maximum(voxel_mm, 0.3)))
    noise = ndimage.gaussian_filter(rng.normal(size=hu.shape).astype(np.float32), sigma=scan.noise_grain_vox)
    noise *= noise_hu * scan.noise_scale / max(float(noise.std()), 1e-6)
    return (out + noise + scan.hu_offset).astype(np.float32)
