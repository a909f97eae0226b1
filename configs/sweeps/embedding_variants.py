"""Embedding variants: Kim et al.'s character CNN (none | concat | sum) × ALBERT's factorized table (table_dim d or
d/4), word tokenizer, tied head, CLM, 3 seeds (18 trials).

  char_embeddings  none (the table alone) | concat | sum (docs/rare_tokens.md, "Character-aware embeddings")
  table_dim        0 (= d_model = 128, the plain table) | 32 (d/4: a V × 32 table and a 32 → 128 projection)

Every arm has the budget of configs/sweeps/positions.py (data.seq_len 64, 800 steps, evaluated and checkpointed
every 400), RoPE, the schema's optimizer, schedule and regularisation, the same 16 384-word vocabulary and the same
data; only the two fields above change, but the arms do not start at one scale (concat's char_combine about halves
the token vectors, a factorized tied head without chars about halves the logits), and the CNN's and projections'
matrices are weight-decayed where the table is not: measured in docs/rare_tokens.md, "Sweeps". summary.json's
num_embedding_params shows what each variant costs (table, projections, CNN); valid_ppl_rare (validation targets
seen fewer than 10 times in training) is where the char-aware claim should show.

  research-sweep --sweep=configs/sweeps/embedding_variants.py --workdir=runs/embedding_variants
  for t in runs/embedding_variants/*/; do research-analyze --workdir=$t --rare; done
  research-report runs/embedding_variants
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None
D_MODEL = 128  # the schema's model.d_model, which every arm keeps


def get_sweep():
  shared = {"data.seq_len": [64], "train.steps": [800], "train.eval_every": [400], "train.checkpoint_every": [400],
            "data.tokenizer": ["word"], "data.vocab_size": [16384], "model.position": ["rope"]}
  return product({"model.char_embeddings": ["none", "concat", "sum"]}, {"model.table_dim": [0, D_MODEL // 4]},
                 seeds(3), shared)
