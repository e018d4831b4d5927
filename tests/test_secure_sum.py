"""Secure aggregation of the sites' evaluation statistics (ecefl.fl.secure_sum), played from the server's side:
what one site sends must not give any of its cases' (score, label) pairs, while the sum over sites is exact."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ecefl import metrics as M
from ecefl.fl import secure_sum as SS

BINS = 1000
SITES = ("hospital-a", "hospital-b", "hospital-c")


def _site_data(rng, n):
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    probs = np.clip(rng.normal(0.45 + 0.2 * labels, 0.15), 0, 1)
    dices = rng.random(n)
    voxels = rng.integers(0, 5000, (n, 3))
    dices_at = rng.random((n, len(M.NODE_THRESHOLDS)))
    return probs, labels, M.site_stats(probs, labels, dices, voxels, 0.5, BINS, dices_at=dices_at)


def _federation(n_per_site=40, seed=0):
    rng = np.random.default_rng(seed)
    keys = {s: SS.SiteKeys(s) for s in SITES}
    peers = {s: k.public_hex for s, k in keys.items()}
    data = {s: _site_data(rng, n_per_site) for s in SITES}
    return keys, peers, data


def _same(decoded, merged):
    for k, v in merged.items():
        if isinstance(v, float) or k == "dice_sum_at":  # float sums: fixed point, 6e-8 per site
            assert decoded[k] == pytest.approx(v, abs=1e-6), k
        else:
            assert decoded[k] == v, k


def test_the_sum_of_masked_statistics_is_exact_and_pooled_auc_within_0_01_of_sklearn():
    keys, peers, data = _federation(n_per_site=40)
    sent = [keys[s].mask(SS.encode(data[s][2], BINS), peers, "round-1") for s in SITES]
    pooled = SS.decode(SS.add(sent), BINS, 0.5)
    _same(pooled, M.merge_stats([data[s][2] for s in SITES]))
    probs = np.concatenate([data[s][0] for s in SITES])
    labels = np.concatenate([data[s][1] for s in SITES])
    assert len(probs) >= 100
    exact = roc_auc_score(labels, probs)
    assert abs(M.auc_from_histograms(pooled["score_hist_pos"], pooled["score_hist_neg"]) - exact) <= 0.01


def test_a_site_that_sent_nothing_is_unmasked_by_the_others_and_only_then():
    keys, peers, data = _federation()
    sent = {s: keys[s].mask(SS.encode(data[s][2], BINS), peers, "r2") for s in SITES[:2]}  # hospital-c hung
    total = SS.add(list(sent.values()))
    assert SS.decode(total, BINS, 0.5)["n_cases"] != 80  # masks with hospital-c remain in the sum
    shares = [keys[s].unmask_share(peers, ["hospital-c"], list(SITES[:2]), "r2", len(total)) for s in SITES[:2]]
    _same(SS.decode(SS.subtract(total, shares), BINS, 0.5), M.merge_stats([data[s][2] for s in SITES[:2]]))
    # never a mask with a site whose statistics are in the sum, never when one site would stay alone in it
    with pytest.raises(ValueError, match="answered"):
        keys["hospital-a"].unmask_share(peers, ["hospital-b"], ["hospital-a", "hospital-b"], "r2", len(total))
    with pytest.raises(ValueError, match="only 1 site"):
        keys["hospital-a"].unmask_share(peers, ["hospital-b", "hospital-c"], ["hospital-a"], "r2", len(total))
    with pytest.raises(ValueError, match="no statistics were masked"):
        keys["hospital-a"].unmask_share(peers, ["hospital-c"], list(SITES[:2]), "other", len(total))


def test_the_server_cannot_read_one_sites_cases_from_what_it_sends():
    """The server sees, per site: its public key and its masked vectors (and site-level metrics). Its best
    readings of one site's vector give no case: no bin holds a plausible count, and the vector is uniform."""
    keys, peers, data = _federation(n_per_site=10)
    probs, labels, stats = data["hospital-a"]
    plain = SS.encode(stats, BINS)
    masked = SS.from_wire(keys["hospital-a"].mask(plain, peers, "r3"))
    offset = len(plain) - 2 * BINS
    # reading the vector as counts: every bin of a case would show 1..n; none does
    as_counts = masked.view(np.int64)
    case_bins = {int(min(p, 1 - 1e-9) * BINS) + (0 if y else BINS) for p, y in zip(probs, labels)}
    plausible = {i - offset for i in np.flatnonzero((as_counts[offset:] >= 1) & (as_counts[offset:] <= 10)) + offset}
    assert not (plausible & case_bins) and len(plausible) == 0
    # uniform over 64 bits: each bit set in about half of the entries (the plain vector: almost never)
    bits = np.unpackbits(masked.view(np.uint8)).reshape(-1, 64).mean(0)
    assert np.all(np.abs(bits - 0.5) < 0.06)
    assert np.unpackbits(plain.view(np.uint8)).mean() < 0.02
    # the masks depend on secrets the server never sees: the same site's vector under another context differs
    # everywhere, and a context is never used twice (two vectors under one mask would give their difference)
    again = SS.from_wire(keys["hospital-a"].mask(plain, peers, "r4"))
    assert np.mean(again == masked) < 0.01
    with pytest.raises(ValueError, match="already used"):
        keys["hospital-a"].mask(plain, peers, "r4")


def test_a_site_refuses_to_mask_alone_or_outside_the_task():
    keys, peers, data = _federation()
    vec = SS.encode(data["hospital-a"][2], BINS)
    with pytest.raises(ValueError, match="at least 2"):
        keys["hospital-a"].mask(vec, {"hospital-a": peers["hospital-a"]}, "solo")
    with pytest.raises(ValueError, match="not among"):
        keys["hospital-a"].mask(vec, {s: peers[s] for s in SITES[1:]}, "x")
    # a site with suppressed statistics sends masked zeros: the others' sum still decodes
    sent = [keys["hospital-a"].mask(SS.encode(None, BINS), peers, "z")]
    sent += [keys[s].mask(SS.encode(data[s][2], BINS), peers, "z") for s in SITES[1:]]
    _same(SS.decode(SS.add(sent), BINS, 0.5), M.merge_stats([data[s][2] for s in SITES[1:]]))
