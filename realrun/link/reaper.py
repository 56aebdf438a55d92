"""A watchdog that removes a run's network namespaces once the run's process is gone.

`start_reaper()` spawns `python -m realrun.link.reaper PID` in a session of its own, with a
pipe as its stdin whose write end only the run holds. When the run exits in any way (done,
Ctrl-C, a crash, SIGKILL) the pipe closes, and the reaper deletes every `pipesd-<PID>-*`
namespace (realrun.link.netns names them so) and exits. Processes the run started die with
it (`die_with_parent`: Linux's parent-death signal), so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

from realrun.link.netns import PREFIX, LinkSetupError, namespaces, run

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A Popen `preexec_fn`: the child gets SIGKILL when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def delete_namespaces_of(pid: int) -> list[str]:
    """Delete the namespaces of run `pid` (`pipesd-<pid>-*`); their names."""
    removed = []
    for name in namespaces():
        if name.startswith(f"{PREFIX}{pid}-"):
            with contextlib.suppress(LinkSetupError):
                run("ip", "netns", "delete", name)
                removed.append(name)
    return removed


def start_reaper() -> subprocess.Popen[bytes]:
    """Start the watchdog of this process (see the module docstring)."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "realrun.link.reaper", str(os.getpid())],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C does not reach it; it outlives a killed run
    )
    os.close(read_end)
    os.set_inheritable(write_end, False)
    process._pipesd_pipe = write_end  # type: ignore[attr-defined]  # closed when we die
    return process


def stop_reaper(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Let the watchdog clean up now (the run is done with its namespaces) and reap it."""
    with contextlib.suppress(OSError):
        os.close(process._pipesd_pipe)  # type: ignore[attr-defined]
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    """Wait for stdin's end (the run is gone), then delete its namespaces."""
    pid = int(sys.argv[1])
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    delete_namespaces_of(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
