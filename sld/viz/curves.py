"""Training curves from run folders' ``metrics.jsonl`` (written by ``sld.training.fit``).

Every row has a ``step``; training rows carry ``train/<term>`` (averaged over the log interval) and
``lr``, evaluation rows carry ``eval/<metric>``. One small panel per metric, with every run overlaid
(one colour per run, a shared legend); evaluation metrics are drawn with markers since they are few.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from sld.errors import UserError
from sld.run_log import METRICS_FILE, read_metrics
from sld.viz.figures import new_figure

__all__ = [
    "METRICS_FILE",
    "CurvesResult",
    "Series",
    "collect_series",
    "curves_figure",
    "plot_curves",
    "read_metrics",
    "run_labels",
]

DEFAULT_PREFIXES: tuple[str, ...] = ("train/", "eval/")


def run_labels(runs: Sequence[str | Path]) -> list[str]:
    """Short distinct legend labels for run folders: the folder name, with parents added until unique."""
    paths = [Path(r) for r in runs]
    paths = [p.parent if p.name == METRICS_FILE else p for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) or str(p) for p in paths]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in paths):
            return labels
        depth += 1


@dataclass
class Series:
    """One metric of one run: x = steps, y = values (rows without the metric are skipped)."""

    run: str
    metric: str
    steps: list[float]
    values: list[float]


X_AXES = {"step": ("step", 1.0, "step"), "minutes": ("time/seconds", 1 / 60, "wall minutes")}


def collect_series(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    prefixes: Sequence[str] = DEFAULT_PREFIXES,
    exclude: Sequence[str] = (),
    x: str = "step",
) -> dict[str, list[Series]]:
    """metric -> one ``Series`` per run that logged it, for every key starting with one of ``prefixes``.

    Metrics come in first-seen order; ``exclude`` drops exact keys. Non-numeric and non-finite
    values are skipped. ``x``: ``"step"``, or ``"minutes"`` (the row's ``time/seconds`` / 60, the
    run's wall time; rows without it are skipped).
    """
    if x not in X_AXES:
        raise UserError(f"curves.x must be one of {', '.join(X_AXES)}, got {x!r}")
    x_key, x_scale, _ = X_AXES[x]
    found: dict[str, dict[str, Series]] = {}
    for run, rows in runs.items():
        for row in rows:
            if not isinstance(row.get(x_key), (int, float)):
                continue
            for key, value in row.items():
                if (
                    key in ("step", "time/seconds")
                    or key in exclude
                    or not any(key.startswith(p) for p in prefixes)
                ):
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                series = found.setdefault(key, {}).setdefault(run, Series(run, key, [], []))
                series.steps.append(float(row[x_key]) * x_scale)
                series.values.append(float(value))
    return {metric: list(by_run.values()) for metric, by_run in found.items()}


def plot_curves(
    series: Mapping[str, Sequence[Series]],
    run_names: Sequence[str] | None = None,
    columns: int = 3,
    log_scale: bool = False,
    title: str | None = None,
    x_label: str = "step",
) -> Figure:
    """One panel per metric (row-major grid of ``columns``), every run overlaid; returns the figure.

    ``log_scale`` puts panels whose values are all positive on a log y axis.
    """
    if not series:
        raise UserError(
            "no train/* or eval/* metric to plot (empty metrics.jsonl, or a too narrow 'include')"
        )
    if columns < 1:
        raise UserError(f"columns must be >= 1, got {columns}")
    names = (
        list(run_names)
        if run_names is not None
        else sorted({s.run for group in series.values() for s in group})
    )
    palette = colormaps["tab10"]
    colours = {name: palette(i % 10) for i, name in enumerate(names)}
    columns = min(columns, len(series))
    rows = math.ceil(len(series) / columns)
    figure = new_figure(3.3 * columns + 0.2, 2.5 * rows + 0.7)
    for index, (metric, group) in enumerate(series.items()):
        ax = figure.add_subplot(rows, columns, index + 1)
        marker = "o" if metric.startswith("eval/") else None
        for s in group:
            ax.plot(s.steps, s.values, marker=marker, ms=3, lw=1.2, color=colours.get(s.run), label=s.run)
        if log_scale and all(v > 0 for s in group for v in s.values):
            ax.set_yscale("log")
            # Plain numbers at 1, 2, 5 x 10^k instead of 6 x 10^0 style labels.
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        ax.tick_params(which="both", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=x_label == "step"))
        ax.grid(alpha=0.3)
    if len(names) > 1 or run_names is not None:
        handles = [Line2D([], [], color=colours[name], lw=2) for name in names]
        figure.legend(handles, names, loc="outside lower center", ncols=min(len(names), 4), frameon=False)
    figure.suptitle(title or "Training curves", fontsize=11)
    return figure


@dataclass
class CurvesResult:
    """The curves figure, the series drawn (metric -> one per run) and each run's metrics rows."""

    figure: Figure
    series: dict[str, list[Series]]
    rows: dict[str, list[dict[str, Any]]]
    runs: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """The runs and, per metric and run, the number of points, the last step and value, the min."""
        return {
            "runs": dict(self.runs),
            "metrics": {
                metric: {
                    s.run: {
                        "points": len(s.values),
                        "last_step": s.steps[-1],
                        "last": s.values[-1],
                        "min": min(s.values),
                    }
                    for s in group
                }
                for metric, group in self.series.items()
            },
        }


def curves_figure(
    runs: Sequence[str | Path],
    labels: Sequence[str] | None = None,
    include: Sequence[str] = DEFAULT_PREFIXES,
    exclude: Sequence[str] = (),
    columns: int = 3,
    log_scale: bool = False,
    title: str | None = None,
    x: str = "step",
) -> CurvesResult:
    """Read every run's ``metrics.jsonl`` and draw its ``include`` metrics, runs overlaid.

    ``labels`` name the runs (default: ``run_labels``); ``include`` are key prefixes, ``exclude``
    exact keys.
    """
    if not runs:
        raise UserError("curves.runs: give at least one run folder")
    if labels is not None and len(labels) != len(runs):
        raise UserError(f"curves.labels: {len(labels)} labels for {len(runs)} runs")
    names = list(labels) if labels is not None else run_labels(runs)
    rows = {name: read_metrics(run) for name, run in zip(names, runs)}
    series = collect_series(rows, include, exclude, x)
    figure = plot_curves(series, names, columns, log_scale, title, X_AXES[x][2])
    return CurvesResult(figure, series, rows, {name: str(run) for name, run in zip(names, runs)})
