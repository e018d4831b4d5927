"""Test-only NVFlare client script: the real ecefl client, but this site's update carries NaN weights.

Used by tests/test_faults.py through a per-site job configuration, so the fault reaches the real server."""
import math

import torch

from ecefl.fl import client


class PoisonedLearner(client.SiteLearner):
    def train_round(self, incoming):
        update = super().train_round(incoming)
        first = next(iter(update.params))
        update.params[first] = torch.full_like(update.params[first], math.nan)
        return update


client.SiteLearner = PoisonedLearner

if __name__ == "__main__":
    client.main()
