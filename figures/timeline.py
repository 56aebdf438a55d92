"""Gantt chart of the first rounds of one request: drafting, uplink, cloud, downlink, results.

One panel per timeline (a policy's simulated timeline, or a testbed's with the same columns,
drawn on top). Lanes run top to bottom in the order a token travels. Each processed
answer is marked with its "a/m accepted" label, hollow when the cloud rejected a draft token,
and the draft tokens that did not become output (rejected, or drafted past a rejection and
thrown away) are hatched.
All panels share the time axis, so their rounds compare directly.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from figures.load import Run, TimelineFile, read_timeline
from figures.options import DEFAULT_ROUNDS
from figures.style import GREY, new_figure, policy_colour, themed
from simulator.errors import ConfigError
from simulator.records import Span

LANES = ("draft", "uplink", "cloud", "downlink", "result")
LANE_TITLES = {
    "draft": "edge drafts",
    "uplink": "uplink",
    "cloud": "cloud",
    "downlink": "downlink",
    "result": "answers",
}
DEFAULT_POLICIES = ("pipesd", "vanilla")

ACCEPTED = re.compile(r"(?P<accepted>\d+)/(?P<drafted>\d+)")
LABEL_POINTS = 6.5
CHAR_FRACTION = 0.55 * LABEL_POINTS / 450
"""Mean width of one label character as a fraction of the axes (about 450 pt wide)."""
BAR_HEIGHT = 0.62
NEUTRAL = "#444444"
"""Legend swatches and the testbed panel: each simulated panel uses its policy's colour."""
PREFILL = "#BBBBBB"
MIN_WIDTH_FRACTION = 0.003
"""Spans shorter than this fraction of the window (answers, tiny downlinks) stay visible."""


@dataclass(frozen=True)
class Panel:
    """One Gantt panel: a title, its colour and the spans of the request's first rounds."""

    title: str
    colour: str
    spans: tuple[Span, ...]
    origin_s: float
    duration_s: float


def choose_timelines(run: Run, wanted: Sequence[str] | None = None) -> list[TimelineFile]:
    """One timeline per policy label: the first sweep point and the first seed.

    Without `wanted`: pipesd and vanilla where present, else the first label with a timeline.
    """
    files = run.timelines()
    if not files:
        problem = "no timeline files (run `pipesd run ... --timeline`)"
        raise ConfigError(run.path / "timelines", "", problem)
    first_point = min(f.point for f in files)
    by_label: dict[str, TimelineFile] = {}
    for item in files:
        if item.point == first_point and item.label not in by_label:
            by_label[item.label] = item
    if wanted:
        missing = [label for label in wanted if label not in by_label]
        if missing:
            have = ", ".join(by_label)
            raise ConfigError(
                "--timeline-policies", "", f"no timeline for {missing[0]!r} (have: {have})"
            )
        return [by_label[label] for label in wanted]
    chosen = [by_label[label] for label in DEFAULT_POLICIES if label in by_label]
    return chosen or [next(iter(by_label.values()))]


def first_rounds(spans: Sequence[Span], rounds: int) -> tuple[list[Span], float, float]:
    """The spans of the first request (lowest index, first edge) up to the end of its
    `rounds`-th processed answer (all of it when it has fewer), with the window's origin and
    length in seconds."""
    if not spans:
        raise ValueError("empty timeline")
    edge = min(s.edge for s in spans)
    request = min(s.request for s in spans if s.edge == edge)
    mine = sorted((s for s in spans if s.edge == edge and s.request == request), key=_start)
    origin = mine[0].start_s
    results = [s for s in mine if s.lane == "result"]
    end = results[rounds - 1].end_s if len(results) >= rounds else max(s.end_s for s in mine)
    return [s for s in mine if s.start_s <= end], origin, max(end - origin, 1e-9)


def _start(span: Span) -> float:
    return span.start_s


def discarded_drafts(spans: Sequence[Span]) -> set[int]:
    """Indices (into `spans`) of draft tokens that did not become output: rejected by an
    answer ("a/m accepted" with a < m: positions first + a .. last - 1), or drafted again
    later (thrown away after a rejection, or dropped before verification)."""
    latest: dict[int, int] = {}
    discarded = set()
    for i, span in sorted(enumerate(spans), key=lambda item: item[1].start_s):
        if span.lane == "draft":
            if span.first in latest:
                discarded.add(latest[span.first])
            latest[span.first] = i
        elif span.lane == "result" and (match := ACCEPTED.match(span.label)):
            rejected = range(span.first + int(match["accepted"]), span.last)
            discarded.update(latest[p] for p in rejected if p in latest)
    return discarded


def make_panel(title: str, colour: str, spans: Sequence[Span], rounds: int) -> Panel:
    """Cut a timeline to its first request's first `rounds` answers, titled with the tokens
    those answers committed when their labels say it ("a/m accepted": a + 1 tokens)."""
    if not spans:
        raise ValueError(f"{title}: the timeline has no spans")
    window, origin, duration = first_rounds(spans, rounds)
    results = [s for s in window if s.lane == "result"]
    counts = [ACCEPTED.match(s.label) for s in results]
    summary = f"{len(results)} answers in {duration * 1e3:.0f} ms"
    if results and all(counts):
        tokens = sum(int(m["accepted"]) + 1 for m in counts if m)
        summary = f"{len(results)} answers, {tokens} tokens in {duration * 1e3:.0f} ms"
    return Panel(f"{title}: {summary}", colour, tuple(window), origin, duration)


def _draw(ax: Axes, panel: Panel, window_s: float) -> None:
    min_width = MIN_WIDTH_FRACTION * window_s * 1e3
    lane_y = {lane: len(LANES) - 1 - i for i, lane in enumerate(LANES)}
    spans = list(panel.spans)
    discarded = discarded_drafts(spans)
    texts = _answer_texts(spans, window_s)
    stagger = 0
    for i, span in enumerate(spans):
        if span.lane not in lane_y:
            continue
        y = lane_y[span.lane]
        start = (span.start_s - panel.origin_s) * 1e3
        width = max((span.end_s - span.start_s) * 1e3, min_width)
        if span.lane == "result":
            rejected = _rejected(span.label)
            ax.plot(
                start,
                y,
                marker="v",
                markersize=6,
                color=panel.colour,
                markerfacecolor="white" if rejected else panel.colour,
                linestyle="",
            )
            ax.axvline(start, color=GREY, linewidth=0.5, linestyle=":", zorder=0)
            offset = 0.22 if stagger % 2 == 0 else -0.22
            stagger += 1
            text = texts[i]
            ax.text(start + min_width, y + offset, text, va="center", fontsize=LABEL_POINTS)
            continue
        face, alpha, hatch = panel.colour, 1.0, ""
        if span.lane == "draft" and i in discarded:
            face, hatch = "white", "/////"
        elif span.lane == "uplink" and span.label != "NAV":
            alpha = 0.45
        elif span.lane == "cloud" and span.label != "NAV":
            face = PREFILL
        ax.broken_barh(
            [(start, width)],
            (y - BAR_HEIGHT / 2, BAR_HEIGHT),
            facecolors=face,
            edgecolors=panel.colour if face == "white" else "white",
            linewidth=0.4,
            alpha=alpha,
            hatch=hatch,
        )
    ax.set_yticks([lane_y[lane] for lane in LANES], [LANE_TITLES[lane] for lane in LANES])
    ax.set_ylim(-0.7, len(LANES) - 0.4)
    ax.grid(axis="y", visible=False)
    ax.set_title(panel.title, loc="left", fontsize=9)


def _answer_texts(spans: Sequence[Span], window_s: float) -> dict[int, str]:
    """The text beside each answer marker: its full label ("2/4 accepted") when the answers
    are far enough apart for it (labels alternate between two rows), "2/4" when only that
    fits, nothing when even that would overlap."""
    answers = sorted((s.start_s, i) for i, s in enumerate(spans) if s.lane == "result")
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(answers)]
    room = 2 * min(gaps, default=window_s) / window_s
    texts = {}
    for _, i in answers:
        label = spans[i].label
        short = match[0] if (match := ACCEPTED.match(label)) else label
        for text in (label, short, ""):
            if (len(text) + 1) * CHAR_FRACTION <= room:
                break
        texts[i] = f" {text}" if text else ""
    return texts


def _rejected(label: str) -> bool:
    match = ACCEPTED.match(label)
    return bool(match) and int(match["accepted"]) < int(match["drafted"])


def _legend_handles() -> list[Patch | Line2D]:
    colour = NEUTRAL
    return [
        Patch(facecolor=colour, edgecolor="white", label="draft, NAV upload, verify, answer"),
        Patch(facecolor=colour, alpha=0.45, label="token batch upload (pipelined)"),
        Patch(facecolor="white", edgecolor=colour, hatch="/////", label="draft not kept"),
        Patch(facecolor=PREFILL, label="cloud prefill or decode step"),
        Line2D([], [], marker="v", color=colour, linestyle="", label="answer: all accepted"),
        Line2D(
            [],
            [],
            marker="v",
            color=colour,
            markerfacecolor="white",
            linestyle="",
            label="answer: a draft rejected",
        ),
    ]


@themed
def timeline_figure(
    run: Run | None,
    policies: Sequence[str] | None = None,
    rounds: int = DEFAULT_ROUNDS,
    real_timeline: Path | None = None,
) -> Figure:
    """Gantt panels of the first `rounds` answers of one request, one per policy timeline of
    `run` (see `choose_timelines`), and the testbed's `real_timeline` CSV above them (alone
    when the run has no timelines and no `policies` were asked for)."""
    if rounds < 1:
        raise ConfigError("--rounds", "", f"must be at least 1 (got {rounds})")
    panels: list[Panel] = []
    if real_timeline is not None:
        spans = read_timeline(real_timeline)
        if not spans:
            raise ConfigError(real_timeline, "", "no rows")
        panels.append(make_panel(f"testbed ({real_timeline.name})", NEUTRAL, spans, rounds))
    if run is not None and (run.timelines() or real_timeline is None or policies):
        for item in choose_timelines(run, policies):
            spans = read_timeline(item.path)
            if not spans:
                raise ConfigError(item.path, "", "no rows")
            title = f"{item.label} (simulated, seed {item.seed})"
            panels.append(make_panel(title, policy_colour(item.label), spans, rounds))
    if not panels:
        raise ConfigError("--real-timeline", "", "no run folder and no timeline given")
    window = max(p.duration_s for p in panels)
    figure = new_figure(7.2, 0.6 + 1.75 * len(panels))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        _draw(ax, panel, window)
    axes[-1].set_xlim(-0.01 * window * 1e3, window * 1.12 * 1e3)
    axes[-1].set_xlabel("time since the request's first event (ms)")
    figure.suptitle(f"First {rounds} rounds of one request", fontsize=10)
    figure.legend(handles=_legend_handles(), loc="outside lower center", ncols=3)
    return figure
