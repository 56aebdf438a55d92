"""PipeSD: pipelined cloud-edge speculative decoding with a dual-threshold verify trigger.

The edge uploads its draft in token batches while it keeps drafting (the batch sizes come from
a dynamic programme over the measured upload and drafting costs), and asks for verification
(a NAV) when the draft's sequence confidence (the product of its token confidences) falls below
R1 or one token's confidence falls below R2. With proactive drafting it keeps drafting while a
NAV is pending. (R1, R2) are tuned online by Bayesian optimisation of the time per token.

Modules: `policy` (the edge's decisions and the online tuning loop), `batch_plan` (the batch
DP), `estimators` (online α, β, γ and N̂ estimates) and `autotune` (the (R1, R2) tuner).
"""
