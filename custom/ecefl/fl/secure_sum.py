"""Secure aggregation of the sites' evaluation statistics: the server learns their sum, never one site's.

Pairwise masking (Bonawitz et al., CCS 2017), for an honest-but-curious server that relays messages:
1. key exchange (task `secure_sum_keys`): each site makes an X25519 key pair for this job and sends the public
   key; the server relays every site's public key with each later task;
2. each site encodes its additive statistics (ecefl.metrics.site_stats: counts, Dice sums and histogram, score
   histograms per class, confusion counts) as integers modulo 2^64 (floats in fixed point) and adds, for every
   other site j of the task, a mask derived from their shared X25519 secret and the task's one-time context:
   +m_ij if i < j, -m_ij otherwise. The masked vector is uniformly random to anyone without the secrets;
3. the server adds the masked vectors: the masks cancel, leaving the exact sum (pooled AUC exact up to ties
   within one score bin, as before);
4. a site of the task that sent nothing (down, hung, failed) leaves its masks in the sum: the server then asks
   the sites that did answer for their masks with the missing sites only (task `secure_sum_unmask`) and
   subtracts them. A site never reveals a mask with a site whose statistics are in the sum.

Limits (docs/DEPLOY.md): a server that lies about who answered could learn one site's statistics (Bonawitz's
double masking closes that; not implemented), and the pooled sum itself reveals what pooled statistics reveal: with
one site in the sum, that site's statistics. Sites therefore refuse to mask for a task with fewer than
MIN_SITES sites and refuse to reuse a context.
"""
from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ecefl import metrics as M

KEYS_TASK = "secure_sum_keys"
UNMASK_TASK = "secure_sum_unmask"
MIN_SITES = 2
FIXED_POINT = 2 ** 24  # float statistics (Dice sums) to integers: 6e-8 resolution, exact sums up to 2^39


def layout(bins: int) -> list[tuple[str, int]]:
    """(key, length) of the encoded vector, the same at every site for one plan."""
    return [(k, 1) for k in M.STAT_SUM_KEYS] + [("dice_hist", M.DICE_BINS), ("score_hist_pos", bins),
                                                  ("score_hist_neg", bins),
                                                  ("dice_sum_at", len(M.NODE_THRESHOLDS))]


_FLOAT_KEYS = {"dice_sum", "dice_sq_sum", "dice_sum_at"}


def encode(stats: dict | None, bins: int) -> np.ndarray:
    """Statistics as uint64 (every value is a count or a sum of non-negative numbers). None: zeros
    (a site whose statistics are suppressed still sends its masks, so the others' sum decodes)."""
    parts = []
    for key, n in layout(bins):
        value = np.zeros(n, dtype=np.int64) if stats is None else stats[key]
        if key in _FLOAT_KEYS:
            value = np.rint(np.asarray(value, dtype=np.float64).reshape(-1) * FIXED_POINT)
            value = int(value[0]) if n == 1 else value
        arr = np.asarray(value, dtype=np.int64).reshape(-1)
        if arr.size != n or (arr < 0).any():
            raise ValueError(f"statistic {key} has {arr.size} values (expected {n}) or a negative value")
        parts.append(arr.astype(np.uint64))
    return np.concatenate(parts)


def decode(vector, bins: int, threshold: float) -> dict:
    vector = np.asarray(vector, dtype=np.uint64)
    out, i = {}, 0
    for key, n in layout(bins):
        chunk = vector[i:i + n].astype(np.int64)
        i += n
        if key in _FLOAT_KEYS:
            out[key] = float(chunk[0]) / FIXED_POINT if n == 1 else (chunk / FIXED_POINT).tolist()
        elif n == 1:
            out[key] = int(chunk[0])
        else:
            out[key] = chunk.tolist()
    out["bins"], out["threshold"] = int(bins), float(threshold)
    return out


def encode_floats(values, scale: float = 2.0 ** 32) -> np.ndarray:
    """Signed floats (e.g. a gradient) in fixed point, two's complement modulo 2^64: sums of up to ~2^30 / |value|
    such numbers decode exactly at 2^-32 resolution."""
    arr = np.rint(np.asarray(values, dtype=np.float64).reshape(-1) * scale)
    if not np.all(np.isfinite(arr)) or np.abs(arr).max(initial=0) >= 2.0 ** 62:
        raise ValueError("a value to be summed is non-finite or too large for the fixed-point encoding")
    return arr.astype(np.int64).astype(np.uint64)


def decode_floats(vector, scale: float = 2.0 ** 32) -> np.ndarray:
    return np.asarray(vector, dtype=np.uint64).astype(np.int64).astype(np.float64) / scale


class SiteKeys:
    """One site's key pair for one job, and the contexts it has already masked for (never two vectors under one
    mask: their difference would be the difference of the plain statistics)."""

    def __init__(self, name: str):
        self.name = name
        self._private = X25519PrivateKey.generate()
        self.public_hex = self._private.public_key().public_bytes_raw().hex()
        self._used: set[str] = set()

    def _pair_mask(self, peer: str, peer_public_hex: str, context: str, n: int) -> np.ndarray:
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(peer_public_hex)))
        low, high = sorted([self.name, peer])
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=f"ecefl-secure-sum|{low}|{high}|{context}".encode()).derive(shared)
        return np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big"))).bit_generator.random_raw(n) \
            .astype(np.uint64)

    def _signed_masks(self, peers: dict[str, str], context: str, n: int) -> np.ndarray:
        total = np.zeros(n, dtype=np.uint64)
        for peer, public in sorted(peers.items()):
            if peer != self.name:
                m = self._pair_mask(peer, public, context, n)
                total = total + m if self.name < peer else total - m  # uint64 arrays wrap modulo 2^64
        return total

    def mask(self, vector: np.ndarray, peers: dict[str, str], context: str) -> str:
        """The masked vector, as sent (to_wire). peers: every site of the task -> its public key."""
        if self.name not in peers:
            raise ValueError(f"site {self.name} is not among the task's secure-sum peers")
        if len(peers) < MIN_SITES:
            raise ValueError(f"secure sum over {len(peers)} site(s): at least {MIN_SITES} are needed, or the "
                             "server would read this site's statistics")
        if context in self._used:
            raise ValueError(f"secure-sum context {context!r} was already used: refusing to mask twice")
        self._used.add(context)
        masked = np.asarray(vector, dtype=np.uint64) + self._signed_masks(peers, context, len(vector))
        return to_wire(masked)

    def unmask_share(self, peers: dict[str, str], missing: list[str], answered: list[str], context: str,
                     n: int) -> str:
        """This site's masks with the sites that sent nothing, to be subtracted from the sum. Refused for a
        context this site did not mask for, for a 'missing' site outside the task, and when fewer than MIN_SITES
        sites' statistics would remain in the sum (it would then be one site's statistics)."""
        if context not in self._used:
            raise ValueError(f"no statistics were masked for context {context!r} at {self.name}")
        if self.name in missing or not set(missing) <= set(peers) or set(missing) & set(answered):
            raise ValueError("the unmask request names sites outside the task, this site, or a site that answered")
        if len(answered) < MIN_SITES:
            raise ValueError(f"only {len(answered)} site(s) answered: unmasking would reveal their statistics")
        return to_wire(self._signed_masks({p: peers[p] for p in missing}, context, n))


def to_wire(vector: np.ndarray) -> str:
    return np.asarray(vector, dtype="<u8").tobytes().hex()


def from_wire(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype="<u8").astype(np.uint64)


def add(wires: list[str]) -> np.ndarray:
    """Sum of masked vectors modulo 2^64."""
    vectors = [from_wire(w) for w in wires]
    if len({len(v) for v in vectors}) != 1:
        raise ValueError("masked statistics of different lengths: sites run different plans")
    total = np.zeros(len(vectors[0]), dtype=np.uint64)
    for v in vectors:
        total = total + v  # uint64 arrays wrap modulo 2^64
    return total


def subtract(total: np.ndarray, shares: list[str]) -> np.ndarray:
    """Remove the masks with missing sites (each share is one answering site's signed masks with them)."""
    for s in shares:
        total = total - from_wire(s)
    return total
