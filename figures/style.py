"""Look of every figure: a colour-blind-safe palette with one fixed colour per policy, print-sized
fonts, and saving to PNG/PDF/SVG at 150 dpi without touching matplotlib's global state.

Colours are Okabe & Ito's palette (black, orange, sky blue, bluish green, blue, vermillion,
reddish purple) plus Paul Tol's muted colours for policies beyond those; each policy also has
its own marker, so lines stay apart in greyscale. The same label gets the same colour in every
figure: known labels are fixed here, any other label takes an extra colour chosen by a hash of
its name (stable across runs).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import ParamSpec

import matplotlib as mpl
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from figures.options import FORMATS
from simulator.errors import ConfigError

DPI = 150

METADATA: dict[str, dict[str, None] | None] = {
    "png": None,
    "pdf": {"CreationDate": None},
    "svg": {"Date": None},
}
"""No creation dates in PDF/SVG files, so the same inputs give the same bytes."""

BLACK = "#000000"
GREY = "#777777"
ORANGE = "#E69F00"
SKY_BLUE = "#56B4E9"
GREEN = "#009E73"
BLUE = "#0072B2"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
WINE = "#882255"
OLIVE = "#999933"
EXTRA = ("#332288", "#44AA99", "#117733", "#AA4499", "#88CCEE", "#DDCC77", "#661100")
"""Paul Tol's muted/bright colours not used by a known policy: indigo, teal, green, purple,
cyan, sand, brown."""


@dataclass(frozen=True)
class LineStyle:
    """How one policy is drawn: colour, marker, line style, width and stacking order."""

    color: str
    marker: str
    linestyle: str = "-"
    linewidth: float = 1.6
    zorder: float = 2.0

    def kwargs(self) -> dict[str, object]:
        """Keyword arguments for `Axes.plot`."""
        return {
            "color": self.color,
            "marker": self.marker,
            "linestyle": self.linestyle,
            "linewidth": self.linewidth,
            "zorder": self.zorder,
        }


POLICY_STYLES: dict[str, LineStyle] = {
    "cloud_ar": LineStyle(GREY, "", ":", 1.8, 1.5),
    "oracle": LineStyle(BLACK, "", "--", 1.4, 1.5),
    "vanilla": LineStyle(BLUE, "o"),
    "hsl": LineStyle(SKY_BLUE, "s"),
    "edgellm": LineStyle(GREEN, "^"),
    "pmin": LineStyle(ORANGE, "v"),
    "hf_heuristic": LineStyle(PURPLE, "D"),
    "pipesd": LineStyle(VERMILLION, "o", "-", 2.4, 3.0),
    "picospec": LineStyle(WINE, "P"),
    "dipsd": LineStyle(OLIVE, "X"),
    "pipesd-no-pipeline": LineStyle(EXTRA[0], "<"),
    "pipesd-fixed-batch": LineStyle(EXTRA[1], ">"),
    "pipesd-token-only": LineStyle(EXTRA[2], "h"),
    "pipesd-sequence-only": LineStyle(EXTRA[3], "p"),
    "pipesd-no-autotune": LineStyle(EXTRA[4], "*"),
}
EXTRA_MARKERS = ("<", ">", "h", "p", "*", "d", "8")

ENERGY_COLOURS = {"cloud": BLUE, "edge": ORANGE, "radio": GREEN}
"""Energy components (stacked bars): cloud GPU, edge device, radio."""
ENERGY_HATCHES = {"cloud": "", "edge": "//", "radio": ".."}

RC: dict[str, object] = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.markersize": 4.5,
    "hatch.linewidth": 0.6,
    "pdf.fonttype": 42,
    "svg.fonttype": "none",
    "axes.prop_cycle": cycler(color=[BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY_BLUE, BLACK]),
}


def policy_style(label: str) -> LineStyle:
    """The fixed style of a policy label; unknown labels get a hashed extra colour and marker."""
    known = POLICY_STYLES.get(label)
    if known is not None:
        return known
    index = zlib.crc32(label.encode())
    return LineStyle(EXTRA[index % len(EXTRA)], EXTRA_MARKERS[index % len(EXTRA_MARKERS)])


def policy_colour(label: str) -> str:
    """The colour of a policy label (see `policy_style`)."""
    return policy_style(label).color


@contextmanager
def theme() -> Iterator[None]:
    """Apply the figure style for the duration of the block (matplotlib's globals restored)."""
    with mpl.rc_context(RC):
        yield


P = ParamSpec("P")


def themed(make: Callable[P, Figure]) -> Callable[P, Figure]:
    """Decorator: build the figure under `theme()`."""

    @wraps(make)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with theme():
            return make(*args, **kwargs)

    return wrapper


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure drawn by the Agg backend, independent of pyplot's global figure manager."""
    figure = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plain_log(ax: Axes, axis: str = "y", subs: Sequence[float] = (1.0, 2.0, 5.0)) -> None:
    """Make `axis` ("x" or "y") logarithmic, ticked at `subs` x 10^k with plain numbers."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(subs=subs))
    target.set_major_formatter(FormatStrFormatter("%g"))
    target.set_minor_formatter(NullFormatter())


def parse_formats(text: str) -> tuple[str, ...]:
    """`png,pdf` -> ("png", "pdf"); unknown or empty lists raise ConfigError."""
    formats = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if not formats:
        raise ConfigError("--format", "", f"no format given (got {text!r})")
    for fmt in formats:
        if fmt not in FORMATS:
            allowed = ", ".join(FORMATS)
            raise ConfigError("--format", "", f"unknown format {fmt!r} (allowed: {allowed})")
    return formats


def save(figure: Figure, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """Write `figure` as OUT_DIR/STEM.<format> for each format; returns the paths written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = f"cannot create folder {str(out_dir)!r} ({exc.strerror})"
        raise ConfigError("--out", "", problem) from None
    written = []
    with theme():
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            figure.savefig(path, format=fmt, metadata=METADATA[fmt])
            written.append(path)
    return written
