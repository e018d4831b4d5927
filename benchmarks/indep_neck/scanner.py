"""The CT scanner: per-patient acquisition draw (vendor, kernel, matrix, slices, noise) and reconstruction.

Why apart: it is the hospital's imaging chain, independent of the anatomy: draw_scanner fixes the grid and
file conventions, reconstruct turns the painted HU volume into the stored image (slice profile, kernel MTF,
noise with the kernel's power spectrum, int16).
"""
from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
from scipy import fft, ndimage

VENDORS = [("SIEMENS", "SOMATOM Definition AS", ("B30f", "B40f", "B60f")),
           ("GE MEDICAL SYSTEMS", "Optima CT580", ("SOFT", "STANDARD", "BONE")),
           ("Philips", "Brilliance Big Bore", ("A", "B", "D")), ("TOSHIBA", "Aquilion LB", ("FC08", "FC13", "FC30"))]


def reconstruct(hu, scan, area, rng):
    """Slice sensitivity (z blur ~ thickness), kernel MTF, and noise with the kernel's power spectrum."""
    K, N, _ = hu.shape
    hu = ndimage.gaussian_filter1d(hu, 0.42 * scan.thickness / scan.spacing, axis=0)
    f = np.hypot(fft.fftfreq(N, scan.pixel)[:, None], fft.rfftfreq(N, scan.pixel)[None, :]).astype(np.float32)
    mtf = np.exp(-(f / scan.fc) ** 2) * (1 + scan.boost * (f / scan.fc) ** 2)
    image = fft.irfft2(fft.rfft2(hu) * mtf, s=(N, N))
    nps = (f ** 0.3 * np.exp(-(f / (0.5 * scan.fc)) ** 2) if scan.iterative else f) * mtf ** 2
    half_spectrum = (K, N, N // 2 + 1)
    white = rng.standard_normal(half_spectrum, np.float32) + 1j * rng.standard_normal(half_spectrum, np.float32)
    noise = fft.irfft2(white * np.sqrt(nps), s=(N, N))
    noise /= noise.std()
    sigma = scan.sigma * np.clip(np.sqrt(area / np.median(area)), 0.8, 2.0)  # broader shoulders: noisier slices
    image += noise * sigma[:, None, None].astype(np.float32) + scan.hu_offset
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def draw_scanner(rng):
    """Per-patient acquisition: matrix, pixel, slice profile, kernel, noise, rescale, file conventions."""
    vendor, model, kernels = VENDORS[rng.integers(len(VENDORS))]
    kind = rng.choice([0, 1, 2], p=[0.55, 0.25, 0.2])  # soft, standard, sharp reconstruction kernel
    matrix = 256 if rng.random() < 0.75 else 320
    thickness = float(rng.choice([3.0, 3.75]) if matrix == 320 else rng.choice([1.5, 2.0, 2.5, 3.0, 3.75]))
    spacing = thickness if rng.random() < 0.8 or thickness < 2 else round(thickness * 0.8, 2)
    max_slices = min(100, int(10.3e6 / (2 * matrix ** 2)), int(215 / spacing) + 1)  # files < ~10 MB per patient
    n = int(np.clip(round(rng.uniform(150, 215) / spacing) + 1, 50, max_slices))
    cov = (n - 1) * spacing
    z_bot = rng.uniform(max(-52, 95 - cov), max(-50, min(35, 165 - cov)))  # some start above the clavicles
    z_top = round(z_bot + cov, 2)
    return NS(vendor=vendor, model=model, kernel=kernels[kind], kind=["soft", "standard", "sharp"][kind],
              fc=[rng.uniform(0.3, 0.42), rng.uniform(0.5, 0.65), rng.uniform(0.8, 1.0)][kind],
              boost=[0.0, 0.2, rng.uniform(0.5, 1.0)][kind], iterative=rng.random() < 0.4,
              sigma=[rng.uniform(8, 16), rng.uniform(10, 20), rng.uniform(16, 30)][kind],
              hu_offset=rng.uniform(-10, 10),
              matrix=matrix, pixel=round(rng.uniform(0.8, 1.4), 3), thickness=thickness, spacing=spacing, n=n,
              z_top=z_top, intercept=-1000 if rng.random() < 0.08 else -1024, descending=rng.random() < 0.5,
              offset=np.round([rng.uniform(-15, 15), rng.uniform(-210, -120), rng.uniform(-700, 200)], 2),
              fov_centre=(rng.uniform(-8, 8), rng.uniform(0, 15)), kvp=float(rng.choice([100, 120, 120, 140])))
