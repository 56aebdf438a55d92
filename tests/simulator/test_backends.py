"""Local worker processes die with their parent and stay quiet on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from simulator.backends import InlineBackend, ProcessBackend

pytestmark = pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX signals")

PARENT = textwrap.dedent(
    """
    import os, sys, time
    from simulator.backends import ProcessBackend

    def slow(task):
        (__import__("pathlib").Path(sys.argv[1]) / str(os.getpid())).touch()
        time.sleep(120)
        return task

    for _ in ProcessBackend(2).map_unordered(slow, list(range(4))):
        pass
    """
)


def square(x: int) -> int:
    return x * x


def test_process_backend_returns_every_result() -> None:
    tasks = list(range(7))
    assert sorted(ProcessBackend(2).map_unordered(square, tasks)) == [(x, x * x) for x in tasks]
    assert list(InlineBackend().map_unordered(square, tasks[:2])) == [(0, 0), (1, 1)]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_workers_die_when_their_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)])
    try:
        assert wait_for(lambda: len(list(tmp_path.iterdir())) == 2, 30), "workers never started"
        workers = [int(p.name) for p in tmp_path.iterdir()]
        assert all(alive(pid) for pid in workers)
        parent.kill()  # SIGKILL: the parent has no chance to stop its pool
        parent.wait(timeout=10)
        assert wait_for(lambda: not any(alive(pid) for pid in workers), 5), "workers outlived it"
    finally:
        parent.kill()
        for path in tmp_path.iterdir():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(path.name), signal.SIGKILL)


def test_ctrl_c_with_workers_prints_one_line(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(
        policies=[{"name": "vanilla"}, {"name": "pipesd", "autotune": False}],
        seeds=list(range(1, 41)),
        prompts={"count": 50, "prompt_len": 64, "max_new_tokens": 256},
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipesd.cli", "run", str(path), "--out", str(out)]
    run = subprocess.Popen(
        [*command, "--jobs", "2", "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # and Ctrl-C's default action, as in a terminal: a suite started as a background job
        # (`cmd &` in a script) hands its children SIGINT ignored, and the run would finish
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert wait_for(lambda: any((out / "parts").glob("*.json")), 60), "no task finished"
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does: the whole group gets SIGINT
        err = run.communicate(timeout=30)[1]
    finally:
        run.kill()
    assert run.returncode == 130
    assert err.splitlines() == [
        "pipesd: interrupted; finished simulations are kept: rerun with --resume"
    ]
    leftover = subprocess.run(["pgrep", "-g", str(run.pid)], capture_output=True, text=True)
    assert leftover.stdout == "", "workers outlived the interrupted run"
