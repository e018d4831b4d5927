"""Shared fixtures: small synthetic hospitals written by the project's own generator (real DICOM files)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

# `make test` runs the files on 2 pytest-xdist workers (most of the federated and POC tests wait on NVFlare's
# processes and timeouts): each worker then computes in-process on one thread, so two never share a core
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch
    torch.set_num_threads(1)

# the longest files first (measured with --durations; each 2-12 min), so that the two workers finish together
# instead of one running the POC drills alone at the end
LONGEST_FIRST = ("test_poc_faults.py", "test_faults.py", "test_federated.py", "test_calibrate.py", "test_demo.py",
                 "test_poc.py", "test_infer.py", "test_centralised.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: file order kept otherwise


def wait_for(predicate, timeout: float, what: str):
    """predicate()'s first truthy value, polled every 0.5 s (the drills poll instead of sleeping a fixed time)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="session", autouse=True)
def site_secret(tmp_path_factory) -> Path:
    """Each test session uses its own pseudonym key, outside every output folder."""
    path = tmp_path_factory.mktemp("secret") / "site_secret.key"
    os.environ["ECEFL_SITE_SECRET_FILE"] = str(path)
    return path


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Four hospitals (every site profile), 3 labelled + 1 unlabelled patients each."""
    from site_preprocess.synth import synthesize
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, sites=4, cases_per_site=3, unlabeled_per_site=1, seed=11, progress=False)
    return root


@pytest.fixture(scope="session")
def preprocessed(synth_root, tmp_path_factory) -> dict[str, Path]:
    """Each synthetic site preprocessed once: {site name: OUT folder}."""
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    outs = {}
    for site in sorted(p for p in synth_root.iterdir() if p.is_dir()):
        out = tmp_path_factory.mktemp(f"pre-{site.name}")
        code = run_preprocess(site / "dicom", site / "labels.csv", out, SiteConfig(), progress=False)
        assert code == 0, f"{site.name}: exit {code}"
        outs[site.name] = out
    return outs


def preprocessed_sites(root: Path, sites: int, cases_per_site: int, unlabeled_per_site: int, seed: int) -> dict:
    """Small synthetic hospitals, preprocessed: {site name: absolute datalist path}."""
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    from site_preprocess.synth import synthesize
    out = {}
    for site_dir in synthesize(root / "dicom", sites, cases_per_site, unlabeled_per_site, seed, progress=False):
        dst = root / "pre" / site_dir.name
        assert run_preprocess(site_dir / "dicom", site_dir / "labels.csv", dst, SiteConfig(), progress=False) == 0
        out[site_dir.name] = (dst / "datalist.json").resolve()
    return out
