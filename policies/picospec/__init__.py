"""PicoSpec: an asynchronous edge-cloud draft/verify pipeline with sparse verification answers.

The edge drafts block k+1 while block k is verified and keeps it only if block k survives
whole; blocks are truncated early when drafting would leave the cloud idle. The cloud answers
with the top-K of its distribution at each verified position, and the edge accepts, rejects
and resamples locally. Modules: `policy` (the edge's pipeline and truncation) and
`sparse_verify` (the sparse rejection sampling and what K costs in distribution error).
"""
