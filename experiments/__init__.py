"""Thin command-line entry points (absl): train, evaluate, sweep, report, quickstart."""
