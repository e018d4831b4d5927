"""Names in the messages between the server workflow and the site script (both import them from here)."""
from nvflare.apis.fl_constant import FLMetaKey

NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND  # FedAvg's aggregation weight
FAILED = "site_round_failed"  # why a site's round failed; the server leaves the site out of that round
