"""Validation: a scenario on the real testbed and in the simulator, compared (`validate`,
`revalidate`), and the profile re-measured just before a real run (`recalibrate`).

The top of the house below the command line: it uses `calibrate` and `realrun`; only `pipesd`
imports it.
"""
