"""Figures from result tables (matplotlib).

Planned in the sweeps-and-figures issue; nothing here yet.
"""
