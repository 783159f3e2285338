"""Dataset samples as Ray tasks: a Ray instance embedded in this process and local by default (nothing to
start by hand), or an existing Ray cluster given its address (docs/datasets.md shows how to start one).

Every node of a cluster needs ndt installed (the same version); the driver, wherever
``ndt dataset generate`` runs, writes the shards and keeps resume as in a local run.
"""

from __future__ import annotations

from typing import Iterator

from twin.state.errors import NdtError

LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # sample lines are small; leave the machine's memory to the simulations


class RayError(NdtError):
    """Ray could not start, or the cluster at the given address could not be reached."""


def run_samples(config, indices: list[int], workers: int | None,
                address: str | None) -> Iterator[tuple[int, tuple[str, float]]]:
    """``(index, sample_line(config, index))`` for every index, in the order the tasks finish, with at most
    ``workers`` samples running at once (default: this machine's cores, or the cluster's CPUs)."""
    import os

    import ray

    from twin.data.dataset import sample_line

    started_here = not ray.is_initialized()
    if started_here:
        options = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
        if address is None:
            workers = workers or os.cpu_count() or 1
            options.update(num_cpus=workers, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise RayError(f"could not start or reach {where}: {exc}") from None
    try:
        workers = workers or int(ray.cluster_resources().get("CPU", 1))
        task = ray.remote(num_cpus=1)(sample_line)
        queue = iter(indices)
        running = {}
        for index in queue:
            running[task.remote(config, index)] = index
            if len(running) >= workers:
                break
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            index = running.pop(ready)
            following = next(queue, None)
            if following is not None:
                running[task.remote(config, following)] = following
            yield index, ray.get(ready)
    finally:
        if started_here:
            ray.shutdown()
