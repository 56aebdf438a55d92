"""Writes S4's bandwidth traces: a new level every 20 s for 600 s, uniformly drawn with a fixed
seed, uplink in [10, 80] Mbit/s and downlink in [150, 280] Mbit/s.

Run from this folder: `python make_s4_traces.py` (the committed CSVs are its output).
"""

import numpy as np

STEP_S, DURATION_S, SEED = 20.0, 600.0, 4


def write(path: str, low: float, high: float, rng: np.random.Generator) -> None:
    """One trace file with columns t_s, mbps."""
    times = np.arange(0.0, DURATION_S, STEP_S)
    levels = rng.uniform(low, high, size=len(times))
    with open(path, "w") as handle:
        handle.write("t_s,mbps\n")
        for t, mbps in zip(times, levels, strict=True):
            handle.write(f"{t:.0f},{mbps:.1f}\n")


if __name__ == "__main__":
    generator = np.random.default_rng(SEED)
    write("s4_uplink.csv", 10.0, 80.0, generator)
    write("s4_downlink.csv", 150.0, 280.0, generator)
