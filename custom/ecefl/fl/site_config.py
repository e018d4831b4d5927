"""Where a site's data lives: site-local configuration, never part of the job (jobs are hospital-agnostic).

Looked up, first match wins:
1. `local/ecefl_site.json` in the site's NVFlare client workspace: {"datalist": "/data/ecefl/datalist.json"}
2. the file named by ECEFL_SITE_CONFIG: either {"datalist": ...} or {"sites": {"<site>": {"datalist": ...}}}
   (the second form lets one machine host several simulated sites)
3. ECEFL_DATALIST: the datalist path itself
"""
from __future__ import annotations

import json
import os
from pathlib import Path

LOCAL_FILE = "ecefl_site.json"


class SiteConfigError(RuntimeError):
    pass


def _workspace_candidates() -> list[Path]:
    """The client workspace root: cwd or an ancestor holding startup/ or local/ (POC, production, simulator)."""
    here = Path.cwd().resolve()
    return [here, *here.parents][:5]


def datalist_for(site: str) -> Path:
    for root in _workspace_candidates():
        local = root / "local" / LOCAL_FILE
        if local.is_file():
            return _checked(site, _read(local, site).get("datalist"), str(local))
    env_file = os.environ.get("ECEFL_SITE_CONFIG")
    if env_file:
        cfg = _read(Path(env_file), site)
        entry = cfg.get("sites", {}).get(site, cfg if "datalist" in cfg else None)
        if entry is None:
            raise SiteConfigError(f"site {site}: ECEFL_SITE_CONFIG={env_file} has no entry for this site; add "
                                  f'"sites": {{"{site}": {{"datalist": "/path/to/datalist.json"}}}}')
        return _checked(site, entry.get("datalist"), env_file)
    env_path = os.environ.get("ECEFL_DATALIST")
    if env_path:
        return _checked(site, env_path, "ECEFL_DATALIST")
    raise SiteConfigError(
        f"site {site} has no data configured for this job: set \"datalist\" in <client workspace>/local/"
        f"{LOCAL_FILE}, or ECEFL_SITE_CONFIG / ECEFL_DATALIST in the client's environment (see docs/DEPLOY.md)")


def _read(path: Path, site: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SiteConfigError(f"site {site}: cannot read site config {path}: {exc}") from exc


def _checked(site: str, value, source: str) -> Path:
    if not value:
        raise SiteConfigError(f"site {site}: {source} sets no \"datalist\"")
    path = Path(value).expanduser()
    if not path.is_file():
        raise SiteConfigError(f"site {site}: datalist {path} (from {source}) does not exist; run `ecefl "
                              "preprocess` at this site or fix the setting")
    return path


def load_privacy_policy(path) -> dict:
    """A site privacy policy (NVFlare's local/privacy.json format: named scopes with result filters);
    ValueError naming the file when it cannot be read or holds no scopes."""
    try:
        policy = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"site privacy policy {path} cannot be read as JSON ({exc})") from exc
    if not isinstance(policy, dict) or not isinstance(policy.get("scopes"), list):
        raise ValueError(f"site privacy policy {path} has no \"scopes\" list (see poc/privacy.json)")
    return policy
