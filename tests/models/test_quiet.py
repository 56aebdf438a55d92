"""models.quiet: C-level output is dropped inside the block and restored after it."""

from __future__ import annotations

import os

import pytest

from models.quiet import c_output_silenced


def test_output_on_both_descriptors_is_dropped_then_restored(capfd) -> None:
    with c_output_silenced():
        os.write(1, b"from C on stdout\n")
        os.write(2, b"from C on stderr\n")
    os.write(2, b"after\n")
    out, err = capfd.readouterr()
    assert out == "" and err == "after\n"


def test_descriptors_are_restored_when_the_block_raises(capfd) -> None:
    with pytest.raises(RuntimeError), c_output_silenced():
        raise RuntimeError("failed")
    os.write(1, b"still here\n")
    assert capfd.readouterr().out == "still here\n"
