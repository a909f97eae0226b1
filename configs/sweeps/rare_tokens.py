"""Rare tokens: how the table treats infrequent rows, by optimizer × head × tokenizer, CLM, 3 seeds (48 trials).

Arms (docs/rare_tokens.md, "Sweeps"):
  optimizer  adamw dense | adamw lazy (train.embedding.lazy: rows absent from a batch keep values and moments) |
             sgd (momentum 0.9, the schema's default, learning rate SGD_LR: see below) |
             plain sgd (momentum 0, the articles' SGD, learning rate PLAIN_SGD_LR: see below)
  head       tied | untied
  tokenizer  word | bpe, both with 16 384 entries (the same table size for both; word gives many rare rows, BPE
             shares pieces)

The claim under test, "rows for tokens not present remain unchanged", is measured on each trained run by
`research-analyze --rare` (rare_tokens.json `absent_rows`: rows with update_counts.npz `present` == 0 and their
largest change from RUN/embedding_init.npy, at the last checkpoint, the step the counts describe). What the tiny
runs of tests/test_rare.py show, and this sweep measures at scale: exactly 0 for lazy AdamW and for untied SGD;
> 0 with a tied head for dense AdamW and SGD alike (the softmax of the tied head sends gradient to every row);
untied dense AdamW leaves them unchanged too (zero gradient, zero moments), because no arm decays the table. Per
step ("a row absent from this batch keeps still"), rare_tokens.json's `updated_while_absent` counts the rows updated
in more steps than batches held them: 0 only where nothing carries a past gradient into a later step (lazy AdamW,
plain SGD with an untied head); AdamW's moments and SGD's momentum both move rows after the batch that held them.

Everything that could favour an arm is the same in all of them: the budget of configs/sweeps/positions.py
(data.seq_len 64, 800 steps, evaluated and checkpointed every 400), RoPE, the schema's schedule (100 warmup steps,
cosine), batch, clipping (global norm 1), model and data; no weight decay anywhere (train.weight_decay 0: coupled
L2 under SGD and decoupled decay under AdamW are not the same amount of decay at any one value, and decay would
move absent rows by itself; the table is never decayed, train.embedding.weight_decay false, the default).
AdamW keeps the schema's learning rate 3e-3; SGD gets SGD_LR = 1.0, the best final valid perplexity of a 200-step
probe over {0.03, 0.1, 0.3, 1, 3, 10} on the word arm, with and without decay (docs/rare_tokens.md: 3 is unstable,
10 diverges), since SGD's step size is not comparable with Adam's at any shared value. Plain SGD gets PLAIN_SGD_LR =
10 = SGD_LR / (1 − 0.9): the same steady-state step as momentum 0.9 at SGD_LR (not probed separately).

  research-sweep --sweep=configs/sweeps/rare_tokens.py --workdir=runs/rare_tokens
  for t in runs/rare_tokens/*/; do research-analyze --workdir=$t --rare; done
  research-report runs/rare_tokens      # geometry and absent-row columns, valid ppl; rare_<metric>.png per bucket

summary.json's `valid_ppl_rare` is the perplexity of validation targets seen fewer than 10 times in training.
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None
SGD_LR = 1.0
PLAIN_SGD_LR = 10.0  # SGD_LR / (1 - momentum 0.9)
OPTIMIZERS = [
    {"train.optimizer": "adamw", "train.embedding.lazy": False},
    {"train.optimizer": "adamw", "train.embedding.lazy": True},
    {"train.optimizer": "sgd", "train.embedding.lazy": False, "train.learning_rate": SGD_LR},
    {"train.optimizer": "sgd", "train.embedding.lazy": False, "train.learning_rate": PLAIN_SGD_LR,
     "train.momentum": 0.0},
]
SHARED = {"data.seq_len": [64], "train.steps": [800], "train.eval_every": [400], "train.checkpoint_every": [400],
          "data.vocab_size": [16384], "model.position": ["rope"], "train.weight_decay": [0.0]}


def get_sweep():
  return product(OPTIMIZERS, {"model.tie_embeddings": [True, False]}, {"data.tokenizer": ["word", "bpe"]}, seeds(3),
                 SHARED)
