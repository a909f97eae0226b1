"""Speed and memory of research-analyze's quality benchmarks and of pretrained-vector alignment.

  python3 benchmarks/embedding_quality.py [--rows 32768] [--dim 512] [--words 100000]

Goals (docs/benchmarks.md): a 32,768 × 512 table analysed in under 60 s and 2 GB, and a 100,000-word vector file
aligned in under 30 s, on 2 cores. The table is a random one over a real `word` tokenizer of the built-in corpus
(as many rows as the corpus gives, up to --rows), scored as `research-analyze` scores a run's table (word vectors
from the rows, gensim's analogy / WordSim / SimLex evaluations, neighbours); the vector file is word2vec text written
by gensim with the tokenizer's words plus filler words. Prints seconds, peak RSS and the CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", type=int, default=32768)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--words", type=int, default=100_000)
  args = p.parse_args(argv)
  import numpy as np
  from gensim.models import KeyedVectors

  from research.analysis import quality
  from research.data import corpora, tokenizers
  from research.embeddings import pretrained

  corpus = corpora.load_corpus("wikipedia-sample")
  tokenizer, _ = tokenizers.build_or_load_tokenizer("word", corpus, args.rows)
  vocab = tokenizer.get_vocab_size()
  rng = np.random.default_rng(0)
  table = rng.normal(scale=args.dim ** -0.5, size=(vocab, args.dim)).astype(np.float32)
  cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout
  cpu = cpu.split(":")[-1].strip()

  start = time.perf_counter()
  kv, _ = quality.word_vectors(table, tokenizer, "word", quality.benchmark_words())
  scores = quality.benchmarks(kv)
  tokens = tokenizers.vocabulary(tokenizer)
  quality.neighbours(kv, [w for w in quality.frequent_words(tokens) if w in kv.key_to_index])
  analysis_s = time.perf_counter() - start
  print(f"analysis of a {vocab} x {args.dim} table ({len(kv.index_to_key)} word vectors, analogy coverage "
        f"{scores['analogy']['coverage']:.2f}): {analysis_s:.1f} s, peak RSS {_peak_rss_gb():.2f} GB")

  words = list(dict.fromkeys([w for w in pretrained.token_words(tokens, "word") if w]))
  words += [f"filler{i}" for i in range(max(0, args.words - len(words)))]
  words = words[:args.words]
  vectors = KeyedVectors(128)
  vectors.add_vectors(words, rng.normal(size=(len(words), 128)).astype(np.float32))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "vectors.txt")
    vectors.save_word2vec_format(path)
    start = time.perf_counter()
    _, report = pretrained.pretrained_table(path, tokens, "word", d_model=128, std=128 ** -0.5)
    align_s = time.perf_counter() - start
  print(f"alignment of a {len(words)}-word word2vec text file to {vocab} rows (coverage "
        f"{report.get('share_rows_covered', float('nan')):.2f}): {align_s:.1f} s, peak RSS {_peak_rss_gb():.2f} GB")
  print(f"on {cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
