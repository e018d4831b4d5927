"""The demo report: self-contained HTML (PNGs embedded as data URIs and also written beside it) + summary.json.

The server part holds pooled numbers only (metrics, CIs, pooled ROC from the additive histograms, learning
curves); per-case evidence images are rendered at the site from the global model and say which site made them.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import metrics as M  # noqa: E402

METRICS = ("dice", "dice_global", "auc", "accuracy", "sensitivity", "specificity", "f1")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def roc_plot(final: dict, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    roc = final.get("roc") or {}
    if roc:
        fpr, tpr = M.roc_from_histograms(roc["score_hist_pos"], roc["score_hist_neg"])
        auc = (final.get("pooled") or {}).get("auc")
        ax.plot(fpr, tpr, lw=2.5, color="black", label=f"pooled (AUC {auc:.3f})" if auc is not None else "pooled")
    # per site only its own operating point and AUC: its score histograms never leave it readable (secure sum)
    for site, m in sorted((final.get("sites") or {}).items()):
        if m.get("sensitivity") is None or m.get("specificity") is None:
            continue
        auc = m.get("auc")
        ax.plot([1 - m["specificity"]], [m["sensitivity"]], "o", ms=7,
                label=f"{site} at the threshold (AUC {auc:.3f})" if auc is not None else site)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC of the final global model")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out)


def learning_curves(mae: dict | None, finetune: dict, out: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if mae and mae.get("rounds"):
        axes[0].plot([r["round"] for r in mae["rounds"]], [r.get("train_loss") for r in mae["rounds"]], "o-")
    axes[0].set_title("MAE pretraining: masked-voxel L1")
    rounds = finetune.get("rounds", [])
    axes[1].plot([r["round"] for r in rounds], [r.get("train_loss") for r in rounds], "o-", color="C1")
    axes[1].set_title("fine-tuning: DiceCE + weighted BCE")
    # validated rounds only (sites validate every validate_every rounds), then the final model after the last one
    validated = [(r["round"], r["pooled"]) for r in rounds if r.get("pooled")]
    if (finetune.get("final") or {}).get("pooled"):
        validated.append((len(rounds), finetune["final"]["pooled"]))
    for key, style in (("auc", "o-"), ("dice", "s-")):
        axes[2].plot([x for x, _ in validated], [p.get(key) for _, p in validated], style, label=f"pooled {key}")
    best = finetune.get("best_round")
    if best is not None:
        at = len(rounds) if best == "final" else best
        axes[2].axvline(at, color="grey", ls=":", label=f"best model ({'final' if best == 'final' else f'round {best}'})")
    axes[2].set_ylim(0, 1)
    axes[2].set_xlim(-0.3, len(rounds) + 0.3)  # the training's whole span, also when only the final model was validated
    axes[2].set_title("pooled validation (global model after N rounds)")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("round")
    return _save(fig, out)


def radiological(slice_xy: np.ndarray) -> np.ndarray:
    """RAS (x, y) slice -> radiological display: anterior up, patient right on the viewer's left."""
    return slice_xy.T[::-1, ::-1]


def evidence_limit(evidence: np.ndarray) -> float:
    """The colour scale of an evidence map: the 99th percentile of the voxels that carry evidence, so that a few
    extreme voxels (a region's edge, a thin fat strand) do not wash the rest out; those saturate instead."""
    magnitude = np.abs(np.asarray(evidence, float))
    top = float(magnitude.max()) if magnitude.size else 0.0
    if top <= 0.0:
        return 1.0
    return float(np.percentile(magnitude[magnitude > 1e-3 * top], 99)) or top


def evidence_heat(evidence_slice: np.ndarray, lim: float) -> np.ndarray:
    """RGBA overlay of a slice's evidence: red raises, blue lowers the ECE logit, opaque in proportion to the
    magnitude (from 0.35 at 5 % of the scale to 1 at the scale); voxels under 5 % are transparent. A diverging
    colour map fades to white at small values, which on a grey CT reads as nothing."""
    ev = np.asarray(evidence_slice, float)
    strength = np.clip(np.abs(ev) / lim, 0.0, 1.0)
    rgba = np.zeros(ev.shape + (4,))
    rgba[ev > 0, :3] = (0.85, 0.05, 0.05)
    rgba[ev < 0, :3] = (0.05, 0.35, 0.95)
    rgba[..., 3] = np.where(strength >= 0.05, 0.35 + 0.65 * strength, 0.0)
    return rgba


def evidence_slice(evidence: np.ndarray, fallback: np.ndarray) -> int:
    """The axial slice that carries the most evidence (the decision's grounds), else where `fallback` is largest,
    else the middle one."""
    for volume in (np.abs(evidence), fallback):
        per_slice = np.asarray(volume, float).sum(axis=(0, 1))
        if per_slice.max(initial=0.0) > 0:
            return int(np.argmax(per_slice))
    return evidence.shape[2] // 2


def around(*masks: np.ndarray, margin: int = 16, least: int = 40) -> tuple[slice, slice]:
    """(x, y) window of a slice around what the masks mark, `margin` voxels beyond it and at least `least` wide
    (at the plan's 2 mm: 3.2 cm of surroundings, 8 cm at least), so the perinodal fat is large enough to read."""
    marked = np.argwhere(np.any([np.asarray(m, bool) for m in masks], axis=0))
    shape = masks[0].shape
    if not len(marked):
        return slice(0, shape[0]), slice(0, shape[1])
    window = []
    for axis in (0, 1):
        lo, hi = int(marked[:, axis].min()) - margin, int(marked[:, axis].max()) + 1 + margin
        grow = max(0, least - (hi - lo))
        lo, hi = lo - grow // 2, hi + grow - grow // 2
        shift = max(0, -lo) - max(0, hi - shape[axis])
        window.append(slice(max(0, lo + shift), min(shape[axis], hi + shift)))
    return window[0], window[1]


def evidence_overlay(case: dict, title: str, out: Path) -> Path:
    image, label, pred, evidence = case["image"], case["label"], case["pred"], case["evidence"]
    k = evidence_slice(evidence, label if label.any() else pred)
    lim = evidence_limit(evidence)
    # zoomed to the slice's nodes and evidence
    crop = around(label[:, :, k], pred[:, :, k], np.abs(evidence[:, :, k]) >= 0.05 * lim)
    image, label, pred, evidence = (v[crop + (slice(None),)] for v in (image, label, pred, evidence))
    ev = evidence[:, :, k]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2))
    for ax, with_heat in zip(axes, (False, True)):
        ax.imshow(radiological(image[:, :, k]), cmap="gray", vmin=0, vmax=1)
        if with_heat:
            ax.imshow(evidence_heat(radiological(ev), lim))
        if label[:, :, k].any():
            ax.contour(radiological(label[:, :, k].astype(float)), levels=[0.5], colors="lime", linewidths=1.0)
        if pred[:, :, k].any():
            ax.contour(radiological(pred[:, :, k].astype(float)), levels=[0.5], colors="yellow", linewidths=1.0)
        ax.set_axis_off()
    axes[0].set_title("CT (green: reference ROI, yellow: predicted)", fontsize=8)
    axes[1].set_title("evidence against the average training case (red: more ECE-like, blue: less)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}">'


def _fmt(v, ci=None) -> str:
    if v is None:
        return "–"
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    if ci:
        text += f"<br><small>[{ci[0]:.3f}, {ci[1]:.3f}]</small>"
    return text


def metrics_table(pooled: dict | None, sites: dict) -> str:
    head = "".join(f"<th>{k}</th>" for k in (*METRICS, "cases (ECE+/−)"))
    rows = []
    for name, m in [("<b>pooled</b>", pooled or {})] + sorted(sites.items()):
        if m.get("suppressed"):
            rows.append(f"<tr><td>{name}</td><td colspan='{len(METRICS) + 1}'>suppressed (min-count rule)"
                        "</td></tr>")
            continue
        ci = m.get("ci") or {}
        cells = "".join(f"<td>{_fmt(m.get(k), ci.get(k))}</td>" for k in METRICS)
        cells += f"<td>{m.get('n_cases', '–')} ({m.get('n_pos', '–')}/{m.get('n_neg', '–')})</td>"
        rows.append(f"<tr><td>{name}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _node_threshold_note(final: dict) -> str:
    by_threshold = (final.get("pooled") or {}).get("dice_at_node_threshold") or {}
    t = final.get("node_threshold")
    if t is None or not by_threshold:
        return ""
    curve = ", ".join(f"{k}: {_fmt(v)}" for k, v in by_threshold.items())
    return (f"the model file masks nodes at probability &gt; {t:g}, the best pooled Dice of these cases "
            f"({curve}; chosen on them, so the Dice at the chosen threshold is optimistic).")


def write_report(out_dir: Path, finetune: dict, mae: dict | None, data_summary: dict, config: dict,
                 evidence_cases: list[dict], timings: dict) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = finetune.get("final") or {}
    roc_png = roc_plot(final, out_dir / "roc.png")
    curves_png = learning_curves(mae, finetune, out_dir / "learning_curves.png")
    overlays = []
    for case in evidence_cases:
        name = f"evidence_{case['category']}.png"
        title = (f"{case['category'].upper()} at {case['site']}: p(ECE)={case['probability']:.2f}, "
                 f"label {'ECE+' if case['ece'] else 'ECE−'} (rendered at the site)")
        overlays.append((case, evidence_overlay(case, title, out_dir / name)))
    summary = {"final": {"pooled": final.get("pooled"), "sites": final.get("sites"),
                         "threshold": final.get("threshold"), "node_threshold": final.get("node_threshold")},
               "best_round": finetune.get("best_round"), "n_rounds": len(finetune.get("rounds", [])),
               "events": finetune.get("events", []), "data": data_summary, "config": config, "timings": timings,
               "readout_refit": _refit_summary(finetune.get("readout_refit")),
               "evidence_cases": [{"category": c["category"], "site": c["site"]} for c, _ in overlays]}
    (out_dir / "summary.json").write_text(json.dumps(M.nan_safe(summary), indent=1, allow_nan=False))
    data_rows = "".join(
        f"<tr><td>{html.escape(site)}</td><td>{d['cases']}</td><td>{d['ok']}</td><td>{d['positives']}</td>"
        f"<td>{d['unlabeled']}</td><td>{d['failed']}</td></tr>" for site, d in sorted(data_summary.items()))
    events = "".join(f"<li>round {e['round']}: {html.escape(e['site'])} {e['event']} – {html.escape(e['reason'])}</li>"
                     for e in finetune.get("events", [])) or "<li>none: every site answered every round</li>"
    overlay_html = "".join(f"<figure>{_img(p)}</figure>" for _, p in overlays) or \
        "<p>No evidence case available (validation split empty).</p>"
    pooled = final.get("pooled") or {}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ECE-FL report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:24px auto;color:#222}}table{{border-collapse:collapse;
margin:8px 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:center;font-size:13px}}img{{max-width:100%}}
.kpi{{display:inline-block;margin:0 18px 8px 0;padding:8px 14px;background:#f1f4f8;border-radius:6px}}
.kpi b{{font-size:22px;display:block}}small{{color:#666}}figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>Federated ECE detection — demo report</h1>
<p>Dual-output SwinUNETR (nodal segmentation + ECE classification by mask-guided pooling), MAE-pretrained and
fine-tuned {_workflow_words(config)} across {len(data_summary)} synthetic hospitals in the NVIDIA FLARE simulator. Metrics are
pooled at the server from additive site statistics: no per-patient score left a site. Synthetic data: numbers
show the pipeline works, not clinical performance.</p>
<div><span class="kpi">pooled AUC<b>{_fmt(pooled.get('auc'))}</b></span><span class="kpi">pooled Dice<b>
{_fmt(pooled.get('dice'))}</b></span><span class="kpi">sensitivity<b>{_fmt(pooled.get('sensitivity'))}</b></span>
<span class="kpi">specificity<b>{_fmt(pooled.get('specificity'))}</b></span><span class="kpi">validation cases<b>
{pooled.get('n_cases', '–')}</b></span><span class="kpi">best round<b>{finetune.get('best_round')}</b></span></div>
<h2>Final global model: pooled and per-site validation (95 % CI)</h2>
{metrics_table(final.get('pooled'), final.get('sites') or {})}
<p><small>Operating threshold {final.get('threshold')} (Youden's J on the previous pooled ROC). CIs: case resampling
(multinomial over the additive statistics). Dice above at node probability &gt; 0.5, on each CT's own grid against the
site's labels; {_node_threshold_note(final)}
</small></p>
{_refit_html(finetune.get("readout_refit"))}
<h2>ROC</h2>{_img(roc_png)}
<h2>Learning curves</h2>{_img(curves_png)}{_mae_html(mae)}
<h2>Site events</h2><ul>{events}</ul>
<h2>Evidence overlays (site-local)</h2>
<p>Rendered at each hospital from the global model; in a real deployment each hospital renders its own and these
images never reach the server.</p>{overlay_html}
<h2>Data per site</h2><table><tr><th>site</th><th>patients</th><th>labelled ok</th><th>ECE+</th>
<th>unlabelled</th><th>QC failed</th></tr>{data_rows}</table>
<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=1))}</pre>
<h2>Timings</h2><pre>{html.escape(json.dumps(timings, indent=1))}</pre>
</body></html>"""
    (out_dir / "index.html").write_text(page)
    return summary


def _workflow_words(config: dict) -> str:
    if ((config or {}).get("plan") or {}).get("fl_workflow") == "cyclic":
        return "by cyclic weight transfer (each round the model trains at one hospital after the other)"
    return "with FedAvg (each round every hospital trains the model, the server averages)"


def _mae_html(mae: dict | None) -> str:
    """What this run's pretraining did; its effect on the fine-tuned model needs a scratch arm the demo has not."""
    losses = [r.get("train_loss") for r in (mae or {}).get("rounds", []) if r.get("train_loss") is not None]
    if not losses:
        return ""
    return (f"<p><small>MAE pretraining, {len(losses)} federated round(s): pooled masked-voxel L1 {losses[0]:.3f} "
            f"&rarr; {losses[-1]:.3f}. This run trains no model from scratch beside it. Measured separately "
            f"(docs/BENCHMARKS.md, session 12): at the demo's default of 2 short rounds, the same fine-tuning from "
            f"random weights scored the same at two unseen hospitals (every paired interval of the AUC and Dice "
            f"difference held 0). Longer pretraining, measured by <code>benchmarks/mae.py</code> (docs/BENCHMARKS.md; "
            f"120 patients of an unseen hospital, 3 seeds per label fraction, paired case bootstrap): with the whole "
            f"U-Net decoder reconstructing for 2,340 steps (81 min on a 2-core CPU, so the demo does not run it), "
            f"fine-tuning segmented the unseen hospital better than from random weights at 10, 25 and 100 % of the "
            f"labels (Dice +0.16, +0.11, +0.10, every interval above 0) and ranked ECE better at 10 and 25 % but not "
            f"at 100 %. The same pretraining federated over the three hospitals (NVFlare's MAE job, the same total "
            f"steps) gained Dice +0.14 and +0.11 over random weights at 10 and 25 % of the labels, within 0.03 of "
            f"the centralised one.</small></p>")


def _refit_summary(refit: dict | None) -> dict | None:
    if not refit:
        return None
    return {"iterations": refit["iterations"], "ridge": refit["ridge"], "ridge_cv": refit.get("ridge_cv"),
            "sites": refit["sites"], "loss_before": refit["loss"][0], "loss_after": refit["loss"][-1],
            "seconds": refit.get("seconds")}


def _refit_html(refit: dict | None) -> str:
    if not refit:
        return ""
    return (f"<p><small>Case read-out refitted after the last round (ecefl.readout: {refit['iterations']} Newton "
            f"iterations of a class-weighted logistic regression on the fixed network, from the securely summed "
            f"terms of {', '.join(map(html.escape, refit['sites']))}): weighted training loss {refit['loss'][0]:.2f} "
            f"&rarr; {refit['loss'][-1]:.2f}{_frozen_text(refit.get('frozen'))}, ridge towards the jointly trained "
            f"read-out {refit['ridge']:g}{_ridge_cv_text(refit.get('ridge_cv'))}"
            f"{_cv_refused_text(refit.get('ridge_cv_refused_by'))}. The final model's metrics above are after the "
            f"refit.</small></p>")


def _frozen_text(frozen: int | None) -> str:
    if not frozen:
        return ""
    return (f", weighing the CT signs over the found nodes and their perinodal fat, the evidence head's {frozen} "
            f"hidden features left at 0 (readout_hidden off)")


def _ridge_cv_text(cv: dict | None) -> str:
    if not cv:
        return ""
    held = ", ".join(f"{r:g}: {loss / max(cv['held_out_weight'], 1e-12):.3f}"
                     for r, loss in zip(cv["grid"], cv["held_out_loss"]))
    return (f", chosen by {cv['folds']}-fold cross-validation on the training cases (held-out log-loss per "
            f"case weight, by ridge: {held})")


def _cv_refused_text(sites: list | None) -> str:
    if not sites:
        return ""
    return (f", the plan's fixed one: the cross-validation of the ridge was refused by "
            f"{', '.join(map(html.escape, sites))} (folds with fewer training cases than readout_ridge_cv_min_cases)")


def format_metrics_table(pooled: dict | None, sites: dict) -> str:
    """The pooled and per-site metrics as a text table (the terminal's view of the report's table)."""
    keys = (*M.METRIC_KEYS, "n_cases")
    rows = [("pooled", pooled or {})] + sorted(sites.items())
    head = f"{'':14}" + "".join(f"{k:>12}" for k in keys)
    lines = [head]
    for name, m in rows:
        if m.get("suppressed"):
            lines.append(f"{name:14}" + f"{'(suppressed: too few cases)':>40}")
            continue
        cells = []
        for k in keys:
            v = m.get(k)
            cells.append(f"{'-':>12}" if v is None else (f"{v:>12d}" if isinstance(v, int) else f"{v:>12.3f}"))
        lines.append(f"{name:14}" + "".join(cells))
    return "\n".join(lines)
