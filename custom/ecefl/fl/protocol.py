"""Names in the messages between the server workflow and the site script (both import them from here)."""
from nvflare.apis.fl_constant import FLMetaKey

NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND  # FedAvg's aggregation weight
FAILED = "site_round_failed"  # why a site's round failed; the server leaves the site out of that round
SECURE_SPEC = "secure_sum"  # server -> sites: {"context": one-time id, "peers": {site: X25519 public key}}
SECURE_STATS = "secure_stats"  # site -> server: {"masked": wire vector, "contributes": bool}
SITE_SUMMARY = "site_summary"  # site -> server: the site's own metrics (AUC, Dice, ... and case counts)
PLAN = "plan"  # server -> sites: the training plan (a dict; ecefl.plan.Plan)
THRESHOLD = "threshold"  # server -> sites: the operating threshold the sites' confusion counts use
JOB = "job"  # server -> sites: mae_pretrain | ece_finetune
VALIDATE = "validate"  # server -> sites (train task): evaluate the received model first
FINAL = "final_validation"  # server -> sites (validate task): the final model; sites keep per-case results locally
TRAIN_SECONDS = "train_seconds"  # site -> server: local training time of the round
VALIDATE_SECONDS = "validate_seconds"  # site -> server: local validation time of the round
PUBLIC_KEY = "public_key"  # site -> server (secure_sum_keys): the site's X25519 public key
UNMASK_SHARE = "share"  # site -> server (secure_sum_unmask): its masks with the sites that sent nothing
REFIT_TASK = "readout_refit"  # server -> sites: theta (and the model, first time); ecefl.readout
REFIT_ID = "refit"  # server -> sites: one id per refit (the sites' cached case features belong to it)
REFIT_PATHS = "paths"  # server -> sites: [fold, theta] pairs at which the sites evaluate their terms
REFIT_TERMS = "readout_terms"  # site -> server: the masked sum of its logistic loss, gradient and Hessian
REFIT_CV_REFUSED = "readout_cv_refused"  # site -> server: its CV folds are too small to send (no counts)
