"""Ablation reports from run directories: tables (markdown, CSV, booktabs LaTeX) and PNG plots.

  from research.report import build_report
  report = build_report("runs/positions")   # writes report.md, table.csv, table.tex, *.png into the directory
  print(report.table)

Reads only the JSON / JSONL files of run directories (never the model, the trainer, JAX or Flax).
"""

from research.report.build import Report, build_report
from research.report.runs import ReportError, RunSet, Trial, load_runs
from research.report.tables import Table, build_table

__all__ = ["Report", "ReportError", "RunSet", "Table", "Trial", "build_report", "build_table", "load_runs"]
