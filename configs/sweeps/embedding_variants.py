"""Embedding variants at one model width: the plain table, ALBERT's factorized table (e = 32, 64) and Kim et al.'s
character CNN summed with or concatenated to the table, word tokenizer, tied head, 2 seeds.

  research-sweep --sweep=configs/sweeps/embedding_variants.py --workdir=runs/embedding_variants
  for t in runs/embedding_variants/*/; do research-analyze --workdir=$t --rare; done
  research-report runs/embedding_variants

summary.json's num_embedding_params shows what each variant costs (table, projections, CNN); valid_ppl_rare how
it does on rare targets.
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None

VARIANTS = [
    {"model.table_dim": 0, "model.char_embeddings": "none"},
    {"model.table_dim": 32, "model.char_embeddings": "none"},
    {"model.table_dim": 64, "model.char_embeddings": "none"},
    {"model.table_dim": 0, "model.char_embeddings": "sum"},
    {"model.table_dim": 0, "model.char_embeddings": "concat"},
]


def get_sweep():
  return product(VARIANTS, seeds(2), {"data.tokenizer": ["word"], "data.vocab_size": [16384],
                                      "model.position": ["rope"], "train.steps": [800]})
