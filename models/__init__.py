"""Model files and shapes: the model registry, the papers' shapes, random-weight and distilled
GGUFs, truncation, draft/target pairs and prompts.

A ground package: it imports nothing of ours but `simulator.errors` and `simulator.provenance`,
so the simulator, the testbed and the calibration can all use it.
"""
