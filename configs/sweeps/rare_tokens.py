"""Rare tokens: how the table treats infrequent rows under dense vs lazy updates, tied vs untied, 2 seeds.

Every trial counts its per-row updates (train.count_updates, on by default) and keeps its initial table, so the
analysis can relate drift and norm to frequency and presence. The word tokenizer with a large vocabulary gives many
rare rows and per-bucket word benchmarks:

  research-sweep --sweep=configs/sweeps/rare_tokens.py --workdir=runs/rare_tokens
  for t in runs/rare_tokens/*/; do research-analyze --workdir=$t --rare; done
  research-report runs/rare_tokens      # geometry columns, valid ppl; rare_<metric>.png per bucket metric

summary.json's `valid_ppl_rare` is the perplexity of validation targets seen fewer than 10 times in training.
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None


def get_sweep():
  return product({"train.embedding.lazy": [False, True]}, {"model.tie_embeddings": [True, False]}, seeds(2),
                 {"data.tokenizer": ["word"], "data.vocab_size": [16384], "model.position": ["rope"],
                  "train.steps": [800]})
