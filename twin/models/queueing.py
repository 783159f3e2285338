"""M/M/1/b queues and their loss-thinned fixed point over a batched graph: the arithmetic the QT
baseline (:mod:`twin.models.qt`) answers with and the learned models take as hints
(:mod:`twin.models.features`).

Every queue (class) of a port is an M/M/1/b queue holding ``K = buffer + 1``
packets (the waiting room plus the one in transmission) of the mean size of its
traffic. A FIFO port is one class served at the link's ``C`` bit/s. A class of
a scheduled port is served at the share ``speed`` of ``C`` the policy leaves it:

- SP (queue 0 first): what the queues before it leave, ``1 - σ_before``; its
  waiting time then gains the residual service of the packets of lower
  priority, so that with large buffers it is Cobham's non-preemptive priority
  M/M/1, ``W_k = Σ_i ρ_i s_i / ((1 - σ_{k-1})(1 - σ_k))`` (σ: load of queues
  0..k, s: mean service time, s);
- WFQ as the BNN-UPC simulator (and ndt's, docs/simulator.md) runs it: each
  queue's finish tags grow by size / weight per packet and are never reset, so
  the queue with the least load per unit of weight (ρ / w) stays ahead of the
  others; served in that order, as SP;
- DRR: its weight share, or all the others leave, whichever is larger
  (work-conserving round robin, mean loads);
- under WFQ and DRR alike, queues offered more than their weighted max-min
  fair share (backlogged) split what the others leave by their weights;

and a packet, once chosen, is transmitted at the full ``C``. Offered packet
rates are thinned by the losses of the queues before them on the path; losses
depend on the rates, so the two are iterated to a fixed point. A path's delay
is the sum of the sojourn times (s) of its queues plus the propagation delays;
its jitter (delay variance, s²; :func:`path_jitter`) the sum over hops of
``T² - s²`` (an exponential sojourn ``T`` less the path's own transmission,
hops independent).
"""

from __future__ import annotations

import numpy as np

from twin.state.model import POLICIES

MIN_SPEED = 0.02  # the least share of C a class is served at (a class starved by SP still drains)
_SP, _WFQ, _DRR = (POLICIES.index(p) for p in ("sp", "wfq", "drr"))


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


def priority_order(batch, rho: np.ndarray) -> np.ndarray:
    """Per class, the key its port serves classes in, lowest first: the queue's index under SP; under WFQ its
    load per unit of weight (ρ / w: the queue whose finish tags grow slowest stays ahead, module docstring)."""
    wfq = batch.class_policy == _WFQ
    return np.where(wfq, rho / batch.class_weight, batch.class_rank.astype(np.float64))


def load_before(batch, rho: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Per class, the summed load ``rho`` of the classes of its port with a smaller ``key`` (ties: queue order)."""
    order = np.lexsort((batch.class_rank, key, batch.class_link))
    ranked = rho[order]
    cumulative = np.cumsum(ranked)
    links = batch.class_link[order]
    first = np.searchsorted(links, links)
    out = np.empty(len(rho))
    out[order] = cumulative - ranked - (cumulative[first] - ranked[first])
    return out


def class_speeds(batch, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: the share of its link's capacity it is served at, and the load (ρ, of C) of the classes
    its port serves first (SP, WFQ; 0 otherwise); ``rho`` is each class's offered load.

    WFQ and DRR share a port by weighted max-min fairness (:func:`fair_levels`): a queue offered more
    than its fair share is served at its weight times the port's water level, so two overloaded queues
    split what the others leave by their weights."""
    ordered = (batch.class_policy == _SP) | (batch.class_policy == _WFQ)
    before = load_before(batch, rho, priority_order(batch, rho))
    others = np.bincount(batch.class_link, weights=rho, minlength=len(batch.link_buffer))[batch.class_link] - rho
    speed = np.ones(len(rho))
    drr = batch.class_policy == _DRR
    speed[ordered] = 1.0 - before[ordered]
    speed[drr] = np.maximum(batch.class_weight[drr], 1.0 - others[drr])
    level, satisfied = fair_levels(batch, rho)
    fair = (batch.class_policy == _WFQ) | drr
    with np.errstate(invalid="ignore"):
        fair_share = level * batch.class_weight
    speed = np.where(fair & ~satisfied, fair_share, speed)
    speed = np.where(drr & satisfied & np.isfinite(fair_share), np.maximum(speed, fair_share), speed)
    return np.clip(speed, MIN_SPEED, 1.0), np.where(ordered, before, 0.0)


def fair_levels(batch, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted max-min fair shares of the WFQ and DRR ports (backlogged queues share a port by weight, a
    queue offered less than its share leaves the rest to the others). Per class: its port's water level
    (share of C per unit of weight of its overloaded queues; inf where none is overloaded) and whether it
    is offered no more than its fair share (True on SP and FIFO ports)."""
    fair = (batch.class_policy == _WFQ) | (batch.class_policy == _DRR)
    weight = batch.class_weight
    key = rho / weight  # the fair order: least load per unit of weight first
    rho_before = load_before(batch, rho, key)
    weight_before = load_before(batch, weight, key)
    n_links = len(batch.link_buffer)
    weight_total = np.bincount(batch.class_link, weights=weight, minlength=n_links)[batch.class_link]
    satisfied = ~fair | (rho * (weight_total - weight_before) <= weight * (1.0 - rho_before))
    served = np.bincount(batch.class_link, weights=np.where(fair & satisfied, rho, 0.0), minlength=n_links)
    starved = np.bincount(batch.class_link, weights=np.where(fair & ~satisfied, weight, 0.0), minlength=n_links)
    with np.errstate(invalid="ignore", divide="ignore"):
        level = np.where(starved > 0, np.maximum(1.0 - served, 0.0) / starved, np.inf)
    return level[batch.class_link], satisfied


def solve(batch, iterations: int = 100, tol: float = 1e-8) -> dict[str, np.ndarray]:
    """Fixed point of the loss-thinned loads of a batched graph (a :class:`twin.models.features.GraphBatch`).

    Returns per sorted path ``delay`` (s) and ``loss``; per class ``class_sojourn`` (s),
    ``class_loss``, ``class_rho`` and ``class_speed``; per link ``sojourn`` (s), ``link_loss`` and ``rho``
    (offered load after upstream losses; a scheduled link's are its classes' totals and means).
    """
    pkt_rate = batch.path_rate / batch.path_size  # packets/s per path
    service = batch.class_service
    mu = 1.0 / service
    capacity = batch.class_buffer.astype(np.int64) + 1
    n_classes = len(service)
    loss = np.zeros(n_classes)
    fifo_only = not np.any(batch.class_policy)
    speed, before = np.ones(n_classes), np.zeros(n_classes)
    for _ in range(iterations):
        survive = np.ones(batch.n_paths)
        arrivals = np.zeros(n_classes)
        for k in range(batch.max_hops):
            sl = slice(batch.offsets[k], batch.offsets[k] + batch.counts[k])
            classes = batch.hop_class[sl]
            active = survive[: batch.counts[k]]
            arrivals += np.bincount(classes, weights=pkt_rate[: batch.counts[k]] * active, minlength=n_classes)
            survive[: batch.counts[k]] = active * (1.0 - loss[classes])
        rho = arrivals / mu
        if not fifo_only:
            speed, before = class_speeds(batch, rho)
        new_loss, mean = mm1b(rho / speed, capacity)
        done = np.max(np.abs(new_loss - loss)) < tol
        loss = new_loss
        if done:
            break
    throughput = arrivals * (1.0 - loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        sojourn = np.where(throughput > 0, mean / throughput, 1.0 / (mu * speed))
    if np.any(speed < 1.0):
        sojourn = np.where(speed < 1.0, sojourn - service / speed + service, sojourn)  # once chosen, sent at C
    sojourn = sojourn + _residual_wait(batch, rho, before, service, speed)
    delay = batch.path_prop + np.bincount(batch.hop_path, weights=sojourn[batch.hop_class], minlength=batch.n_paths)
    out = {"delay": delay, "loss": 1.0 - survive, "class_sojourn": sojourn, "class_loss": loss,
           "class_rho": rho, "class_speed": speed}
    n_links = len(batch.link_buffer)
    if n_classes == n_links:  # every port one class: the links' figures are the classes'
        out.update(sojourn=sojourn, link_loss=loss, rho=rho)
        return out
    link_arrivals = np.bincount(batch.class_link, weights=arrivals, minlength=n_links)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["sojourn"] = np.where(link_arrivals > 0, np.bincount(batch.class_link, weights=arrivals * sojourn,
                                                                 minlength=n_links) / link_arrivals,
                                  batch.link_service)
        out["link_loss"] = np.where(link_arrivals > 0, np.bincount(batch.class_link, weights=arrivals * loss,
                                                                   minlength=n_links) / link_arrivals, 0.0)
    out["rho"] = np.bincount(batch.class_link, weights=rho, minlength=n_links)
    return out


def path_jitter(batch, class_sojourn: np.ndarray) -> np.ndarray:
    """Per sorted path, the delay variance (s²) QT expects from its queues' sojourn times (s)."""
    per_hop = np.maximum(class_sojourn[batch.hop_class] ** 2 - batch.hop_transmit**2, 0.0)
    return np.bincount(batch.hop_path, weights=per_hop, minlength=batch.n_paths)


def _residual_wait(batch, rho, before, service, speed):
    """Per class, s: the wait SP (and WFQ, served in order) adds for packets of lower priority already in
    transmission (Cobham's non-preemptive term beyond the reduced-speed queue), bounded by the time to
    drain the class's buffer."""
    sp = (batch.class_policy == _SP) | (batch.class_policy == _WFQ)
    if not np.any(sp):
        return 0.0
    work = np.bincount(batch.class_link, weights=rho * service, minlength=len(batch.link_buffer))[batch.class_link]
    through = before + rho
    with np.errstate(invalid="ignore", divide="ignore"):
        extra = (work - rho * service) / ((1.0 - before) * (1.0 - through))
    bound = batch.class_buffer * service / speed
    return np.where(sp, np.where(through < 1.0, np.minimum(extra, bound), bound), 0.0)
