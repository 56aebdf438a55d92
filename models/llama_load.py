"""How a GGUF is loaded for exact greedy evaluation: one place for the acceptance recorder
(`calibrate.acceptance`) and the distillation labeller (`models.distill_data`), so the draft is
trained on the very logits its acceptance is later measured against."""

from __future__ import annotations

from typing import Any

CTX_ROUND = 256
"""Context sizes are rounded up to a multiple of this (same size for recorder and reference)."""

FLASH_ATTENTION = True
"""Models run with llama.cpp's flash attention: on the CPU it makes a position's logits the
same whether evaluated alone or in a batch (measured: `calibrate.acceptance`'s docstring)."""


def eos_tokens(llama: Any) -> set[int]:
    """End-of-generation token ids of a loaded `llama_cpp.Llama`: EOS, and EOT where the model
    has one."""
    tokens = {int(llama.token_eos()), int(llama._model.token_eot())}
    return {t for t in tokens if t >= 0}


__all__ = ["CTX_ROUND", "FLASH_ATTENTION", "eos_tokens"]
