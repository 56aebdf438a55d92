"""DiP-SD (arXiv 2604.20919): pipelined multi-user speculative decoding with a fleet plan.

M users draft on their own devices; one server verifies them in N batches, one batch at a
time, while the other batches draft. An offline plan (the number of batches, which users share
a batch, and each user's draft length) maximises the steady-state throughput R = U / S.

Modules: `cost_model` (FLOPs, times, memory and the pipeline's period S), `plan` (a schedule
and its throughput), `optimiser` (assignment MILP alternated with Dinkelbach lengths, then a
local search), `brute_force` (the reference optimum on small systems), `autoregressive` (the
paper's AD baselines), `constants` (the paper's system), `sampling` (random small systems for
tests and benchmarks), `policy` (the edge side: draft the planned length, wait) and `turns`
(the cloud side: which waiting NAVs form the plan's next batch, for simulator and server).
"""
