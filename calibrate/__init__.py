"""Calibration: measure the draft, the target, the link, the payload, power and acceptance on
this machine and assemble them into a profile file.

Library first: `calibrate.measure` (and `measure_target`, `measure_link`) take the typed options
of `calibrate.options` and return parts; `calibrate.cli` only parses flags into those. Sits above
`realrun` (it measures the testbed's own served path) and below `validation`.
"""
