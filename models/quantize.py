"""Quantised copies of a GGUF model through llama.cpp's own quantiser (`llama_model_quantize`).

`quantize_gguf(source, out, file_type)` re-quantises every weight of `source` to `file_type`
("Q4_0", "Q2_K", "F16", ...; `FILE_TYPES` lists them) with llama.cpp's default rules (which
keep some tensors at higher precision). A source that is itself quantised (SmolLM2's Q4_1) is
dequantised then quantised again (`allow_requantize`); "F16" dequantises it. Note that k-quants
(Q2_K, Q3_K_S, ...) work on rows of 256 values: SmolLM2's 576-wide rows are not, so llama.cpp
falls back to a 32-value type for those tensors (it prints how many); the file still differs
from the source and is measured as it is.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from models.quiet import c_output_silenced

FILE_TYPES = (
    "F16",
    "Q8_0",
    "Q5_1",
    "Q5_0",
    "Q4_1",
    "Q4_0",
    "IQ4_NL",
    "Q4_K_S",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
)
"""Target file types `quantize_gguf` accepts (llama.cpp's LLAMA_FTYPE_MOSTLY_<name>)."""


def quantize_gguf(source: Path, out: Path, file_type: str, threads: int = 1) -> Path:
    """Write `out`: `source` re-quantised to `file_type` (module docstring). ValueError naming
    the problem for an unknown type, a missing source or a failed quantisation. Returns `out`.
    Needs llama-cpp-python. llama.cpp's per-tensor log goes to /dev/null."""
    # llama_cpp is heavy and optional: imported only when a file is quantised.
    import llama_cpp

    source, out = Path(source), Path(out)
    if file_type not in FILE_TYPES:
        raise ValueError(
            f"quantize_gguf: unknown file type {file_type!r} (allowed: {', '.join(FILE_TYPES)})"
        )
    if not source.is_file():
        raise ValueError(f"quantize_gguf: source {source} is not a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.allow_requantize = True
    params.nthread = threads
    with c_output_silenced():
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(out).encode(), ctypes.byref(params)
        )
    if status != 0 or not out.is_file():
        raise ValueError(
            f"quantize_gguf: llama.cpp failed to quantise {source.name} to {file_type}"
        )
    return out


__all__ = ["FILE_TYPES", "quantize_gguf"]
