"""Does a pretrained token table help, and more so with less LM data? (docs/embeddings.md)

Initial table: normal, word2vec or fastText vectors (trained on the whole train split), × the share of the train
token stream the LM sees (data.train_fraction), × 2 seeds; the fastText .bin covers word pieces through character
n-grams. Prepare the vectors once (from the repository root: trials run there, and the paths below are relative
to it), then sweep, analyze and report:

  research-vectors --method=word2vec --dim=128 --out=runs/vectors/word2vec-128.txt
  research-vectors --method=fasttext --dim=128 --out=runs/vectors/fasttext-128.bin
  research-sweep --sweep=configs/sweeps/pretrained.py --workdir=runs/pretrained
  for run in runs/pretrained/*/; do research-analyze --workdir=$run; done
  research-report runs/pretrained

A trial whose vector file is missing fails at once with a one-line error naming the path.
"""

from research.sweeps import product, seeds

BASE_CONFIG = "configs/clm.py"
EVALUATE = None
VECTORS = {"word2vec": "runs/vectors/word2vec-128.txt", "fasttext": "runs/vectors/fasttext-128.bin"}


def get_sweep():
  inits = [{"model.embed_init": "normal"}]
  inits += [{"model.embed_init": "pretrained", "model.pretrained.path": path} for path in VECTORS.values()]
  return product(inits, {"data.train_fraction": [0.1, 0.3, 1.0]}, seeds(2))
