"""Where simulations run: in this process, on local worker processes, or on a Ray cluster.

Every backend takes picklable tasks and a top-level function and yields (task, outcome) pairs
as they complete; the simulation is deterministic under its seed, so the backend changes
where and in which order results arrive, never what they are.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol, TypeVar

from simulator.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")


class Backend(Protocol):
    """Runs `fn(task)` for every task, yielding results as they complete."""

    def map_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[T, R]]:
        """Yield (task, fn(task)) pairs in completion order."""


class InlineBackend:
    """One task after the other in this process (`--jobs 1`)."""

    def map_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[T, R]]:
        for task in tasks:
            yield task, fn(task)


PARENT_POLL_S = 0.5
"""How often a worker checks that the process that started it is still alive."""


def _die_with_parent(parent_pid: int) -> None:
    """Worker initialiser: ignore Ctrl-C (the parent handles it and stops the pool) and exit
    as soon as the parent is gone, even when it was killed with SIGKILL and could not say so:
    on Linux the kernel sends SIGKILL (PR_SET_PDEATHSIG), elsewhere a daemon thread notices
    the parent's pid change."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): the signal this process gets when its parent exits."""


class ProcessBackend:
    """A pool of local worker processes; at most `jobs` tasks in flight.

    Workers ignore SIGINT and die with their parent; when the parent stops early (Ctrl-C, an
    error) it cancels what is queued and terminates the workers rather than waiting for them.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs

    def map_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[T, R]]:
        pending = list(reversed(tasks))
        pool = ProcessPoolExecutor(
            max_workers=self.jobs, initializer=_die_with_parent, initargs=(os.getpid(),)
        )
        running: dict[Future[R], T] = {}
        finished = False
        try:
            while pending or running:
                while pending and len(running) < 2 * self.jobs:
                    task = pending.pop()
                    running[pool.submit(fn, task)] = task
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()
            finished = True
        finally:
            if finished:
                pool.shutdown(wait=True)
            else:
                _stop(pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel everything queued and terminate the workers now (they may be mid-simulation)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=5)


class RayBackend:
    """Tasks as Ray remote calls, on a local Ray instance or the cluster at `address`."""

    def __init__(self, address: str | None, num_cpus: int | None = None) -> None:
        try:
            import ray  # optional (extra 'ray')
        except ImportError:
            raise ConfigError(
                "--backend", "ray", "Ray is not installed (pip install 'pipesd-kit[ray]')"
            ) from None
        self._ray = ray
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                options["address"] = address
            else:
                options["num_cpus"] = num_cpus or os.cpu_count() or 1
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError("--address", address or "", f"cannot start Ray ({exc})") from None

    def map_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[T, R]]:
        ray = self._ray
        remote = ray.remote(fn)
        refs = {remote.remote(task): task for task in tasks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                yield refs.pop(ref), ray.get(ref)


def make_backend(name: str, jobs: int, address: str | None) -> Backend:
    """The backend named on the command line."""
    if name == "ray":
        return RayBackend(address, num_cpus=jobs)
    if jobs <= 1:
        return InlineBackend()
    return ProcessBackend(jobs)
