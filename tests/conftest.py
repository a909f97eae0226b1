"""Shared test settings: one corpus/tokenizer/token cache for the whole run (and its xdist workers)."""

import os
import tempfile

# The data layer writes its caches atomically, so concurrent workers can share one directory; a fresh CI machine
# builds the default corpus once (about 10 s) instead of once per test.
os.environ.setdefault("RESEARCH_CACHE_DIR", os.path.join(tempfile.gettempdir(), "research-test-cache"))
