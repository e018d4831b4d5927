"""Site-local data configuration: lookup order and the messages a hospital engineer sees."""
from __future__ import annotations

import json

import pytest

from ecefl.fl.site_config import SiteConfigError, datalist_for


def test_lookup_order_local_file_then_env_file_then_env_path(tmp_path, monkeypatch):
    d1, d2, d3 = (tmp_path / f"d{i}.json" for i in (1, 2, 3))
    for d in (d1, d2, d3):
        d.write_text("{}")
    ws = tmp_path / "site-1" / "job-123"
    ws.mkdir(parents=True)
    monkeypatch.chdir(ws)
    monkeypatch.delenv("ECEFL_SITE_CONFIG", raising=False)
    monkeypatch.setenv("ECEFL_DATALIST", str(d3))
    assert datalist_for("site-1") == d3
    cfg = tmp_path / "sites.json"
    cfg.write_text(json.dumps({"sites": {"site-1": {"datalist": str(d2)}}}))
    monkeypatch.setenv("ECEFL_SITE_CONFIG", str(cfg))
    assert datalist_for("site-1") == d2
    (tmp_path / "site-1" / "local").mkdir()
    (tmp_path / "site-1" / "local" / "ecefl_site.json").write_text(json.dumps({"datalist": str(d1)}))
    assert datalist_for("site-1") == d1


def test_missing_configuration_names_site_and_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ECEFL_SITE_CONFIG", raising=False)
    monkeypatch.delenv("ECEFL_DATALIST", raising=False)
    with pytest.raises(SiteConfigError) as err:
        datalist_for("hospital-x")
    assert "hospital-x" in str(err.value) and "ecefl_site.json" in str(err.value)
    monkeypatch.setenv("ECEFL_DATALIST", str(tmp_path / "nope.json"))
    with pytest.raises(SiteConfigError) as err:
        datalist_for("hospital-x")
    assert "does not exist" in str(err.value) and "ECEFL_DATALIST" in str(err.value)
