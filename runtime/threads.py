"""CPU budget: how many render processes and torch threads a server runs, and how they wait.

The server renders in processes (runtime/workers.py), each with its own torch, OpenMP,
OpenBLAS and OpenCV thread pools. Left to themselves, each pool takes every core, so
``workers`` processes on ``c`` cores run ``workers x c`` busy threads. Worse, torch's OpenMP
threads spin while they wait for each other: when another process holds one of the cores a
parallel region needs, the others spin until the scheduler brings the missing thread back.
Measured on 2 cores with one core busy-looping elsewhere: the neural tier at 2 torch threads
took 1.6x its 1-thread time per frame with the default spin-wait, and 27x on a busier machine
(issue 23), against 1.1x with a passive wait (benchmarks/test_neural_bench.py).

So, by default:

* every render process uses 1 thread for torch, OpenMP, BLAS and OpenCV alike;
* there are as many render processes as usable cores (the CPU affinity mask, and a cgroup
  CPU quota where one is set, as in a container);
* a process given more than one thread waits passively (``OMP_WAIT_POLICY=PASSIVE``), which
  holds up under load and gives up the spin's gain on an idle machine.

Variables already set in the environment win (``OMP_WAIT_POLICY=ACTIVE`` on a machine that
runs nothing else). :func:`plan` says what was chosen; the server logs it at start-up.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lipsync.threads")

# The thread pools a render process may start, each sized by its own variable before it loads.
POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_environ_lock = threading.Lock()


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclass(frozen=True)
class Plan:
    """Render processes and threads for one server."""

    workers: int
    threads: int
    cores: int

    @property
    def oversubscribed(self) -> bool:
        return self.workers * self.threads > self.cores

    def environment(self) -> dict[str, str]:
        """The variables each render process starts with (those already set are left alone)."""
        env = {name: str(self.threads) for name in POOL_VARIABLES}
        if self.threads > 1:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        return {k: v for k, v in env.items() if k not in os.environ}

    def describe(self) -> str:
        wait = os.environ.get("OMP_WAIT_POLICY") or ("PASSIVE" if self.threads > 1 else "")
        return (f"{self.workers} render process{'es' if self.workers != 1 else ''} x {self.threads} "
                f"thread{'s' if self.threads != 1 else ''} on {self.cores} usable core{'s' if self.cores != 1 else ''}"
                + (f", OpenMP wait {wait.lower()}" if wait else ""))


def plan(workers: int | None = None, threads: int | None = None, cores: int | None = None) -> Plan:
    """What to run: given numbers as they are, the rest fitted to the cores (never more threads than cores)."""
    cores = cores or usable_cores()
    threads = threads or 1
    if workers is None:
        workers = max(1, cores // threads)
    return Plan(workers=workers, threads=threads, cores=cores)


@contextmanager
def environment(env: dict[str, str]):
    """Set ``env`` in os.environ while a child process starts (it inherits the environment)."""
    with _environ_lock:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def limit_this_process(threads: int) -> None:
    """Size the pools a running process has already loaded (OpenCV's; torch's when imported)."""
    import sys

    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
