"""Constants the command line needs without loading matplotlib (so `pipesd run` starts fast)."""

FORMATS = ("png", "pdf", "svg")
"""File formats `pipesd figures --format` accepts."""

DEFAULT_ROUNDS = 4
"""Answers shown in the Gantt chart unless --rounds says otherwise."""
