"""Speed and memory of research-analyze's quality benchmarks and of pretrained-vector alignment.

  python3 benchmarks/embedding_quality.py [--rows 32768] [--dim 512] [--words 100000] [--scorer batched|gensim|both]
                                          [--rare]

Goals (docs/benchmarks.md): a 32,768 × 512 table analysed in under 60 s and 2 GB, and a 100,000-word vector file
aligned in under 30 s, on 2 cores. The table is a random one over a real `word` tokenizer of the built-in corpus
(as many rows as the corpus gives, up to --rows), with analogies planted in it (per section of questions-words.txt
a random offset: the row of a pair's second word is the first word's plus the offset plus noise, so a share of the
questions is answered correctly and the comparison of scorers is not between two columns of zeros). It is scored as
`research-analyze` scores a run's table: word vectors from the rows, the analogy / WordSim / SimLex evaluations,
neighbours; with --rare also `research-analyze --rare`'s figures (frequency buckets with their per-bucket word
benchmarks, the geometry of the table and of a head of the same shape). --scorer picks the analogy scorer:
`batched` (research/analysis/analogies.py, the default), `gensim` (gensim's per-question loop, the code before it)
or `both`, each in a fresh process one after the other (its own peak RSS), and then checks that the two give the
same numbers. The vector file is word2vec text written by gensim with the tokenizer's words plus filler words.
Prints seconds, peak RSS and the CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def _tokenizer(rows: int):
  from research.data import corpora, tokenizers
  return tokenizers.build_or_load_tokenizer("word", corpora.load_corpus("wikipedia-sample"), rows)[0]


def planted_table(tokenizer, dim: int, seed: int = 0):
  """float32 [V, dim]: normal rows (std dim^-0.5) with each analogy section's pairs offset alike (module docstring)."""
  import numpy as np

  from research.analysis import quality
  rng = np.random.default_rng(seed)
  table = rng.normal(scale=dim ** -0.5, size=(tokenizer.get_vocab_size(), dim)).astype(np.float32)
  planted, offset = set(), None
  with open(quality.datapath(quality.ANALOGY_FILE), encoding="utf-8") as f:
    for line in f:
      if line.startswith(":"):
        offset = rng.normal(scale=dim ** -0.5, size=dim).astype(np.float32)
        continue
      words = line.split()
      ids = [tokenizer.token_to_id(w) or tokenizer.token_to_id(w.lower()) for w in words]
      for first, second in ((ids[0], ids[1]), (ids[2], ids[3])):
        if first is not None and second is not None and second not in planted:
          noise = rng.normal(scale=dim ** -0.5, size=dim).astype(np.float32)
          table[second] = table[first] + offset + noise
          planted.add(second)
  return table


def analysis(rows: int, dim: int, scorer: str, rare: bool) -> dict:
  """Times research-analyze's quality analysis (and with `rare` its --rare figures) of the planted table."""
  import numpy as np

  from research.analysis import quality
  from research.analysis import rare as rare_lib
  from research.data import tokenizers
  from research.embeddings import pretrained
  tokenizer = _tokenizer(rows)
  table = planted_table(tokenizer, dim)
  tokens = tokenizers.vocabulary(tokenizer)
  start = time.perf_counter()
  kv, _ = quality.word_vectors(table, tokenizer, "word", quality.benchmark_words())
  scores = quality.benchmarks(kv, scorer=scorer)
  quality.neighbours(kv, [w for w in quality.frequent_words(tokens) if w in kv.key_to_index])
  out = {"seconds": time.perf_counter() - start, "words": len(kv.index_to_key), "vocab": len(tokens),
         "benchmarks": scores, "peak_rss_gb": _peak_rss_gb()}
  if rare:
    counts = (1e6 / np.arange(1, len(tokens) + 1)).astype(np.int64)  # Zipf, in the word tokenizer's id order
    counts[-len(tokens) // 20:] = 0
    words = ["" if t in tokenizers.SPECIAL_TOKENS else w
             for t, w in zip(tokens, pretrained.token_words(tokens, "word"))]
    head = table[::-1].copy()
    start = time.perf_counter()
    report = rare_lib.rare_report(table, counts, init_VxD=table * 0.9, present_V=counts // 100, head_VxD=head,
                                  words=words, scorer=scorer)
    out.update(rare_seconds=time.perf_counter() - start, rare_buckets=len(report["buckets"]),
               rare_peak_rss_gb=_peak_rss_gb(), rare_benchmarks=[b.get("benchmarks") for b in report["buckets"]])
  return out


def _in_child(*args) -> dict:
  ctx = multiprocessing.get_context("spawn")  # a fresh process: its own peak RSS, no state shared with the other
  with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
    return pool.submit(analysis, *args).result()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rows", type=int, default=32768)
  p.add_argument("--dim", type=int, default=512)
  p.add_argument("--words", type=int, default=100_000)
  p.add_argument("--scorer", choices=["batched", "gensim", "both"], default="batched")
  p.add_argument("--rare", action="store_true", help="also time the --rare analyses of the same table")
  args = p.parse_args(argv)
  import numpy as np
  from gensim.models import KeyedVectors

  from research.data import tokenizers
  from research.embeddings import pretrained

  from hardware import cpu_description
  cpu = cpu_description()
  tokenizer = _tokenizer(args.rows)  # built (or loaded) once here, so the children load it from the cache
  results = {}
  for scorer in (["batched", "gensim"] if args.scorer == "both" else [args.scorer]):
    r = results[scorer] = _in_child(args.rows, args.dim, scorer, args.rare)
    a = r["benchmarks"]["analogy"]
    print(f"analysis of a {r['vocab']} x {args.dim} table ({r['words']} word vectors, analogy coverage "
          f"{a['coverage']:.2f}, accuracy {a['accuracy']:.4f}), {scorer} scorer: {r['seconds']:.1f} s, peak RSS "
          f"{r['peak_rss_gb']:.2f} GB", flush=True)
    if args.rare:
      print(f"  + --rare analyses ({r['rare_buckets']} buckets, per-bucket word benchmarks, geometry of 2 tables): "
            f"{r['rare_seconds']:.1f} s, peak RSS {r['rare_peak_rss_gb']:.2f} GB", flush=True)
  if len(results) == 2:
    same = all(results["batched"].get(k) == results["gensim"].get(k) for k in ("benchmarks", "rare_benchmarks"))
    print(f"same benchmark numbers from both scorers: {same}; speed-up "
          f"{results['gensim']['seconds'] / results['batched']['seconds']:.1f}x")

  tokens = tokenizers.vocabulary(tokenizer)
  vocab = len(tokens)
  rng = np.random.default_rng(0)
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
