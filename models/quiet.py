"""Silence what a C library prints on the process's stdout and stderr (llama.cpp logs from C,
past Python's logging), for calls whose failures surface as Python errors anyway."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def c_output_silenced() -> Iterator[None]:
    """Send file descriptors 1 and 2 to /dev/null for the block, then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


__all__ = ["c_output_silenced"]
