"""Figures from result folders and from the policy models (matplotlib, Agg, no pyplot).

`pipesd figures RUN_DIR ...` (figures.cli) draws what each run has data for; figures.build
lists them. One module per figure: sweeps (TPT and speedup vs uplink or edge compute), energy,
timeline (Gantt), trace (S4), validation (sim vs real), dipsd_users, picospec_topk; load reads
run folders, style holds the palette and saving, readme regenerates docs/figures/.
"""
