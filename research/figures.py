"""Headless matplotlib figures and their atomic PNG writes, for every picture the library draws (the report's plots,
research-analyze's rare-token and position pictures, research-evaluate's passkey grid).

A figure is a `matplotlib.figure.Figure` on the Agg canvas, never pyplot (no global backend state: it works headless
and from threads). `save_png` writes a temporary file beside the target and renames it over it, so a crash or a full
disk leaves the previous picture or none, never half a PNG, and removes the temporary file when the write fails.
matplotlib is imported when a figure is made, not with this module: commands that draw nothing do not pay for it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any


def figure(figsize: tuple[float, float], **kwargs: Any):
  """A new Figure of `figsize` inches on the Agg canvas (kwargs: Figure's, e.g. layout="constrained")."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize, **kwargs)
  FigureCanvasAgg(fig)
  return fig


def save_png(fig, path: str | os.PathLike, dpi: int, tight: bool = False) -> pathlib.Path:
  """`fig` as a PNG at `path`, atomically; `tight`: fig.tight_layout() first (figures without a layout engine)."""
  path = pathlib.Path(path)
  if tight:
    fig.tight_layout()
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path
