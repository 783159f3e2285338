"""M/M/1/b queues and their loss-thinned fixed point over a batched graph: the arithmetic the QT
baseline (:mod:`twin.models.qt`) answers with and the learned models take as hints
(:mod:`twin.models.features`).

Link ``l`` holds ``K = buffer + 1`` packets (the waiting room plus the one in
transmission) and serves packets of the mean size of its traffic at ``C``
bit/s, so ``μ = C / mean_size`` packets/s. Its offered packet rate is the sum
over the flows crossing it of rate / size, each thinned by the losses of the
links before it on the path; losses depend on the rates, so the two are
iterated to a fixed point. A path's delay is the sum of the sojourn times
(L / throughput, s) of its links plus their propagation delays.
"""

from __future__ import annotations

import numpy as np


def mm1b(rho: np.ndarray, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocking probability and mean number in system of M/M/1/K queues.

    rho: offered load λ/μ per queue (any value >= 0, overload included);
    capacity: K, the most packets the system holds (>= 1). Returns (P_K, L).
    """
    rho = np.asarray(rho, dtype=np.float64)
    capacity = np.asarray(capacity, dtype=np.int64)
    n = np.arange(int(capacity.max()) + 1)
    log_rho = np.log(np.maximum(rho, 1e-300))[:, None]
    exponent = np.where(n[None, :] <= capacity[:, None], n[None, :] * log_rho, -np.inf)
    weights = np.exp(exponent - exponent.max(axis=1, keepdims=True))
    probs = weights / weights.sum(axis=1, keepdims=True)
    blocking = probs[np.arange(len(rho)), capacity]
    mean = probs @ n
    return blocking, mean


def solve(batch, iterations: int = 100, tol: float = 1e-8) -> dict[str, np.ndarray]:
    """Fixed point of the loss-thinned loads of a batched graph (a :class:`twin.models.features.GraphBatch`).

    Returns per sorted path ``delay`` (s) and ``loss``, per link ``sojourn`` (s),
    ``loss`` and ``rho`` (offered load after upstream losses).
    """
    pkt_rate = batch.path_rate / batch.path_size  # packets/s per path
    mu = 1.0 / batch.link_service
    capacity = batch.link_buffer.astype(np.int64) + 1
    n_links = len(mu)
    link_loss = np.zeros(n_links)
    for _ in range(iterations):
        survive = np.ones(batch.n_paths)
        arrivals = np.zeros(n_links)
        for k in range(batch.max_hops):
            sl = slice(batch.offsets[k], batch.offsets[k] + batch.counts[k])
            links = batch.hop_link[sl]
            active = survive[: batch.counts[k]]
            arrivals += np.bincount(links, weights=pkt_rate[: batch.counts[k]] * active, minlength=n_links)
            survive[: batch.counts[k]] = active * (1.0 - link_loss[links])
        rho = arrivals / mu
        new_loss, mean = mm1b(rho, capacity)
        done = np.max(np.abs(new_loss - link_loss)) < tol
        link_loss = new_loss
        if done:
            break
    throughput = arrivals * (1.0 - link_loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        sojourn = np.where(throughput > 0, mean / throughput, 1.0 / mu)
    delay = batch.path_prop + np.bincount(batch.hop_path, weights=sojourn[batch.hop_link], minlength=batch.n_paths)
    return {"delay": delay, "loss": 1.0 - survive, "sojourn": sojourn, "link_loss": link_loss, "rho": rho}
