"""Data-pipeline speed: build from scratch, load from cache, iterator throughput.

  python3 benchmarks/data.py [--corpus wikipedia-sample] [--kind bpe] [--vocab 16000] [--seq-len 512] [--batch 32]
                             [--train-tokens-per-s 3700]

Goals (issue "Speed"): build corpus + 16k BPE + token cache < 30 s on 2 cores; load from cache < 1 s; iterator
throughput >= 20x the model's training tokens/s. Uses a fresh temporary cache directory unless --cache-dir is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from research.data import batches, corpora, tokenizers  # noqa: E402


def build(args, cache_dir):
  corpus = corpora.load_corpus(args.corpus, cache_dir=cache_dir)
  tok, _ = tokenizers.build_or_load_tokenizer(args.kind, corpus, args.vocab, cache_dir=cache_dir)
  streams = batches.build_or_load_cache(args.corpus, tok, cache_dir=cache_dir, corpus=corpus)
  return corpus, tok, streams


def timed(fn, *a):
  t = time.perf_counter()
  out = fn(*a)
  return time.perf_counter() - t, out


def throughput(it, steps):
  next(it)  # first batch builds the epoch permutation
  t = time.perf_counter()
  tokens = 0
  for _ in range(steps):
    tokens += next(it)["inputs"].size
  return tokens / (time.perf_counter() - t)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--corpus", default=corpora.DEFAULT_CORPUS)
  p.add_argument("--kind", default="bpe", choices=tokenizers.KINDS)
  p.add_argument("--vocab", type=int, default=16000)
  p.add_argument("--seq-len", type=int, default=512)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--cache-dir", default=None)
  # The goal compares the iterator with the model it feeds: 3700 tokens/s is throughput.py's training rate on the
  # 2-core dev box at its shape (T=256, B=16); pass the number for another machine or model.
  p.add_argument("--train-tokens-per-s", type=float, default=3700.0,
                 help="the model's training throughput at this shape, for the >= 20x goal (default: %(default)s)")
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    cache_dir = args.cache_dir or tmp
    t_build, (corpus, tok, streams) = timed(build, args, cache_dir)
    t_load, (_, _, streams) = timed(build, args, cache_dir)
    chars = sum(corpus.num_chars().values())
    print(f"corpus {args.corpus}: {len(corpus.train)}/{len(corpus.valid)}/{len(corpus.test)} documents, "
          f"{chars / 1e6:.2f} M chars; {args.kind} vocab {tok.get_vocab_size()}; tokens "
          + ", ".join(f"{s} {v.size:,}" for s, v in streams.items()))
    print(f"{'build corpus + tokenizer + cache from scratch':48s} {t_build:8.2f} s   (goal < 30 s)")
    print(f"{'load from cache':48s} {t_load:8.3f} s   (goal < 1 s)")
    train = streams["train"]
    b, length = args.batch, args.seq_len
    rows = [
        ("ClmBatches", batches.ClmBatches(train, length, b, seed=0)),
        ("MlmBatches", batches.MlmBatches(train, length, b, seed=0)),
    ]
    for name, it in rows:
      rate = throughput(it, args.steps)
      ratio = rate / args.train_tokens_per_s
      print(f"{name + f' B={b} L={length}':48s} {rate / 1e6:8.1f} M tokens/s = {ratio:,.0f}x training "
            f"{args.train_tokens_per_s:,.0f} tokens/s (goal >= 20x: {'met' if ratio >= 20 else 'MISSED'})")
    t = time.perf_counter()
    n = sum(x["inputs"].size for x in batches.eval_batches(streams["valid"], length, b, "sliding", length // 4))
    print(f"{'eval_batches sliding stride L/4':48s} {n / (time.perf_counter() - t) / 1e6:8.1f} M tokens/s")
    print(f"cpu cores available: {os.cpu_count()}")


if __name__ == "__main__":
  main()
