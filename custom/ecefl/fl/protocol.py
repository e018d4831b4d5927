"""Names in the messages between the server workflow and the site script (both import them from here)."""
from nvflare.apis.fl_constant import FLMetaKey

NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND  # FedAvg's aggregation weight
FAILED = "site_round_failed"  # why a site's round failed; the server leaves the site out of that round
SECURE_SPEC = "secure_sum"  # server -> sites: {"context": one-time id, "peers": {site: X25519 public key}}
SECURE_STATS = "secure_stats"  # site -> server: {"masked": wire vector, "contributes": bool}
SITE_SUMMARY = "site_summary"  # site -> server: the site's own metrics (AUC, Dice, ... and case counts)
