"""The command line explains itself: every option has a help text with its default, every command a
description, presets are listed, `ecefl --version` answers."""
from __future__ import annotations

import argparse

import pytest

from ecefl import __version__
from ecefl.cli import build_parser, main
from ecefl.plan import PRESETS


def _walk(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + [name], sub, None
                yield from _walk(sub, path + [name])
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, parser, action


def test_every_option_has_help_with_its_default_and_every_command_a_description():
    parser = build_parser()
    undocumented, commands = [], 0
    for path, sub, action in _walk(parser, ["ecefl"]):
        if action is None:
            commands += 1
            assert sub.description, f"{' '.join(path)} has no description"
            assert sub.formatter_class is argparse.ArgumentDefaultsHelpFormatter
        elif not (action.help or "").strip():
            undocumented.append(f"{' '.join(path)} {action.option_strings or action.dest}")
        if action is not None and action.dest == "preset":
            assert list(action.choices) == sorted(PRESETS)
    assert commands >= 15 and undocumented == []
    demo_help = next(s for p, s, a in _walk(parser, ["ecefl"]) if a is None and p[-1] == "demo").format_help()
    assert "(default: 40)" in demo_help and "cpu-small" in demo_help


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ecefl {__version__}"


@pytest.mark.parametrize("job", ["mae_pretrain", "ece_finetune"])
def test_job_py_exports_the_recipe_it_builds(job, tmp_path):
    """jobs/<job>/job.py, as an NVFlare user runs it: the exported folder holds our server workflow, the Client
    API script with this job's arguments, and the plan of the chosen preset."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "jobs" / job / "job.py"), "--export", "--export-dir",
                           str(tmp_path), "--preset", "test-tiny", "--rounds", "3", "--workspace", str(tmp_path / "ws")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    server = json.loads((tmp_path / job / "app" / "config" / "config_fed_server.json").read_text())
    controller = next(w for w in server["workflows"] if w["path"].endswith("PooledFedAvg"))
    # NVFlare writes only the arguments that differ from the constructor's defaults (job_kind: ece_finetune)
    assert controller["args"].get("job_kind", "ece_finetune") == job and controller["args"]["num_rounds"] == 3
    assert controller["args"]["plan"]["preset"] == "test-tiny" and controller["args"]["min_sites"] == 2
    client = (tmp_path / job / "app" / "config" / "config_fed_client.json").read_text()
    assert f"--job {job}" in client and "client.py" in client
    assert (tmp_path / job / "app" / "custom" / "ecefl" / "fl" / "client.py").is_file()


def test_log_level_before_or_after_the_command_and_timestamped_lines_on_stderr(capsys):
    import logging
    import re
    from ecefl.logs import configure
    parser = build_parser()
    assert parser.parse_args(["synth", "--out", "x"]).log_level == "INFO"
    assert parser.parse_args(["--log-level", "warning", "synth", "--out", "x"]).log_level == "WARNING"
    assert parser.parse_args(["--log-level", "error", "poc", "stop", "--workspace", "w",
                              "--log-level", "debug"]).log_level == "DEBUG"
    log = logging.getLogger("ecefl.stages")
    try:
        configure("WARNING")
        log.info("hidden at WARNING")
        log.warning("shown at WARNING")
        configure("DEBUG")
        log.debug("shown at DEBUG")
        printed = capsys.readouterr()
    finally:
        configure("INFO")
    assert printed.out == ""
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert re.search(stamp + r"WARNING ecefl.stages: shown at WARNING$", printed.err, re.M)
    assert re.search(stamp + r"DEBUG +ecefl.stages: shown at DEBUG$", printed.err, re.M)
    assert "hidden" not in printed.err


def test_synth_varied_writes_the_varied_generator_s_hospitals(tmp_path):
    """`ecefl synth --varied [--plain-ece-signs]` and `--node-axes`: its hospitals carry the flags in the
    manifest and the varied ones a scan record per patient; --plain-ece-signs alone is refused."""
    import json
    assert main(["synth", "--out", str(tmp_path), "--sites", "1", "--cases-per-site", "2", "--unlabeled-per-site",
                 "0", "--varied", "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "hospital-a" / "synth_manifest.json").read_text())
    assert manifest["varied"] is True and manifest["ece_signs"] == "varied"
    assert all(p["scan"]["noise_hu"] > 0 for p in manifest["patients"])
    # the plain rendering of ECE in the varied neck; the plain generator has no other to swap
    assert main(["synth", "--out", str(tmp_path / "p"), "--sites", "1", "--cases-per-site", "2",
                 "--unlabeled-per-site", "0", "--varied", "--plain-ece-signs", "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "p" / "hospital-a" / "synth_manifest.json").read_text())
    assert manifest["varied"] is True and manifest["ece_signs"] == "plain"
    assert main(["synth", "--out", str(tmp_path / "q"), "--plain-ece-signs", "--no-progress"]) == 2
    assert not (tmp_path / "q").exists()
    # the nodes turned at random by default (the manifest as before); along the neck on request
    assert "node_axes" not in manifest
    assert main(["synth", "--out", str(tmp_path / "l"), "--sites", "1", "--cases-per-site", "2",
                 "--unlabeled-per-site", "0", "--node-axes", "longitudinal", "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "l" / "hospital-a" / "synth_manifest.json").read_text())
    assert manifest["node_axes"] == "longitudinal" and "varied" not in manifest
