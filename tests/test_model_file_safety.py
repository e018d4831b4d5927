"""A model file is data, never code: a checkpoint carrying a pickle payload is refused by every command that
loads model files, and the payload never runs."""
from __future__ import annotations

import os

import pytest
import torch

from ecefl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ecefl.cli import main as ecefl_main
from ecefl.model import DualOutputSwinUNETR
from ecefl.plan import get_plan


class _Payload:
    """Unpickling this object would create the marker file (what an attacker's code would do instead)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_files")
    plan = get_plan("test-tiny")
    state = DualOutputSwinUNETR(plan).state_dict()
    genuine = save_checkpoint(root / "genuine.pt", "dual", plan, state, threshold=0.4, trained={"epochs": 1})
    marker = root / "payload_ran"
    crafted = root / "crafted.pt"
    # a genuine-looking ecefl checkpoint (format, version, plan, weights) with one extra pickled object
    payload = {"format": "ecefl-checkpoint", "version": 1, "kind": "dual", "plan": plan.to_dict(),
               "model": state, "threshold": 0.5, "note": _Payload(str(marker))}
    torch.save(payload, crafted)
    return {"genuine": genuine, "crafted": crafted, "marker": marker, "root": root}


def test_genuine_checkpoint_loads_with_plain_data(files):
    ckpt = load_checkpoint(files["genuine"], kind="dual")
    assert ckpt["threshold"] == pytest.approx(0.4)
    assert ckpt["trained"] == {"epochs": 1}
    assert ckpt["plan"].preset == "test-tiny"


def test_crafted_checkpoint_refused_and_payload_never_runs(files):
    with pytest.raises(CheckpointError, match="refused.*could run code.*Nothing from it was executed"):
        load_checkpoint(files["crafted"])
    assert not files["marker"].exists()


@pytest.mark.parametrize("command", ["evaluate", "train", "infer", "export-bundle"])
def test_every_command_refuses_crafted_model(files, preprocessed, synth_root, command, capsys):
    crafted, out = str(files["crafted"]), files["root"] / f"out-{command}"
    datalist = str(preprocessed["hospital-a"] / "datalist.json")
    patient = next((synth_root / "hospital-a" / "dicom").iterdir())
    argv = {
        "evaluate": ["evaluate", "--model", crafted, "--datalist", datalist, "--out", str(out)],
        "train": ["train", "--datalist", datalist, "--preset", "test-tiny", "--epochs", "1", "--init", crafted,
                  "--out", str(out)],
        "infer": ["infer", "--model", crafted, "--dicom", str(patient), "--out", str(out)],
        "export-bundle": ["export-bundle", "--model", crafted, "--out", str(out)],
    }[command]
    assert ecefl_main(argv + ["--no-progress"] * (command in ("evaluate", "train"))) == 2
    assert "was refused" in capsys.readouterr().err
    assert not files["marker"].exists()


def test_a_node_threshold_that_is_no_probability_is_refused_with_a_message():
    from ecefl.checkpoint import CheckpointError, node_threshold_of
    assert node_threshold_of({}) == 0.5 and node_threshold_of({"node_threshold": 0.8}) == 0.8
    for bad in (1.0, 0.0, -3, "0.8", None, True):
        with pytest.raises(CheckpointError, match="node_threshold"):
            node_threshold_of({"node_threshold": bad})


def test_a_model_file_whose_plan_is_invalid_is_refused_naming_the_field(files):
    """The plan travels in the model file: it is validated on loading as a preset is, so a bad value is named
    before any CT is read."""
    good = torch.load(files["genuine"], map_location="cpu", weights_only=True)
    for field, value in (("sw_blend", "bogus"), ("patch_size", [60, 60, 60]), ("spacing", "2 mm")):
        bad = dict(good, plan={**good["plan"], field: value})
        path = files["root"] / f"bad_{field}.pt"
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match=f"{path}.*plan this ecefl cannot use.*"
                                                  f"{'sw_blend' if field == 'sw_blend' else ''}"):
            load_checkpoint(path, kind="dual")
    torch.save(good["plan"], files["root"] / "plan_only.pt")  # not a checkpoint at all: refused as before
    with pytest.raises(CheckpointError, match="not an ecefl checkpoint"):
        load_checkpoint(files["root"] / "plan_only.pt")
