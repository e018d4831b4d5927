"""Speed benchmarks, measured side by side in one run and reported as ratios (issue: benchmarks).

    python benchmarks/speed.py --out workspace/bench_speed [--cases 12] [--rss-rounds 20] [--parts ...]

Parts (all by default):
  preprocess  site preprocessing per case vs the plain rt-utils path (RTStructBuilder + get_roi_mask_by_name per
              nodal ROI), each mask's Dice against an independent centre-inside rasteriser (tests/oracles.py)
  overhead    one fine-tuning round through the NVFlare simulator client vs the same epochs in the centralised
              loop: framework overhead per round as a fraction of local training time
  bytes       bytes per site per round: fp32 weights vs NVFlare's fp16 / adaquant / blockwise8 / 4-bit quantization
              vs fp32 weight differences (and their compressibility), with the largest weight error each introduces
  rss         peak RSS of the server and of each site process over N rounds of a tiny job: growth first->last
  throughput  voxels/s and peak RSS of a training step at the cpu-small preset (this machine)

Writes OUT/speed.json and prints a Markdown table; the numbers go to docs/BENCHMARKS.md with the command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "custom"), str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]


def _synth_site(out: Path, cases: int, seed: int) -> Path:
    from site_preprocess.synth import synthesize
    if not (out / "syn" / "hospital-a").is_dir():
        synthesize(out / "syn", sites=1, cases_per_site=cases, unlabeled_per_site=0, seed=seed, progress=False)
    return out / "syn" / "hospital-a"


def bench_preprocess(out: Path, cases: int) -> dict:
    import nibabel as nib
    from oracles import centre_inside_masks, dice
    from rt_utils import RTStructBuilder
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess

    site = _synth_site(out, cases, seed=3)
    manifest = json.loads((site / "synth_manifest.json").read_text())
    patients = [p for p in manifest["patients"] if p["labelled"]]
    pre = out / "pre"
    t0 = time.perf_counter()
    assert run_preprocess(site / "dicom", site / "labels.csv", pre, SiteConfig(), progress=False, force=True) == 0
    ours_s = (time.perf_counter() - t0) / len(patients)
    import csv
    with open(pre / "private" / "id_map.csv", newline="") as fh:
        case_of = {row["patient_id"]: row["case_id"] for row in csv.DictReader(fh)}

    rt_times, ours_dice, rt_dice = [], [], []
    for p in patients:
        folder = site / "dicom" / p["patient_folder"] if "patient_folder" in p else site / "dicom" / p["patient_id"]
        truth = centre_inside_masks(folder / "RTSTRUCT.dcm", folder / "CT", p["nodal_rois"])
        t0 = time.perf_counter()
        rt = RTStructBuilder.create_from(dicom_series_path=str(folder / "CT"),
                                         rt_struct_path=str(folder / "RTSTRUCT.dcm"))
        mask = None
        for name in p["nodal_rois"]:
            m = rt.get_roi_mask_by_name(name)
            mask = m if mask is None else (mask | m)
        rt_times.append(time.perf_counter() - t0)
        # rt-utils returns (rows, cols, slices) in its own slice order; compare in the oracle's (cols, rows, z)
        rt_mask = np.transpose(mask, (1, 0, 2)) if mask.shape[:2] == truth.shape[1::-1] else mask
        if rt_mask.shape == truth.shape:
            best = max(dice(rt_mask, truth), dice(rt_mask[:, :, ::-1], truth))
        else:
            best = float("nan")
        rt_dice.append(best)
        ours = np.asarray(nib.load(pre / "nodes" / f"{case_of[p['patient_id']]}.nii.gz").dataobj)
        ours_dice.append(dice(ours, truth))
    rt_s = float(np.mean(rt_times))
    return {"cases": len(patients), "ours_s_per_case": round(ours_s, 3),
            "ours_includes": "reading, geometry checks, rasterisation, dilation, NIfTI writing",
            "rt_utils_s_per_case": round(rt_s, 3), "rt_utils_includes": "reading + masks only (no writing)",
            "speedup": round(rt_s / ours_s, 2),
            "ours_dice_min": round(float(np.min(ours_dice)), 4), "ours_dice_mean": round(float(np.mean(ours_dice)), 4),
            "rt_utils_dice_min": round(float(np.nanmin(rt_dice)), 4),
            "rt_utils_dice_mean": round(float(np.nanmean(rt_dice)), 4)}


def _tiny_sites(out: Path, sites: int, cases: int, seed: int) -> dict:
    from conftest import preprocessed_sites
    marker = out / f"sites-{sites}-{cases}.json"
    if marker.is_file():
        return {k: Path(v) for k, v in json.loads(marker.read_text()).items()}
    os.environ.setdefault("ECEFL_SITE_SECRET_FILE", str(out / "bench_secret.key"))
    found = preprocessed_sites(out / f"data-{sites}-{cases}", sites, cases, 0, seed=seed)
    marker.write_text(json.dumps({k: str(v) for k, v in found.items()}))
    return found


def _central_epochs(datalist: str, epochs: int, threads: int) -> float:
    """The same local epochs in the centralised loop, in a fresh process like the simulator's site process."""
    import torch
    torch.set_num_threads(threads)
    from ecefl.data import load_datalist, stratified_split
    from ecefl.engine import FineTuner, seed_everything
    from ecefl.model import DualOutputSwinUNETR
    from ecefl.plan import get_plan
    plan = get_plan("cpu-small")
    labelled, _ = load_datalist(datalist)
    train_items, _ = stratified_split(labelled, 0.25, 0)
    seed_everything(0)
    tuner = FineTuner(plan, DualOutputSwinUNETR(plan), train_items, progress=False, log=lambda *_: None)
    history = tuner.run_epochs(0, epochs, epochs)
    return float(sum(h["seconds"] for h in history))  # the epoch loop alone, as the site reports it


def bench_overhead(out: Path, epochs: int, rounds: int = 3) -> dict:
    """One site, `rounds` rounds of `epochs` local epochs in the simulator vs the same epochs centralised (each in
    its own fresh process; the centralised run both before and after). The framework's share of a round is what is
    left of it after the site's local training and its validation of the received model; round 0 also holds the
    site's one-time set-up (model, optimiser, data cache), so the steady state is taken from the later rounds."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch
    from ecefl.fl.simulate import simulate

    sites = _tiny_sites(out, 1, 8, seed=5)
    site, datalist = next(iter(sites.items()))
    threads = torch.get_num_threads()
    os.environ["ECEFL_TORCH_THREADS"] = str(threads)

    def central() -> float:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_central_epochs, str(datalist), epochs * rounds, threads).result()

    central_before = central()
    t0 = time.perf_counter()
    simulate(sites, "ece_finetune", rounds=rounds, local_epochs=epochs, preset="cpu-small",
             workspace=out / "ws_overhead", quiet=True, progress=False, log=lambda *_: None, val_fraction=0.25,
             cross_site=False)
    fed_wall = time.perf_counter() - t0
    central_after = central()
    report = json.loads((out / "ws_overhead" / "ece_finetune" / "pooled_metrics.json").read_text())
    per_round = []
    for rnd in report["rounds"]:
        train, val = float(rnd["site_train_seconds"][site]), float(rnd["site_validate_seconds"][site])
        framework = float(rnd["seconds"]) - train - val
        per_round.append({"round": rnd["round"], "seconds": rnd["seconds"], "train_s": round(train, 2),
                          "validate_s": round(val, 2), "framework_s": round(framework, 2),
                          "framework_fraction_of_train": round(framework / train, 3)})
    fed_train = sum(r["train_s"] for r in per_round)
    central_s = (central_before + central_after) / 2
    later = [r["framework_fraction_of_train"] for r in per_round[1:]] or [per_round[0]["framework_fraction_of_train"]]
    return {"epochs_per_round": epochs, "rounds": rounds, "threads": threads,
            "central_train_s": [round(central_before, 2), round(central_after, 2)],
            "client_train_s": round(fed_train, 2), "client_vs_central_train": round(fed_train / central_s, 3),
            "per_round": per_round, "framework_fraction_of_train": round(float(np.median(later)), 3),
            "framework_fraction_round0": per_round[0]["framework_fraction_of_train"], "job_wall_s": round(fed_wall, 1)}


def bench_bytes() -> dict:
    """Payload per site per round for the cpu-small and gpu presets, and NVFlare's quantizer round-trip error."""
    import torch
    try:  # NVFlare's message quantization filters import bitsandbytes (the gpu extra); the job's own subclasses
        # (ecefl/fl/quantization.py) hand the int64 index buffers through, which NVFlare's plain filter rejects
        from ecefl.fl.quantization import StateDictDequantizer as ModelDequantizer
        from ecefl.fl.quantization import StateDictQuantizer as ModelQuantizer
    except ImportError as exc:
        ModelQuantizer = ModelDequantizer = None
        missing = f"NVFlare quantization filters unavailable here ({exc})"
    from ecefl.model import DualOutputSwinUNETR
    from ecefl.plan import get_plan
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable

    def nbytes(d):
        return sum(v.nbytes if isinstance(v, np.ndarray) else v.numel() * v.element_size() for v in d.values())

    rows = {}
    for preset in ("cpu-small", "gpu"):
        torch.manual_seed(0)
        model = DualOutputSwinUNETR(get_plan(preset))
        base = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        # a realistic update: one optimiser step's worth of change on every float tensor
        update = {k: (v + np.random.default_rng(1).normal(0, 1e-3, v.shape).astype(v.dtype)
                      if v.dtype.kind == "f" else v) for k, v in base.items()}
        row = {"params": int(sum(v.size for v in base.values())), "fp32_bytes": nbytes(update)}
        half = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in update.items()}
        row["fp16_cast_bytes"] = nbytes(half)
        row["fp16_cast_ratio"] = round(row["fp16_cast_bytes"] / row["fp32_bytes"], 3)
        row["fp16_cast_max_abs_error"] = max(float(np.max(np.abs(half[k].astype(np.float64) - update[k])))
                                             for k in update if update[k].dtype.kind == "f")
        if ModelQuantizer is None:
            row["nvflare_quantization"] = missing
        for qtype in (("float16", "adaquant", "blockwise8", "float4", "normfloat4") if ModelQuantizer else ()):
            dxo = DXO(data_kind=DataKind.WEIGHTS, data={k: v.copy() for k, v in update.items()})
            try:
                q = ModelQuantizer(quantization_type=qtype).process_dxo(dxo, Shareable(), FLContext())
                sent = _quantized_bytes(q)  # before the dequantizer, which restores the same DXO in place
                back = ModelDequantizer().process_dxo(q, Shareable(), FLContext()).data
            except Exception as exc:  # NVFlare runs blockwise8 / float4 on CUDA only
                row[f"{qtype}_bytes"] = f"not on this machine ({type(exc).__name__}: {str(exc)[:80]})"
                continue
            err = max(float(np.max(np.abs(np.asarray(back[k], np.float64) - update[k]))) for k in update
                      if update[k].dtype.kind == "f")
            row[f"{qtype}_bytes"] = sent
            row[f"{qtype}_ratio"] = round(sent / row["fp32_bytes"], 3)
            row[f"{qtype}_max_abs_error"] = err
        diff = {k: (update[k] - base[k]) for k in update if update[k].dtype.kind == "f"}
        raw = b"".join(v.tobytes() for v in diff.values())
        row["diff_fp32_zlib_ratio"] = round(len(zlib.compress(raw, 6)) / len(raw), 3)
        rows[preset] = row
    rows["auc_effect"] = _fp16_round_trip_effect()
    return rows


def _fp16_round_trip_effect() -> dict:
    """Validation AUC/Dice of a trained model before and after one fp16 round trip of its weights (what an fp16
    message does to the weights it carries); needs ECEFL_BENCH_MODEL and ECEFL_BENCH_DATALISTS."""
    model_path = os.environ.get("ECEFL_BENCH_MODEL")
    datalists = os.environ.get("ECEFL_BENCH_DATALISTS")
    if not model_path or not datalists:
        return {"skipped": "set ECEFL_BENCH_MODEL=RUN/model.pt and ECEFL_BENCH_DATALISTS=a.json,b.json"}
    from ecefl.checkpoint import load_checkpoint
    from ecefl.data import load_datalists, stratified_split
    from ecefl.engine import evaluate_cases, predict_cases
    from ecefl.model import DualOutputSwinUNETR
    ckpt = load_checkpoint(model_path, kind="dual")
    plan = ckpt["plan"]
    labelled, _ = load_datalists(datalists.split(","))
    _, val = stratified_split(labelled, 0.25, plan.seed)
    out, probs = {"cases": len(val)}, {}
    for name, cast in (("fp32", lambda t: t),
                       ("fp16_round_trip", lambda t: t.half().float() if t.is_floating_point() else t)):
        model = DualOutputSwinUNETR(plan)
        model.load_state_dict({k: cast(v) for k, v in ckpt["model"].items()})
        pred = predict_cases(model, val, plan, progress=False)
        m = evaluate_cases(pred, float(ckpt.get("threshold", 0.5)), n_boot=200)
        out[name] = {"auc": m["auc"], "dice": m["dice"]}
        probs[name] = pred["probs"]
    out["delta_auc"] = out["fp16_round_trip"]["auc"] - out["fp32"]["auc"]
    out["max_prob_change"] = float(np.max(np.abs(probs["fp16_round_trip"] - probs["fp32"])))
    return out


def _quantized_bytes(dxo) -> int:
    """Bytes of a quantized DXO's tensors plus its quantization state (what travels)."""
    total = 0
    for v in dxo.data.values():
        total += v.nbytes if isinstance(v, np.ndarray) else v.numel() * v.element_size()
    state = dxo.get_meta_prop("quant_state") or {}
    for per_key in state.values():
        for s in (per_key.values() if isinstance(per_key, dict) else []):
            if isinstance(s, np.ndarray):
                total += s.nbytes
            elif hasattr(s, "numel"):
                total += s.numel() * s.element_size()
    return int(total)


class _RssSampler:
    """Samples the RSS of the simulator's server and site processes (children of this process) every second."""

    def __init__(self):
        import psutil
        self.me = psutil.Process()
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _role(self, proc) -> str | None:
        try:
            cmd = " ".join(proc.cmdline())
        except Exception:
            return None
        if "simulator_worker" in cmd or ("client" in cmd and "-c " in cmd):
            for part in cmd.split():
                if part.startswith("site-") or part.startswith("hospital-"):
                    return part
            return "site"
        return "server" if "simulator" in cmd or "server" in cmd else None

    def _loop(self):
        while not self._stop.wait(1.0):
            snap = {}
            for proc in self.me.children(recursive=True):
                role = self._role(proc)
                if role:
                    try:
                        snap[f"{role}:{proc.pid}"] = proc.memory_info().rss
                    except Exception:
                        pass
            snap["driver"] = self.me.memory_info().rss
            self.samples.append((time.time(), snap))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)


def bench_rss(out: Path, rounds: int) -> dict:
    from ecefl.fl.simulate import simulate
    sites = _tiny_sites(out, 2, 2, seed=7)
    ws = out / "ws_rss"
    with _RssSampler() as sampler:
        simulate(sites, "mae_pretrain", rounds=rounds, local_epochs=1, preset="test-tiny", workspace=ws, quiet=True,
                 progress=False, log=lambda *_: None)
    report = json.loads((ws / "mae_pretrain" / "pooled_metrics.json").read_text())
    durations = [r["seconds"] for r in report["rounds"]]
    per_proc: dict[str, list[int]] = {}
    for _, snap in sampler.samples:
        for k, v in snap.items():
            per_proc.setdefault(k, []).append(v)
    result = {"rounds": rounds, "processes": {}}
    for key, series in per_proc.items():
        if len(series) < 10:
            continue
        n = len(series)
        fifth = max(3, n // 5)
        head, second, tail = series[:fifth], series[fifth:2 * fifth], series[-fifth:]
        result["processes"][key.split(":")[0] + ("" if key == "driver" else f" (pid {key.split(':')[1]})")] = {
            "peak_first_fifth_mib": round(max(head) / 2**20, 1), "peak_last_fifth_mib": round(max(tail) / 2**20, 1),
            "growth": round(max(tail) / max(head) - 1, 4),
            # the first fifth still holds the start-up ramp (imports, first model copies): steady-state growth
            "growth_second_to_last_fifth": round(max(tail) / max(second) - 1, 4), "samples": n,
            "peak_per_tenth_mib": [round(max(series[i * n // 10:(i + 1) * n // 10] or [0]) / 2**20, 1)
                                   for i in range(10)]}
    result["round_seconds"] = durations
    return result


def bench_throughput(steps: int) -> dict:
    from step import measure  # benchmarks/step.py: the same step on a GPU (benchmarks/gpu.sh)
    return measure("cpu-small", steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="workspace/bench_speed")
    p.add_argument("--cases", type=int, default=12, help="patients for the preprocessing comparison")
    p.add_argument("--overhead-epochs", type=int, default=2)
    p.add_argument("--rss-rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=5, help="training steps for the throughput measurement")
    p.add_argument("--parts", nargs="+", default=["preprocess", "overhead", "bytes", "rss", "throughput"])
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ECEFL_SITE_SECRET_FILE", str(out / "bench_secret.key"))
    path = out / "speed.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    runners = {"preprocess": lambda: bench_preprocess(out, args.cases),
               "overhead": lambda: bench_overhead(out, args.overhead_epochs),
               "bytes": bench_bytes, "rss": lambda: bench_rss(out, args.rss_rounds),
               "throughput": lambda: bench_throughput(args.steps)}
    for part in args.parts:
        t0 = time.perf_counter()
        print(f"== {part}", flush=True)
        results[part] = runners[part]()
        results[part]["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        results["date"] = time.strftime("%Y-%m-%d")
        path.write_text(json.dumps(results, indent=1))
        print(json.dumps(results[part], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
