"""Hospital-side NVFlare Client API script: the centralised engine plus flare.receive()/flare.send().

One script serves both jobs (--job mae_pretrain | ece_finetune) and every task of a job: "train" (evaluate the
received global model on the local validation split, then train local epochs), "validate" (evaluate only) and
"submit_model" (cross-site evaluation), plus the secure-sum tasks (ecefl.fl.secure_sum: key exchange, and masks
with sites that dropped out) and the read-out refit (ecefl.readout: summed logistic terms, masked). What leaves
the site: weights, training losses, site-level metrics (AUC, Dice, ... over its validation split) and its
additive evaluation statistics masked for secure aggregation — never a case id, path or per-patient score, and
no statistics the server could read on their own. The final model's per-case validation results stay at the site,
beside its datalist (FINAL_PREDICTIONS: for its own review and the demo's evidence figures).
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import torch

import nvflare.client as flare
from nvflare.client.tracking import SummaryWriter

from ecefl import metrics as M
from ecefl import readout as R
from ecefl.data import load_datalist, screen_cases, stratified_split
from ecefl.engine import (FINAL_PREDICTIONS, FineTuner, Pretrainer, positive_weight, predict_cases, seed_everything,
                          stats_of, write_predictions)
from ecefl.fl import secure_sum as SS
from ecefl.fl.protocol import (FAILED, FINAL, NUM_STEPS, PLAN, PUBLIC_KEY, REFIT_CV_REFUSED, REFIT_ID, REFIT_TASK,
                               REFIT_TERMS, REFIT_PATHS, SECURE_SPEC, SECURE_STATS, SITE_SUMMARY, THRESHOLD,
                               TRAIN_SECONDS, UNMASK_SHARE, VALIDATE, VALIDATE_SECONDS)
from ecefl.fl.site_config import datalist_for
from ecefl.job_kinds import FINETUNE, JOB_KINDS, MAE
from ecefl.model import DualOutputSwinUNETR, MaskedPretrainer
from ecefl.plan import Plan

logger = logging.getLogger("ecefl.site")



def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--job", choices=JOB_KINDS, required=True)
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
        self.datalist = datalist_for(site)
        labelled, unlabelled = load_datalist(self.datalist, site=site)
        labelled, unlabelled = screen_cases(labelled, self.warn), screen_cases(unlabelled, self.warn)
        self.labelled, self.unlabelled = labelled, unlabelled
        self.train_items, self.val_items = stratified_split(labelled, args.val_fraction, args.seed)
        self.plan: Plan | None = None
        self.model = None
        self.worker = None  # FineTuner / Pretrainer: local optimiser state kept across rounds
        self.local_state = None
        self.writer = SummaryWriter()
        self.keys = SS.SiteKeys(site)  # this job's secure-sum key pair; the private key never leaves the process
        self.refit_cache: dict = {}  # read-out refit: its id -> this site's training-case features (stay here)
        self.last_predictions: dict | None = None  # the last validation's per-case results (stay here)

    def ensure_model(self, meta: dict):
        if self.model is not None:
            return
        if PLAN not in (meta or {}):
            raise RuntimeError(f"site {self.site}: the server sent no plan with the model; use the ecefl job")
        self.plan = Plan.from_dict(meta[PLAN])
        seed_everything(self.args.seed)
        if self.args.job == MAE:
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

    def evaluate(self, threshold: float, secure: dict | None) -> tuple[dict, dict]:
        """(message meta, site-level metrics) of the loaded model on the local validation split. The additive
        statistics leave the site only masked for the task's secure sum (`secure`: context and peers' keys)."""
        stats, self.last_predictions = None, None
        if self.val_items:
            self.last_predictions = predict_cases(self.model, self.val_items, self.plan, progress=False)
            stats = stats_of(self.last_predictions, threshold, self.plan)
        if stats is None:
            summary, site_metrics = {"n_cases": 0}, {"n_cases": 0}
        elif self.args.min_count and min(stats["n_pos"], stats["n_neg"]) < self.args.min_count:
            self.log(f"validation split has fewer than {self.args.min_count} cases of a class: statistics "
                     "suppressed (min-count rule)")
            stats, summary = None, {"suppressed": True, "n_cases": stats["n_cases"]}
            site_metrics = {"suppressed": 1, "n_cases": summary["n_cases"]}
        else:
            summary = M.summary(stats)
            site_metrics = {k: float(summary[k]) for k in M.METRIC_KEYS if summary.get(k) is not None}
            site_metrics["n_cases"] = summary["n_cases"]
        meta = {SITE_SUMMARY: summary}
        if secure and self.site in (secure.get("peers") or {}):
            # a site without statistics (suppressed, no validation cases) still sends its masks: the others'
            # sum must decode
            meta[SECURE_STATS] = {"masked": self.keys.mask(SS.encode(stats, self.plan.score_bins), secure["peers"],
                                                           secure["context"]),
                                  "contributes": stats is not None}
        elif secure:
            self.warn("this site is not among the secure-sum peers of the task (it missed the key exchange): its "
                      "statistics are not sent this time")
        return meta, site_metrics

    def unmask(self, incoming) -> flare.FLModel:
        """The server's request after a site of the task sent nothing: this site's masks with those sites."""
        req = incoming.meta or {}
        share = self.keys.unmask_share(req["peers"], list(req["missing"]), list(req["answered"]), req["context"],
                                       int(req["length"]))
        self.log(f"secure sum: sent the masks with {', '.join(req['missing'])} (no result from them)")
        return flare.FLModel(metrics={}, meta={UNMASK_SHARE: share})

    def refit_terms(self, incoming) -> flare.FLModel:
        """Read-out refit (ecefl.readout): this site's summed logistic loss, gradient and Hessian at the server's
        theta over its training cases, masked for the secure sum. The case features are computed once per refit,
        from the model the first request carries, and never leave the site."""
        meta = incoming.meta or {}
        self.ensure_model(meta)
        refit_id, secure = meta[REFIT_ID], meta.get(SECURE_SPEC)
        if incoming.params:
            self.model.load_state_dict(to_state(incoming.params), strict=True)
            t0 = time.perf_counter()
            features = R.case_features(self.model, self.train_items, self.plan)
            labels = [int(it["ece"]) for it in self.train_items]
            folds = R.fold_ids(labels, self.plan.readout_ridge_cv_folds, self.plan.seed, self.site)
            self.refit_cache = {refit_id: (features, labels, positive_weight(self.train_items), folds)}
            self.log(f"read-out refit: features of {len(labels)} training cases in "
                     f"{time.perf_counter() - t0:.1f}s")
        if refit_id not in self.refit_cache:
            return flare.FLModel(metrics={}, meta={FAILED: "read-out refit joined late: no features (sent nothing)"})
        if not secure or self.site not in (secure.get("peers") or {}):
            self.warn("read-out refit without a secure sum over 2+ sites: this site's terms are not sent")
            return flare.FLModel(metrics={}, meta={})
        features, labels, pos_weight, folds = self.refit_cache[refit_id]
        paths = [(int(fold), np.asarray(theta, dtype=np.float64)) for fold, theta in meta[REFIT_PATHS]]
        if any(fold != R.ALL for fold, _ in paths):
            small = R.small_fold(labels, folds, self.plan.readout_ridge_cv_folds, self.plan.readout_ridge_cv_min_cases,
                                 self.args.min_count)
            if small:  # the server then refits at the plan's fixed ridge, from the features cached above
                self.warn(f"read-out refit: {small}; the cross-validation's terms are not sent")
                return flare.FLModel(metrics={}, meta={REFIT_CV_REFUSED: True})
        terms = R.path_terms(paths, features, labels, pos_weight, folds)
        masked = self.keys.mask(SS.encode_floats(terms), secure["peers"], secure["context"])
        return flare.FLModel(metrics={}, meta={REFIT_TERMS: {"masked": masked, "contributes": True}})

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
        # cyclic workflow: this site trains alone, so where simulated sites share a machine it may use all of it
        alone = int(os.environ.get("ECEFL_TORCH_THREADS_ALONE", "0"))
        if alone > 0 and self.plan.fl_workflow == "cyclic" and self.args.job == FINETUNE:
            shared = torch.get_num_threads()
            torch.set_num_threads(alone)
            try:
                return self._train(incoming)
            finally:
                torch.set_num_threads(shared)
        return self._train(incoming)

    def _train(self, incoming) -> flare.FLModel:
        self.model.load_state_dict(to_state(incoming.params), strict=True)
        meta_out = {}
        start = incoming.start_round or 0
        round_index = (incoming.current_round or 0) - start
        total_rounds = incoming.total_rounds or 1
        e = self.args.local_epochs
        if self.args.job == FINETUNE and incoming.meta.get(VALIDATE, True):
            t0 = time.perf_counter()
            eval_meta, _ = self.evaluate(float(incoming.meta.get(THRESHOLD, 0.5)), incoming.meta.get(SECURE_SPEC))
            meta_out[VALIDATE_SECONDS] = round(time.perf_counter() - t0, 3)
            meta_out.update(eval_meta)
            n_cases = len(self.train_items)
        else:
            n_cases = len(self.labelled) + len(self.unlabelled)
        history = self.worker.run_epochs(round_index * e, e, total_rounds * e)
        loss = float(sum(h["loss"] for h in history) / len(history))
        self.writer.add_scalar("train_loss", loss, incoming.current_round or 0)
        self.local_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        meta_out[NUM_STEPS] = n_cases * e
        meta_out[TRAIN_SECONDS] = float(sum(h["seconds"] for h in history))
        return flare.FLModel(params=self.local_state, metrics={"train_loss": loss}, meta=meta_out)

    def validate(self, incoming) -> flare.FLModel:
        """The validation task (cyclic rounds, the final validation, cross-site evaluation). One that fails here
        (a validation case damaged while the job runs) is reported to the server, which names the site and pools
        the others' statistics; the site stays in the job and trains in the next pass."""
        try:
            return self._validate(incoming)
        except (FloatingPointError, RuntimeError, ValueError, OSError) as exc:
            self.warn(f"validation in round {incoming.current_round} failed at this site: {type(exc).__name__}: "
                      f"{exc}")
            return flare.FLModel(metrics={}, meta={FAILED: f"validation failed: {type(exc).__name__}: details in "
                                                           "the site's log"})

    def _validate(self, incoming) -> flare.FLModel:
        self.ensure_model(incoming.meta or {})
        if self.args.job != FINETUNE:
            return flare.FLModel(metrics={}, meta={})
        self.model.load_state_dict(to_state(incoming.params), strict=True)
        threshold = float((incoming.meta or {}).get(THRESHOLD, 0.5))
        # cross-site evaluation sends no secure-sum spec: only the site-level metrics go back then
        meta, site_metrics = self.evaluate(threshold, (incoming.meta or {}).get(SECURE_SPEC))
        if (incoming.meta or {}).get(FINAL) and self.last_predictions is not None:
            self.keep_predictions(self.last_predictions)
        return flare.FLModel(metrics=site_metrics, meta=meta)

    def keep_predictions(self, pred: dict) -> None:
        """Site-local only; a folder the job may not write to costs the file, not the job."""
        path = self.datalist.parent / FINAL_PREDICTIONS
        try:
            write_predictions(path, pred)
            self.log(f"final model's per-case validation results (site-local): {path}")
        except OSError as exc:
            self.warn(f"could not write the final validation's per-case results to {path} ({exc}); the job goes on")

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
        task = flare.get_task_name()
        if task == SS.KEYS_TASK:
            flare.send(flare.FLModel(metrics={}, meta={PUBLIC_KEY: learner.keys.public_hex}))
        elif task == SS.UNMASK_TASK:
            flare.send(learner.unmask(incoming))
        elif task == REFIT_TASK:
            flare.send(learner.refit_terms(incoming))
        elif flare.is_submit_model():
            flare.send(learner.submit_model())
        elif flare.is_evaluate():
            flare.send(learner.validate(incoming))
        else:
            flare.send(learner.train_round(incoming))


if __name__ == "__main__":
    main()
