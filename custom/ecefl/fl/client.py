"""Hospital-side NVFlare Client API script: the centralised engine plus flare.receive()/flare.send().

One script serves both jobs (--job mae_pretrain | ece_finetune) and every task of a job: "train" (evaluate the
received global model on the local validation split, then train local epochs), "validate" (evaluate only) and
"submit_model" (cross-site evaluation). What leaves the site: weights, training losses and the additive
statistics of ecefl.metrics.site_stats — never a case id, path or per-patient score.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import torch

import nvflare.client as flare
from nvflare.client.tracking import SummaryWriter

from ecefl import metrics as M
from ecefl.data import load_datalist, screen_cases, stratified_split
from ecefl.engine import FineTuner, Pretrainer, predict_cases, seed_everything, stats_of
from ecefl.fl.protocol import FAILED, NUM_STEPS
from ecefl.fl.site_config import datalist_for
from ecefl.model import DualOutputSwinUNETR, MaskedPretrainer
from ecefl.plan import Plan

logger = logging.getLogger("ecefl.site")



def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--job", choices=["mae_pretrain", "ece_finetune"], required=True)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--min-count", type=int, default=0,
                   help="suppress this site's statistics when it has fewer validation cases of a class")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def to_state(params: dict) -> dict:
    return {k: torch.as_tensor(v) for k, v in params.items()}


class SiteLearner:
    def __init__(self, args, site: str):
        self.args, self.site = args, site
        labelled, unlabelled = load_datalist(datalist_for(site), site=site)
        labelled, unlabelled = screen_cases(labelled, self.warn), screen_cases(unlabelled, self.warn)
        self.labelled, self.unlabelled = labelled, unlabelled
        self.train_items, self.val_items = stratified_split(labelled, args.val_fraction, args.seed)
        self.plan: Plan | None = None
        self.model = None
        self.worker = None  # FineTuner / Pretrainer: local optimiser state kept across rounds
        self.local_state = None
        self.writer = SummaryWriter()

    def ensure_model(self, meta: dict):
        if self.model is not None:
            return
        if "plan" not in (meta or {}):
            raise RuntimeError(f"site {self.site}: the server sent no plan with the model; use the ecefl job")
        self.plan = Plan.from_dict(meta["plan"])
        seed_everything(self.args.seed)
        if self.args.job == "mae_pretrain":
            items = self.labelled + self.unlabelled
            if not items:
                raise RuntimeError(f"site {self.site}: no CT image in its datalist for MAE pretraining")
            self.model = MaskedPretrainer(self.plan)
            self.worker = Pretrainer(self.plan, self.model, items, progress=False, log=self.log)
        else:
            if not self.train_items:
                raise RuntimeError(f"site {self.site}: no labelled training case for fine-tuning (see its "
                                   "qc_report.json); it cannot take part in ece_finetune")
            self.model = DualOutputSwinUNETR(self.plan)
            self.worker = FineTuner(self.plan, self.model, self.train_items, progress=False, log=self.log)

    def log(self, msg: str, level: int = logging.INFO) -> None:
        """Through Python logging, which NVFlare routes to the site's log.txt (and its console)."""
        logger.log(level, f"[{self.site}] {msg}")

    def warn(self, msg: str) -> None:
        self.log(msg, logging.WARNING)

    def evaluate(self, threshold: float) -> tuple[dict, dict]:
        """(additive statistics, site-level metrics) of the loaded model on the local validation split."""
        if not self.val_items:
            return {}, {"n_cases": 0}
        pred = predict_cases(self.model, self.val_items, self.plan, progress=False)
        stats = stats_of(pred, threshold, self.plan)
        if self.args.min_count and min(stats["n_pos"], stats["n_neg"]) < self.args.min_count:
            self.log(f"validation split has fewer than {self.args.min_count} cases of a class: statistics "
                     "suppressed (min-count rule)")
            return {"suppressed": True, "n_cases": stats["n_cases"]}, {"suppressed": 1, "n_cases": stats["n_cases"]}
        summary = M.summary(stats)
        site_metrics = {k: float(summary[k]) for k in M.METRIC_KEYS if summary.get(k) is not None}
        site_metrics["n_cases"] = summary["n_cases"]
        return stats, site_metrics

    def train_round(self, incoming) -> flare.FLModel:
        """The round's result; a round that fails here (e.g. a non-finite loss) is reported to the server, which
        leaves this site out of that round under min_sites, and the site takes part again in the next one."""
        try:
            return self._train_round(incoming)
        except (FloatingPointError, RuntimeError, ValueError) as exc:
            self.warn(f"round {incoming.current_round} failed at this site: {type(exc).__name__}: {exc}")
            self.worker = self.model = None  # rebuilt from the next global model (optimiser state may hold NaN)
            # our own messages for a diverged loss carry no path or case; any other error's text stays here
            reason = str(exc) if isinstance(exc, FloatingPointError) else "details in the site's log"
            return flare.FLModel(params={}, metrics={}, meta={FAILED: f"{type(exc).__name__}: {reason}"[:300]})

    def _train_round(self, incoming) -> flare.FLModel:
        self.ensure_model(incoming.meta)
        self.model.load_state_dict(to_state(incoming.params), strict=True)
        meta_out = {}
        start = incoming.start_round or 0
        round_index = (incoming.current_round or 0) - start
        total_rounds = incoming.total_rounds or 1
        e = self.args.local_epochs
        if self.args.job == "ece_finetune" and incoming.meta.get("validate", True):
            t0 = time.perf_counter()
            stats, site_metrics = self.evaluate(float(incoming.meta.get("threshold", 0.5)))
            meta_out["validate_seconds"] = round(time.perf_counter() - t0, 3)
            meta_out["site_stats"] = stats
            meta_out["site_metrics"] = site_metrics
            n_cases = len(self.train_items)
        else:
            n_cases = len(self.labelled) + len(self.unlabelled)
        history = self.worker.run_epochs(round_index * e, e, total_rounds * e)
        loss = float(sum(h["loss"] for h in history) / len(history))
        self.writer.add_scalar("train_loss", loss, incoming.current_round or 0)
        self.local_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        meta_out[NUM_STEPS] = n_cases * e
        meta_out["train_seconds"] = float(sum(h["seconds"] for h in history))
        return flare.FLModel(params=self.local_state, metrics={"train_loss": loss}, meta=meta_out)

    def validate(self, incoming) -> flare.FLModel:
        self.ensure_model(incoming.meta or {})
        if self.args.job != "ece_finetune":
            return flare.FLModel(metrics={}, meta={})
        self.model.load_state_dict(to_state(incoming.params), strict=True)
        threshold = float((incoming.meta or {}).get("threshold", 0.5))
        stats, site_metrics = self.evaluate(threshold)
        return flare.FLModel(metrics=site_metrics, meta={"site_stats": stats, "site_metrics": site_metrics})

    def submit_model(self) -> flare.FLModel:
        if self.local_state is None:
            raise RuntimeError(f"site {self.site}: no locally trained model to submit for cross-site evaluation")
        return flare.FLModel(params=self.local_state)


def main(argv=None) -> None:
    args = parse_args(argv)
    threads = int(os.environ.get("ECEFL_TORCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    flare.init()
    site = flare.get_site_name()
    learner = SiteLearner(args, site)  # fails here, naming the site and setting, when no data is configured
    while flare.is_running():
        incoming = flare.receive()
        if incoming is None:
            break
        if flare.is_submit_model():
            flare.send(learner.submit_model())
        elif flare.is_evaluate():
            flare.send(learner.validate(incoming))
        else:
            flare.send(learner.train_round(incoming))


if __name__ == "__main__":
    main()
