"""Independent jobs as Ray tasks: a Ray instance embedded in this process and local by default (nothing to
start by hand), or an existing Ray cluster given its address (docs/simulator.md shows how to start one).
Dataset samples and the optimizer benchmark's cases run this way.

Every machine of a cluster needs ndt installed (the same version); results come back to the
process that asked, which writes the files, so resume works as in a local run.
"""

from __future__ import annotations

from typing import Callable, Iterator

from twin.state.errors import NdtError

LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # results are small; leave the machine's memory to the jobs
CONNECT_TIMEOUT_S = 5.0  # a cluster's head that does not accept a connection by then is not there


class RayError(NdtError):
    """Ray could not start, or the cluster at the given address could not be reached."""


def ray_map(function: Callable, calls: list[tuple], workers: int | None = None,
            address: str | None = None) -> Iterator[tuple[int, object]]:
    """``(i, function(*calls[i]))`` for every call, in the order the tasks finish, with at most ``workers``
    running at once (default: this machine's cores, or the cluster's CPUs). ``function`` must be
    importable by name (a module-level function)."""
    import os

    import ray

    started_here = not ray.is_initialized()
    if started_here and address is not None:
        check_reachable(address)
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
        task = ray.remote(num_cpus=1)(function)
        queue = iter(enumerate(calls))
        running = {}

        def submit() -> None:
            following = next(queue, None)
            if following is not None:
                running[task.remote(*following[1])] = following[0]

        for _ in range(workers):
            submit()
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            position = running.pop(ready)
            submit()
            try:
                result = ray.get(ready)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, NdtError):
                    raise exc.cause from None  # a user's error, not Ray's: the one line it always was
                raise
            yield position, result
    finally:
        if started_here:
            ray.shutdown()


def check_reachable(address: str) -> None:
    """Refuse a ``HOST:PORT`` cluster address whose head does not accept a TCP connection within
    :data:`CONNECT_TIMEOUT_S` (Ray itself would retry for minutes); other forms ('auto', ray://…) pass."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "/" in address or not host:
        return
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise RayError(f"--address {address}: the port must be a number from 1 to 65535")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                       "'ray start --head' (docs/simulator.md) or leave out --address to run locally") from None
