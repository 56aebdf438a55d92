"""Baseline policies the papers' mechanisms are compared against.

`fixed` (cloud-only autoregressive decoding, Vanilla stop-and-wait speculative decoding with a
fixed draft length, HSL and EdgeLLM), `adaptive` (llama.cpp's p_min rule and Hugging Face's
heuristic draft-length schedule) and `oracle` (the best schedule that knows every acceptance
outcome in advance).
"""
