"""CPU budget of a server (runtime/threads.py): the defaults fit the cores, render processes start
with their thread pools sized, and the choice is logged."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runtime import threads
from tests.runtime.conftest import running_server


def test_defaults_fit_the_cores():
    for cores in (1, 2, 3, 16):
        p = threads.plan(cores=cores)
        assert (p.workers, p.threads) == (cores, 1) and not p.oversubscribed
    p = threads.plan(threads=2, cores=2)
    assert (p.workers, p.threads) == (1, 2) and not p.oversubscribed
    p = threads.plan(threads=4, cores=2)                # more threads than cores asked: one process
    assert p.workers == 1 and p.oversubscribed
    assert threads.plan(workers=4, threads=1, cores=2).oversubscribed          # given numbers stay as given
    assert 1 <= threads.usable_cores() <= len(os.sched_getaffinity(0))


def test_render_process_environment(monkeypatch):
    for name in (*threads.POOL_VARIABLES, "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    one = threads.plan(threads=1, cores=2).environment()
    assert one == {name: "1" for name in threads.POOL_VARIABLES}       # a single thread never waits on another
    two = threads.plan(threads=2, cores=2).environment()
    assert two["OMP_NUM_THREADS"] == "2" and two["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")                     # the user's own setting wins
    assert "OMP_WAIT_POLICY" not in threads.plan(threads=2, cores=2).environment()
    with threads.environment({"LIPSYNC_TEST_VARIABLE": "x"}):
        assert os.environ["LIPSYNC_TEST_VARIABLE"] == "x"
    assert "LIPSYNC_TEST_VARIABLE" not in os.environ


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_server_render_processes_start_sized(packages_dir, caplog, monkeypatch):
    for name in (*threads.POOL_VARIABLES, "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO, logger="lipsync.server")
    with running_server(packages_dir, threads=1) as srv:
        workers = srv.server.pool.workers
        assert len(workers) == threads.usable_cores()
        for w in workers:
            env = _environ(w.process.pid)
            assert all(env.get(name) == "1" for name in threads.POOL_VARIABLES), {k: v for k, v in env.items() if "THREAD" in k or "OMP" in k}
            assert "OMP_WAIT_POLICY" not in env
        assert "OMP_NUM_THREADS" not in os.environ                       # the server's own environment is as it was
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rendering with ")]
    assert lines == [f"rendering with {len(workers)} render process{'es' if len(workers) > 1 else ''} x 1 thread "
                     f"on {threads.usable_cores()} usable core{'s' if threads.usable_cores() > 1 else ''}"]


def test_oversubscription_is_warned(packages_dir, caplog):
    caplog.set_level(logging.WARNING, logger="lipsync.server")
    cores = threads.usable_cores()
    with running_server(packages_dir, workers=1, threads=cores + 1):
        pass
    assert any("more threads than the" in r.getMessage() for r in caplog.records)
