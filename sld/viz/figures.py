"""Figure plumbing shared by the plots: Agg-backed figures without pyplot, and saving to files.

Every figure of ``sld visualize`` is saved with the numbers it draws (``save_numbers``: JSON in
which NaN and infinity become null, so the file is strict JSON).

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas, never through
``pyplot``: no global figure registry to leak memory in loops, no GUI backend, safe on headless
machines and in tests (which inspect the returned figure's axes and artists).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sld.errors import UserError

__all__ = ["DEFAULT_FORMATS", "finite_numbers", "new_figure", "save_figure", "save_numbers"]

DEFAULT_FORMATS: tuple[str, ...] = ("png", "svg")
_SUPPORTED = {"png", "svg", "pdf", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp"}


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on an Agg canvas, with constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(
    figure: Figure,
    output_dir: str | Path,
    stem: str,
    formats: Sequence[str] = DEFAULT_FORMATS,
    dpi: int = 150,
) -> list[Path]:
    """Write ``<output_dir>/<stem>.<format>`` for every format; returns the paths written."""
    if not formats:
        raise UserError("formats: give at least one image format, e.g. [png, svg]")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        if fmt not in _SUPPORTED:
            raise UserError(
                f"formats: unsupported image format {fmt!r} (use one of {', '.join(sorted(_SUPPORTED))})"
            )
        path = folder / f"{stem}.{fmt}"
        figure.savefig(path, dpi=dpi, format=fmt)
        paths.append(path)
    return paths


def finite_numbers(value: Any) -> Any:
    """JSON-safe numbers: NaN / inf become None, recursively through dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_numbers(v) for v in value]
    return value


def save_numbers(numbers: dict[str, Any], output_dir: str | Path, stem: str) -> Path:
    """Write the numbers behind a figure to ``<output_dir>/<stem>.json`` (NaN / inf as null)."""
    path = Path(output_dir) / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite_numbers(numbers), indent=2, ensure_ascii=False) + "\n")
    return path
