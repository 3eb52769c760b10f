"""Where units run: in this process, as Ray tasks (CPU stages), or on a pool of Ray actors holding one
model replica each (GPU stages). One interface, ``Executor.map(units) -> UnitResult``s in completion order;
they decide *where* units run, never *what* a unit does (``stage.run_unit``).

While waiting, every executor keeps the driver's ``Progress`` moving (workers' counts arrive through it).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from abc import ABC, abstractmethod
from collections import deque
from typing import Iterator, Optional

from supirkit.datapipe.config import RunnerConfig
from supirkit.datapipe.errors import ConfigError
from supirkit.datapipe.progress import Progress
from supirkit.datapipe.stage import Stage, UnitOfWork, run_unit
from supirkit.datapipe.stats import UnitResult

#: seconds the driver waits for a result before it refreshes the progress display
POLL_S = 1.0


class Executor(ABC):
    def __init__(self, cfg: RunnerConfig, progress: Progress) -> None:
        self.cfg, self.progress = cfg, progress

    def channel(self):
        """What workers report progress through (set on each unit before it is sent)."""
        return self.progress

    @abstractmethod
    def map(self, units: list[UnitOfWork]) -> Iterator[UnitResult]:
        """Run every unit; yield each one's result as it completes."""

    @staticmethod
    def _lost(unit: UnitOfWork, exc: BaseException) -> UnitResult:
        """A unit whose worker died more often than the retries allow (OOM-killed, node lost)."""
        return UnitResult(f"unit-{unit.index:06d}", unit.index, "failed", error=f"{type(exc).__name__}: {exc}",
                          error_type="worker_lost")


class LocalExecutor(Executor):
    """Units one after the other in this process (tests, debugging, small jobs; ``runner.executor=local``)."""

    def map(self, units: list[UnitOfWork]) -> Iterator[UnitResult]:
        for unit in units:
            unit.progress = self.progress
            yield run_unit(unit)


def ensure_ray(cfg: RunnerConfig) -> None:
    """Join the cluster named by ``runner.ray_address`` or ``RAY_ADDRESS``, else start a local Ray quietly.
    An address that does not answer within ``runner.connect_timeout_s`` is one line (Ray itself would retry
    for minutes without a word); the process's SIGTERM handler survives ``ray.init`` (which replaces it)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=True)
    sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if address:
        check_reachable(address, cfg.connect_timeout_s)
        ray.init(address=address, **kwargs)
    else:
        # a Ray started here serves this process only: no dashboard, no token (nothing else connects).
        # "local": never the cluster another user started on this machine (ray.init() alone would join the
        # last `ray start` it finds)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", include_dashboard=False, **kwargs)
    if sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)


def check_reachable(address: str, timeout_s: float) -> None:
    """A TCP connection to a Ray address (``host:port``, ``ray://host:port``); ``auto`` and other forms are left
    to Ray. ``ConfigError`` naming the address when nothing answers within ``timeout_s``."""
    import socket
    from urllib.parse import urlsplit

    if "://" not in address:
        if address == "auto" or ":" not in address:
            return
        address = f"tcp://{address}"
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        return
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ConfigError(f"runner.ray_address {address}: cannot reach the Ray cluster ({why}, timeout "
                          f"{timeout_s:g} s); check the address and that the head node runs") from None


def check_resources(num_cpus: float, num_gpus: float = 0.0) -> None:
    """``ConfigError`` before anything is submitted when no live node of the cluster has ``num_cpus`` CPUs
    and ``num_gpus`` GPUs: Ray would wait for such a node forever (it assumes an autoscaler may add one)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= num_cpus and r.get("GPU", 0) >= num_gpus for r in nodes):
        return
    best_cpu = max((r.get("CPU", 0) for r in nodes), default=0)
    best_gpu = max((r.get("GPU", 0) for r in nodes), default=0)
    ask = f"runner.num_cpus_per_task={num_cpus:g}" + (f" with {num_gpus:g} GPU(s) per actor" if num_gpus else "")
    raise ConfigError(f"{ask}: no node of the Ray cluster has that much (largest: {best_cpu:g} CPUs, "
                      f"{best_gpu:g} GPUs); lower it or add such a node")


class _RayExecutor(Executor):
    def __init__(self, cfg: RunnerConfig, progress: Progress) -> None:
        super().__init__(cfg, progress)
        ensure_ray(cfg)
        self._channel = progress.ray_channel()

    def channel(self):
        return self._channel

    def _wait(self, pending: dict) -> Iterator[UnitResult]:
        """Results of whatever finished within ``POLL_S``; the progress display moves in between."""
        import ray

        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        self.progress.poll()
        for ref in ready:
            unit = pending.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as exc:  # the worker died more often than the retries allow
                yield self._lost(unit, exc)


class RayTaskExecutor(_RayExecutor):
    """One Ray task per unit, at most ``runner.max_in_flight`` submitted ahead (bounds driver memory)."""

    def map(self, units: list[UnitOfWork]) -> Iterator[UnitResult]:
        import ray

        check_resources(self.cfg.num_cpus_per_task)
        remote = ray.remote(num_cpus=self.cfg.num_cpus_per_task, max_retries=self.cfg.max_retries)(run_unit)
        queue = deque(units)
        pending: dict = {}
        while queue or pending:
            while queue and len(pending) < self.cfg.max_in_flight:
                unit = queue.popleft()
                unit.progress = self._channel
                pending[remote.remote(unit)] = unit
            yield from self._wait(pending)


class RayActorExecutor(_RayExecutor):
    """A pool of actors, each set up once (a model replica per GPU), fed one unit at a time."""

    def _pool_size(self, n_units: int) -> tuple[int, float]:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        per_actor = self.cfg.num_gpus_per_actor if gpus else 0
        if self.cfg.num_actors:
            n = self.cfg.num_actors
        elif gpus and per_actor:
            n = max(1, int(gpus / per_actor))
        else:
            n = 1
        return max(1, min(n, n_units)), per_actor

    def map(self, units: list[UnitOfWork]) -> Iterator[UnitResult]:
        import ray

        if not units:
            return
        n, per_actor = self._pool_size(len(units))
        check_resources(min(self.cfg.num_cpus_per_task, 1.0), per_actor)

        @ray.remote
        class StageActor:
            def run(self, unit):
                return run_unit(unit)

        actor_cls = StageActor.options(num_gpus=per_actor, num_cpus=min(self.cfg.num_cpus_per_task, 1.0),
                                       max_restarts=self.cfg.max_retries, max_task_retries=self.cfg.max_retries)
        actors = [actor_cls.remote() for _ in range(n)]
        idle = deque(actors)
        queue = deque(units)
        pending: dict = {}
        busy: dict = {}
        try:
            while queue or pending:
                while queue and idle:
                    actor, unit = idle.popleft(), queue.popleft()
                    unit.progress = self._channel
                    ref = actor.run.remote(unit)
                    pending[ref], busy[ref] = unit, actor
                before = set(pending)
                yield from self._wait(pending)
                for ref in before - set(pending):
                    idle.append(busy.pop(ref))
        finally:
            for a in actors:
                ray.kill(a)


def executor_for(stage: Stage, cfg: RunnerConfig, progress: Progress) -> Executor:
    if cfg.executor == "local":
        return LocalExecutor(cfg, progress)
    if stage.needs_gpu:
        return RayActorExecutor(cfg, progress)
    return RayTaskExecutor(cfg, progress)


def map_tasks(fn, items: list, cfg: Optional[RunnerConfig] = None, shared: tuple = ()) -> Iterator:
    """``fn(*shared, item)`` for every item, results in item order: in this process (no ``cfg``, or
    ``runner.executor=local``), else as Ray tasks, at most ``runner.max_in_flight`` ahead. ``shared`` is put
    in the object store once (numpy arrays reach the tasks of a node without a copy). For work that is
    neither a unit nor resumable on its own: the per-bucket steps of a job's global grouping."""
    if cfg is None or cfg.executor == "local":
        for item in items:
            yield fn(*shared, item)
        return
    import ray

    ensure_ray(cfg)
    remote = ray.remote(num_cpus=cfg.num_cpus_per_task, max_retries=cfg.max_retries)(fn)
    refs = [ray.put(x) for x in shared]
    queue, pending = deque(items), deque()
    while queue or pending:
        while queue and len(pending) < cfg.max_in_flight:
            pending.append(remote.remote(*refs, queue.popleft()))
        yield ray.get(pending.popleft())


__all__ = ["Executor", "LocalExecutor", "RayTaskExecutor", "RayActorExecutor", "executor_for", "ensure_ray",
           "map_tasks", "check_reachable", "check_resources"]
