"""Shared test settings: one corpus/tokenizer/token cache for the whole run (and its xdist workers)."""

import os
import tempfile

# The data layer writes its caches atomically, so concurrent workers can share one directory; a fresh CI machine
# builds the default corpus once (about 10 s) instead of once per test.
os.environ.setdefault("RESEARCH_CACHE_DIR", os.path.join(tempfile.gettempdir(), "research-test-cache"))

# Subprocesses (the CLI tests) start with huge pages for XLA's buffers, as a sweep's trials do, instead of
# restarting themselves for them (research/hugepages.py; its own tests cover the restart).
from research import hugepages  # noqa: E402

os.environ.update(hugepages.environment())
