"""Calibration: profiles real draft and target models, the link and power into a profile file.

Planned in the calibration issue; nothing here yet.
"""
