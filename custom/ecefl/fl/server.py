"""Server workflow: FedAvg over SwinUNETR weights with screened updates and pooled metrics from site statistics.

Per round: send the global model (with the plan and the current operating threshold) to every connected site;
each site first evaluates it on its validation split (additive statistics only), then trains locally. The
server rejects non-finite or wildly out-of-scale updates (naming site and round), averages the rest weighted by
local training cases, adds the sites' masked statistics (secure aggregation, ecefl.fl.secure_sum: the server
only ever sees their sum) into pooled Dice/AUC/accuracy/sensitivity/specificity/F1, keeps the
global model with the best pooled AUC, and after the last round runs a final validation of the final model.
With plan.fl_workflow "cyclic" the fine-tuning round's model instead visits the sites one after another
(cyclic weight transfer); validation, screening and pooled metrics stay the same.
Artifacts in the server's run folder, under ecefl/: pooled_metrics.json, global_model.pt, best_global_model.pt.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid

import numpy as np

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.base_fedavg import BaseFedAvg

from ecefl import metrics as M
from ecefl.fl import secure_sum as SS
from ecefl.fl.protocol import (FAILED, FINAL, JOB, NUM_STEPS, PLAN, PUBLIC_KEY, REFIT_CV_REFUSED, REFIT_ID, REFIT_TASK,
                                REFIT_TERMS, REFIT_PATHS, SECURE_SPEC, SECURE_STATS, SITE_SUMMARY, THRESHOLD,
                                TRAIN_SECONDS, UNMASK_SHARE, VALIDATE, VALIDATE_SECONDS)
from ecefl.job_kinds import CHECKPOINT_KIND, FINETUNE

OUT_DIR = "ecefl"


class _RefitAbandoned(Exception):
    """Too few sites answered a call of the read-out refit: the jointly trained read-out stays."""


class _CrossValidationRefused(Exception):
    """Sites whose CV folds are too small for their terms to leave them (plan.readout_ridge_cv_min_cases)."""

    def __init__(self, sites: list[str]):
        super().__init__(", ".join(sites))
        self.sites = sites


def _client(result: FLModel) -> str:
    return (result.meta or {}).get("client_name", "unknown-site")


def _as_array(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


class PooledFedAvg(BaseFedAvg):
    def __init__(self, *args, job_kind: str = FINETUNE, plan: dict | None = None, min_sites: int = 1,
                 final_validation: bool = True, max_update_ratio: float = 10.0, threshold: float = 0.5,
                 node_threshold: float = 0.5, resumed_from: dict | None = None, task_timeout: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.job_kind = job_kind
        self.plan = plan or {}
        self.min_sites = min_sites
        self.final_validation = final_validation and job_kind == FINETUNE
        self.max_update_ratio = max_update_ratio
        self.records: list[dict] = []
        self.events: list[dict] = []
        self.best: dict | None = None
        self.threshold = threshold
        self.node_threshold = node_threshold  # the output mask's node-probability threshold (metrics.NODE_THRESHOLDS)
        self.resumed_from = resumed_from  # a resubmitted job continues at start_round from a persisted model
        # once min_sites have answered, a round waits at most this many seconds for the others (0: for ever),
        # so a hung site delays the round but cannot block it
        self.task_timeout = int(task_timeout)
        self.site_keys: dict[str, str] = {}  # secure-sum public keys, relayed to every site with each task
        self.refit: dict | None = None  # the read-out refit's record (ecefl.readout), when the plan asks for one
        self._server_optimizer = None  # plan server_lr / server_momentum: torch SGD over the global weights

    # ---------------------------------------------------------------- workflow
    def run(self) -> None:
        self.info(f"ecefl {self.job_kind}: {self.num_rounds} rounds, at least {self.min_sites} site(s)")
        model = self.load_model()
        if model is None:
            return
        # sites schedule their epochs over the whole training: a resumed job keeps the original round numbers
        model.start_round = 0
        model.total_rounds = self.start_round + self.num_rounds
        if self.resumed_from:
            self.info(f"resuming at round {self.start_round} from the global model of round "
                      f"{self.start_round - 1}")
        if self.job_kind == FINETUNE:
            self._exchange_keys()
        for self.current_round in range(self.start_round, self.start_round + self.num_rounds):
            t0 = time.time()
            model.current_round = self.current_round
            targets = self.sample_clients()
            validates, cyclic = self._validates(self.current_round), self._cyclic()
            model.meta = self._task_meta(self._secure_spec(targets), {VALIDATE: validates})
            if cyclic:  # the round's model is validated first, at every site at once; then it visits them
                evaluated = self._validation(model, targets) if validates else []
                results, usable, passed_on = self._cyclic_pass(model, targets)
            else:  # each site validates the round's model, then trains it
                results = evaluated = self._send_and_wait("train", model, targets)
            if self.abort_signal.triggered:
                self._record_abort(results, targets)
                return
            if not cyclic:
                usable = self._screen(results, model, targets)
            if len(usable) < self.min_sites:
                self._finish_failed(f"round {self.current_round}: {len(usable)} usable site update(s), fewer "
                                    f"than min_sites={self.min_sites}; see the events in pooled_metrics.json")
                return
            record = self._round_record(self.current_round, usable, model, evaluated)
            record["seconds"] = round(time.time() - t0, 2)
            self.records.append(record)
            self._maybe_best(record, model)
            if cyclic:
                aggregated = FLModel(params=passed_on.params, params_type=ParamsType.FULL, meta={})
            else:
                aggregated = self.aggregate(usable)
            model = self.update_model(model, aggregated)
            self.save_model(model)
            self._write_checkpoint("global_model.pt", model.params)
            self._write_report()
            del results, usable, aggregated
            self._maybe_cleanup_memory()  # every memory_gc_rounds rounds (NVFlare's gc.collect + malloc_trim)
        if self.job_kind == FINETUNE and int(self.plan.get("readout_refit_iterations", 0)) > 0:
            model = self._refit_readout(model)
            self.save_model(model)  # NVFlare's persisted global model carries the refitted read-out too
            self._write_checkpoint("global_model.pt", model.params)
            self._write_report()
        if self.final_validation:
            targets = self.sample_clients()
            model.meta = self._task_meta(self._secure_spec(targets), {FINAL: True})
            results = self._validation(model, targets)
            usable = [r for r in results if (r.meta or {}).get(SITE_SUMMARY) is not None]
            if len(usable) < self.min_sites:
                self._finish_failed(f"final validation: {len(usable)} site(s) answered, fewer than "
                                    f"min_sites={self.min_sites}")
                return
            final = self._round_record("final", usable, model, results)
            self.records.append(final)
            self._maybe_best(final, model)
            # the final model keeps the operating threshold chosen on its own pooled validation ROC
            self._write_checkpoint("global_model.pt", model.params)
        self._write_report(finished=True)
        self.info("ecefl workflow finished")

    def _task_meta(self, secure_spec: dict | None, flags: dict) -> dict:
        """What every training/validation task carries: the plan, the operating threshold, the job and the
        secure-sum spec, plus the task's protocol flags (VALIDATE, FINAL)."""
        return {PLAN: self.plan, THRESHOLD: self.threshold, JOB: self.job_kind, SECURE_SPEC: secure_spec, **flags}

    def _cyclic(self) -> bool:
        return self.job_kind == FINETUNE and self.plan.get("fl_workflow", "fedavg") == "cyclic"

    def _cyclic_pass(self, model: FLModel, targets) -> tuple[list[FLModel], list[FLModel], FLModel]:
        """plan.fl_workflow "cyclic" (cyclic weight transfer, Chang et al. 2018; NVIDIA FLARE's cyclic workflow):
        the round's model visits the sites one after another, in name order, each training on the model the
        previous one sent; a site that fails or whose update is rejected is passed over. Only one site trains at a
        time, so each step gets the site's whole machine where sites share one (the simulator), and a round makes
        the sum of the sites' steps of progress instead of FedAvg's average. Returns every result, the usable ones
        and the model after the last site."""
        from nvflare.app_common.utils.fl_model_utils import FLModelUtils
        current = FLModel(params=dict(model.params), params_type=ParamsType.FULL,
                          current_round=model.current_round, total_rounds=model.total_rounds,
                          start_round=model.start_round)
        results, usable = [], []
        for site in sorted(targets):
            current.meta = self._task_meta(None, {VALIDATE: False})
            answer = self._send_and_wait("train", current, [site])
            results += answer
            if self.abort_signal.triggered:
                break
            accepted = self._screen(answer, current, [site])
            if accepted:
                usable += accepted
                current = FLModelUtils.update_model(current, accepted[0])
        return results, usable, current

    def _validation(self, model: FLModel, targets) -> list[FLModel]:
        """A validation task at every target; names the sites that sent nothing or whose validation failed (their
        statistics are then left out of the pool, whose secure sum the others' masks still decode)."""
        results = self._send_and_wait("validate", model, targets)
        self._name_missing(results, targets)
        for r in results:
            failed = (r.meta or {}).get(FAILED)
            if failed:
                self._event("failed", _client(r), f"{failed}; its statistics are not pooled this time")
        return results

    def _send_and_wait(self, task: str, model: FLModel, targets) -> list[FLModel]:
        """A round's task: ends when every site answered, or task_timeout seconds after min_sites answered (the
        rest are then named as dropped). A site whose task fails (an error result) is left out while min_sites
        can still answer (NVFlare's dynamic error policy) instead of ending the job. task_timeout 0: wait for
        every site (a hung one blocks the round until the heartbeat declares its node dead)."""
        if not self.task_timeout:
            return self.send_model_and_wait(task_name=task, data=model, targets=targets)
        n = len(targets) if targets else self.num_clients
        return self.broadcast_model(task_name=task, data=model, targets=targets, min_responses=min(self.min_sites, n),
                                    wait_time_after_min_received=self.task_timeout)

    # ---------------------------------------------------------------- secure aggregation
    def _exchange_keys(self) -> None:
        """Every site's secure-sum public key, once per job (ecefl.fl.secure_sum)."""
        targets = self.sample_clients()
        replies = self._send_and_wait(SS.KEYS_TASK, FLModel(params={}, meta={JOB: self.job_kind}), targets)
        self.site_keys = {_client(r): str(r.meta[PUBLIC_KEY]) for r in replies if (r.meta or {}).get(PUBLIC_KEY)}
        for site in sorted(set(targets) - set(self.site_keys)):  # sample_clients gives site names
            self._event("secure_sum", site, "no key exchanged: its evaluation statistics are not pooled in this job")

    def _secure_spec(self, targets) -> dict | None:
        peers = {name: self.site_keys[name] for name in targets if name in self.site_keys}
        if len(peers) < SS.MIN_SITES:
            return None  # one site's "sum" would be its own statistics: none are sent
        return {"context": f"{self.current_round}-{uuid.uuid4().hex}", "peers": peers}

    def _secure_sum(self, spec: dict | None, results: list[FLModel], threshold: float) -> dict | None:
        """The sum of the statistics that the sites sent masked, or None (nothing sent, masks of a missing site
        not recovered, or fewer than two sites contributing: the "sum" would be one site's statistics)."""
        total = self._secure_total(spec, results, SECURE_STATS)
        return None if total is None else SS.decode(total, int(self.plan.get("score_bins", 1000)), threshold)

    def _secure_total(self, spec: dict | None, results: list[FLModel], key: str):
        """The unmasked uint64 sum of the vectors the sites sent under meta[key], or None (see _secure_sum)."""
        sent = {_client(r): r.meta[key] for r in results if (r.meta or {}).get(key)}
        if not spec or not sent:
            return None
        try:
            total = SS.add([v["masked"] for v in sent.values()])
        except ValueError as exc:
            self._event("secure_sum", "server", f"pooled statistics lost: {exc}")
            return None
        missing = sorted(set(spec["peers"]) - set(sent))
        if missing:
            total = self._unmask(spec, missing, sorted(sent), total)
            if total is None:
                return None
        contributing = [site for site, v in sent.items() if v.get("contributes")]
        if len(contributing) < SS.MIN_SITES:
            if contributing:
                self._event("secure_sum", "server", "pooled statistics withheld: one site contributed (its own "
                                                    "statistics would be reported as the pool)")
            return None
        return total

    def _unmask(self, spec: dict, missing: list[str], answered: list[str], total):
        meta = {"context": spec["context"], "peers": spec["peers"], "missing": missing, "answered": answered,
                "length": int(len(total))}
        replies = self.broadcast_model(task_name=SS.UNMASK_TASK, data=FLModel(params={}, meta=meta), targets=answered,
                                       min_responses=len(answered), timeout=self.task_timeout or 600)
        shares = {_client(r): (r.meta or {}).get(UNMASK_SHARE) for r in replies}
        silent = sorted(set(answered) - {site for site, share in shares.items() if share})
        if silent:
            self._event("secure_sum", "server", f"pooled statistics lost this round: {', '.join(silent)} sent no "
                                                f"masks for the missing {', '.join(missing)}")
            return None
        return SS.subtract(total, [shares[site] for site in answered])

    # ---------------------------------------------------------------- read-out refit (ecefl.readout)
    def _refit_readout(self, model: FLModel) -> FLModel:
        """Newton iterations of the class-weighted logistic read-out on the final body, from the securely summed
        gradients and Hessians of the sites' training cases: the centralised solution over the pooled cases
        (ecefl.readout.solve, with the ridge cross-validated when the plan says so). Sites compute their case
        features once (the first request carries the model). With fewer than min_sites (or 2) sites answering,
        the jointly trained read-out is kept and the event says why."""
        from ecefl import readout as R
        from ecefl.plan import Plan
        plan = Plan.from_dict(self.plan)
        ridges, folds = R.ridge_settings(plan)
        theta0 = R.theta_from_state(model.params)
        frozen = R.hidden_frozen(plan, len(theta0))
        refit_id, t0 = uuid.uuid4().hex, time.time()
        state = {"targets": self.sample_clients(), "calls": 0}

        def summed(paths):
            spec = self._secure_spec(state["targets"])
            meta = {PLAN: self.plan, JOB: self.job_kind, REFIT_ID: refit_id, SECURE_SPEC: spec,
                    REFIT_PATHS: [[int(fold), theta.tolist()] for fold, theta in paths]}
            request = FLModel(params=model.params if state["calls"] == 0 else {}, meta=meta)
            results = self._send_and_wait(REFIT_TASK, request, state["targets"])
            self._name_missing(results, state["targets"])
            refused = sorted(_client(r) for r in results if (r.meta or {}).get(REFIT_CV_REFUSED))
            if refused:  # the others' masked terms are dropped unread: no mask of this context is ever revealed
                state["calls"] += 1  # every site that answered holds its features now
                state["targets"] = sorted(_client(r) for r in results
                                          if (r.meta or {}).get(REFIT_CV_REFUSED) or (r.meta or {}).get(REFIT_TERMS))
                raise _CrossValidationRefused(refused)
            answered = [r for r in results if (r.meta or {}).get(REFIT_TERMS)]
            total = self._secure_total(spec, answered, REFIT_TERMS)
            if len(answered) < max(self.min_sites, SS.MIN_SITES) or total is None:
                raise _RefitAbandoned(f"call {state['calls']}: {len(answered)} site(s) sent their terms "
                                      "(fewer than min_sites or 2): the jointly trained read-out is kept")
            state["calls"] += 1
            state["targets"] = sorted(_client(r) for r in answered)
            try:
                return R.unpack_paths(SS.decode_floats(total), len(paths), len(theta0))
            except ValueError as exc:
                raise _RefitAbandoned(f"call {state['calls'] - 1}: {exc}; the jointly trained read-out is kept")

        try:
            try:
                theta, record = R.solve(theta0, summed, ridges, folds, plan.readout_refit_iterations,
                                        plan.readout_standardise, frozen)
            except _CrossValidationRefused as exc:
                self._event("readout_refit", "server", f"{exc}: cross-validation folds under "
                                                       f"readout_ridge_cv_min_cases (or the site's min-count rule); "
                                                       f"the refit uses the plan's fixed ridge {plan.readout_ridge:g}")
                theta, record = R.solve(theta0, summed, [plan.readout_ridge], 0, plan.readout_refit_iterations,
                                        plan.readout_standardise, frozen)
                record["ridge_cv_refused_by"] = exc.sites
        except _RefitAbandoned as exc:
            self._event("readout_refit", "server", str(exc))
            return model
        model.params = R.state_with_average_case(R.state_with_theta(model.params, theta), record["average_case"])
        self.refit = {**record, "sites": state["targets"], "seconds": round(time.time() - t0, 1)}
        self.info(f"read-out refitted on the training cases of {', '.join(state['targets'])}{R.ridge_note(record)}: "
                  f"weighted loss {record['loss'][0]:.3f} -> {record['loss'][-1]:.3f}")
        return model

    def _name_missing(self, results: list[FLModel], targets) -> None:
        answered = {_client(r) for r in results}
        failed = set(getattr(self, "_current_failed_clients", set()))
        for site in sorted(set(targets or []) - answered):
            if site in failed:
                self._event("failed", site, "its task ended with an error (see the site's log)")
            elif self.task_timeout:
                self._event("dropped", site, f"no result within the task timeout ({self.task_timeout} s): site "
                                             "down, disconnected or hung")
            else:
                self._event("dropped", site, "no result this round (site down or disconnected)")

    def _record_abort(self, results: list[FLModel], targets) -> None:
        """An aborted round (an operator's abort, or NVFlare's when fewer than min_sites stay connected) still
        names, in pooled_metrics.json, the sites NVFlare declared disconnected and those still working."""
        silent = sorted(set(targets or []) - {_client(r) for r in results})
        lost = [site for site in silent if self.get_client_disconnect_time(site)]
        for site in lost:
            self._event("dropped", site, "disconnected (heartbeat lost) before the round could finish")
        working = [site for site in silent if site not in lost]
        self._event("aborted", "server", f"round {self.current_round} aborted with min_sites={self.min_sites}; "
                                         f"disconnected: {', '.join(lost) or 'none'}; still working: "
                                         f"{', '.join(working) or 'none'}")
        self._write_report(finished=False)

    @staticmethod
    def aggregate_fn(results: list[FLModel]) -> FLModel:
        """NVFlare's weighted average, over the sites in name order: sites answer in whatever order they finish,
        and a float sum in arrival order differs in the last bits, which training then amplifies. Sorted (and with
        the initial weights from the plan's seed), a seed reproduces a run bit for bit (docs/BENCHMARKS.md)."""
        return BaseFedAvg.aggregate_fn(sorted(results, key=_client))

    def update_model(self, model: FLModel, aggr_result: FLModel) -> FLModel:
        before = dict(model.params or {})
        model = super().update_model(model, aggr_result)
        lr, momentum = float(self.plan.get("server_lr", 1.0)), float(self.plan.get("server_momentum", 0.0))
        if lr != 1.0 or momentum != 0.0:
            model.params = self.server_step(before, model.params, lr, momentum)
        return model

    def server_step(self, before: dict, averaged: dict, lr: float, momentum: float) -> dict:
        """FedOpt's server SGD (as NVFlare's FedOpt controller): the averaged update (averaged - before) is the
        negative gradient of torch.optim.SGD(lr, momentum) over the floating-point weights; the momentum buffer
        lives across rounds in this workflow (a resumed job starts a new one)."""
        import torch
        keys = [k for k, v in averaged.items() if k in before and np.issubdtype(_as_array(v).dtype, np.floating)]
        if self._server_optimizer is None:
            self._server_weights = {k: torch.zeros(_as_array(averaged[k]).shape, dtype=torch.float64) for k in keys}
            self._server_optimizer = torch.optim.SGD(list(self._server_weights.values()), lr=lr, momentum=momentum)
        out = dict(averaged)
        for k in keys:
            w = self._server_weights[k]
            old = _as_array(before[k])
            w.data = torch.as_tensor(old, dtype=torch.float64).clone()
            w.grad = torch.as_tensor(old - _as_array(averaged[k]), dtype=torch.float64)
        self._server_optimizer.step()
        for k in keys:
            new = self._server_weights[k].detach().numpy().astype(_as_array(averaged[k]).dtype)
            out[k] = torch.as_tensor(new) if hasattr(averaged[k], "detach") else new
        return out

    def _validates(self, round_id: int) -> bool:
        """Whether sites validate the model they receive in this round (the global model after round_id rounds).
        The initial model is validated only when it is all there is (a 1-round job) or every round is asked;
        validate_every 0: none (the final validation after the last round still runs)."""
        every = int(self.plan.get("validate_every", 1))
        return every == 1 or (every > 1 and round_id > 0 and round_id % every == 0)

    # ---------------------------------------------------------------- screening
    def _screen(self, results: list[FLModel], global_model: FLModel, targets: list[str]) -> list[FLModel]:
        self._name_missing(results, targets)
        usable = []
        for r in results:
            site = _client(r)
            reason = self._reject_reason(r, global_model)
            if reason:
                self._event("rejected", site, reason)
                self.warning(f"round {self.current_round}: rejected the update of {site}: {reason}")
            else:
                usable.append(r)
        return usable

    def _reject_reason(self, result: FLModel, global_model: FLModel) -> str | None:
        failed = (result.meta or {}).get(FAILED)
        if failed:
            return f"the site's round failed ({failed})"
        if not result.params:
            return "empty update"
        # sites send full weights, or weight differences when the job transfers DIFFs (privacy filters)
        is_diff = str(getattr(result, "params_type", "")).upper().endswith("DIFF")
        diff_sq, ref_sq = 0.0, 0.0
        for key, value in result.params.items():
            arr = _as_array(value).astype(np.float64, copy=False)
            if not np.all(np.isfinite(arr)):
                return f"non-finite values (NaN/Inf) in {key}"
            ref = global_model.params.get(key) if global_model.params else None
            if ref is not None:
                ref = _as_array(ref).astype(np.float64, copy=False)
                diff_sq += float((arr ** 2).sum() if is_diff else ((arr - ref) ** 2).sum())
                ref_sq += float((ref ** 2).sum())
        if ref_sq > 0 and math.sqrt(diff_sq) > self.max_update_ratio * math.sqrt(ref_sq):
            return (f"update out of scale (|w_site - w_global| = {math.sqrt(diff_sq):.3g} > "
                    f"{self.max_update_ratio} x |w_global| = {math.sqrt(ref_sq):.3g})")
        loss = (result.metrics or {}).get("train_loss")
        if loss is not None and not math.isfinite(float(loss)):
            return "non-finite training loss"
        return None

    def _event(self, kind: str, site: str, reason: str) -> None:
        self.events.append({"round": self.current_round, "event": kind, "site": site, "reason": reason})

    # ---------------------------------------------------------------- pooled metrics
    def _round_record(self, round_id, results: list[FLModel], model: FLModel, evaluated: list[FLModel]) -> dict:
        """results: the usable updates; evaluated: every result that came back (a rejected update's evaluation of
        the global model it received is still valid)."""
        record = {"round": round_id, "threshold": self.threshold, "n_sites": len(results)}
        losses = [(float((r.metrics or {}).get("train_loss")), (r.meta or {}).get(NUM_STEPS, 1))
                  for r in results if (r.metrics or {}).get("train_loss") is not None]
        if losses:
            record["train_loss"] = sum(l * w for l, w in losses) / max(sum(w for _, w in losses), 1)
        # local training and validation time per site; the rest of the round's "seconds" is the framework's
        for key in (TRAIN_SECONDS, VALIDATE_SECONDS):
            per_site = {_client(r): (r.meta or {}).get(key) for r in results}
            if any(v is not None for v in per_site.values()):
                record[f"site_{key}"] = per_site
        if self.job_kind != FINETUNE:
            return M.nan_safe(record)
        record["sites"] = {}
        for r in sorted(evaluated, key=_client):
            summary = (r.meta or {}).get(SITE_SUMMARY) or {}
            if summary.get("suppressed"):
                record["sites"][_client(r)] = {"suppressed": True}
            elif summary.get("n_cases"):
                record["sites"][_client(r)] = summary
        merged = self._secure_sum((model.meta or {}).get(SECURE_SPEC), evaluated, self.threshold)
        if merged:
            record["pooled"] = M.summary(merged, n_boot=1000)
            record["roc"] = {"score_hist_pos": merged["score_hist_pos"], "score_hist_neg": merged["score_hist_neg"]}
            # the next operating threshold: Youden's J on the pooled ROC, at a histogram bin edge
            self.threshold = M.youden_threshold_from_histograms(merged["score_hist_pos"], merged["score_hist_neg"])
            record["next_threshold"] = self.threshold
            # the output mask's threshold: the best pooled mean Dice over the candidates, stored with the model
            self.node_threshold = M.node_threshold_from(merged["dice_sum_at"])
            record["node_threshold"] = self.node_threshold
        else:
            record["pooled"] = None
        self._track(round_id, record)
        return M.nan_safe(record)

    def _maybe_best(self, record: dict, model: FLModel) -> None:
        """Best model: the highest mean of pooled AUC and pooled mean Dice among the models trained for at least
        half of the rounds (and the final one). On a few validation cases an untrained or barely trained model
        can win on AUC alone by chance; it cannot on both, and early rounds are not candidates."""
        pooled = record.get("pooled") or {}
        auc, dice = pooled.get("auc"), pooled.get("dice") or 0.0
        if auc is None:
            return
        total = self.start_round + self.num_rounds
        trained_rounds = total if record["round"] == "final" else int(record["round"])
        if trained_rounds < math.ceil(total / 2):
            return
        score = (float(auc) + float(dice)) / 2
        if self.best is None or score >= self.best["score"]:
            self.best = {"round": record["round"], "auc": auc, "dice": dice, "score": score}
            self._write_checkpoint("best_global_model.pt", model.params)

    def _track(self, round_id, record: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            if not hasattr(self, "_tb"):
                self._tb = SummaryWriter(os.path.join(self.get_run_dir(), OUT_DIR, "tb_pooled"))
            step = self.num_rounds + self.start_round if round_id == "final" else int(round_id)
            for key, value in (record.get("pooled") or {}).items():
                if isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(f"pooled/{key}", value, step)
            self._tb.flush()
        except Exception as exc:  # tracking must never break training
            self.warning(f"TensorBoard logging failed: {exc}")

    # ---------------------------------------------------------------- artifacts
    def _out(self, name: str) -> str:
        folder = os.path.join(self.get_run_dir(), OUT_DIR)
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, name)

    def _write_checkpoint(self, name: str, params: dict) -> None:
        import torch
        from ecefl.checkpoint import save_checkpoint
        from ecefl.plan import Plan
        state = {k: torch.as_tensor(_as_array(v).copy()) for k, v in params.items()}
        kind = CHECKPOINT_KIND[self.job_kind]
        save_checkpoint(self._out(name), kind, Plan.from_dict(self.plan), state, threshold=self.threshold,
                        node_threshold=self.node_threshold,
                        federated={"job": self.job_kind, "round": self.current_round})

    def _write_report(self, finished: bool = False) -> None:
        rounds = [r for r in self.records if r["round"] != "final"]
        final = next((r for r in self.records if r["round"] == "final"), None)
        report = {"job": self.job_kind, "rounds": rounds, "final": final,
                  "best_round": self.best["round"] if self.best else None, "events": self.events,
                  "threshold": self.threshold, "node_threshold": self.node_threshold, "finished": finished,
                  "min_sites": self.min_sites,
                  "start_round": self.start_round, "total_rounds": self.start_round + self.num_rounds,
                  "resumed_from": self.resumed_from, "readout_refit": self.refit}
        path = self._out("pooled_metrics.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(M.nan_safe(report), fh, indent=1, allow_nan=False)
        os.replace(path + ".tmp", path)

    def _finish_failed(self, reason: str) -> None:
        self._event("failed", "server", reason)
        self._write_report(finished=False)
        self.error(reason)
        self.panic(reason)
