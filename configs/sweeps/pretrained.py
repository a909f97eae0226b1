"""Does a pretrained token table help, and more so with less LM data? (docs/embeddings.md)

Initial table: normal, word2vec or fastText vectors (128-d, trained on the whole train split), × the share of the
train token stream the LM sees (data.train_fraction ∈ {0.1, 0.3, 1.0}), × 3 seeds, word tokenizer, CLM; plus a BPE
row (normal vs fastText at train_fraction 0.1) where the fastText .bin covers word pieces through character
n-grams. Every arm trains the same model for the same number of steps on 64-token windows (the positions sweep's
budget): a smaller fraction repeats a shorter prefix more often, so compare `best valid ppl` (the best of the
evaluations every 100 steps, early stopping) as well as the final `valid ppl`. Prepare the vectors once (in the
directory you run the sweep in: trials run there, and the paths below are relative to it), then sweep, analyze and
report:

  research-vectors --method=word2vec --dim=128 --out=runs/vectors/word2vec-128.txt
  research-vectors --method=fasttext --dim=128 --out=runs/vectors/fasttext-128.bin
  research-sweep --sweep=configs/sweeps/pretrained.py --workdir=runs/pretrained
  for run in runs/pretrained/*/; do research-analyze --workdir=$run; done
  research-report runs/pretrained

A trial whose vector file is missing fails at once with a one-line error naming the path.

model.pretrained.scale=match equalises only the mean row norm: the word2vec and fastText rows share a large common
direction (mean pairwise cosine ~0.75, no centring applied), so those arms start with about half the normal arm's
per-token spread (centred rows' mean norm ~0.49 vs ~1.0): measured in docs/embeddings.md, "The pretrained-init sweep".
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None
VECTORS = {"word2vec": "runs/vectors/word2vec-128.txt", "fasttext": "runs/vectors/fasttext-128.bin"}
NORMAL = {"model.embed_init": "normal"}


def pretrained(method: str) -> dict:
  return {"model.embed_init": "pretrained", "model.pretrained.path": VECTORS[method]}


def get_sweep():
  # Evaluated and checkpointed every 100 steps: a small fraction overfits long before step 800, and the report's
  # `best valid ppl` (early stopping) is then also the checkpoint research-analyze scores.
  shared = {"data.seq_len": [64], "train.steps": [800], "train.eval_every": [100],
            "train.checkpoint_every": [100], "model.position": ["rope"]}
  word = product({"data.tokenizer": ["word"]}, [NORMAL, pretrained("word2vec"), pretrained("fasttext")],
                 {"data.train_fraction": [0.1, 0.3, 1.0]}, seeds(3), shared)
  bpe = product({"data.tokenizer": ["bpe"]}, [NORMAL, pretrained("fasttext")], {"data.train_fraction": [0.1]},
                seeds(3), shared)
  return word + bpe
