"""Passkey retrieval (Mohtashami & Jaggi 2023): can a causal LM repeat a 5-digit key hidden in filler text?

`research-evaluate --passkey` (docs/reports.md, "Passkey retrieval"). For every evaluated length L = m·T and depth d,
`trials` prompts (research/data/passkey.py: the paper's filler, the needle after a fraction d of it, the question)
each with its own key, as long as fits: [SEP] + prompt + the key's tokens ≤ L. The model greedily decodes as many
tokens as the key has, tokenized in context (what follows the prompt in `prompt + " " + key`), and a trial counts
when every decoded token is the key's (exact match). Keys are seeded by (run seed, L, d): a rerun, and every arm of
a sweep with the same seed, sees the same keys. Writes `RUN/eval/passkey.json`:

  {"train_len": T, "checkpoint_step": k, "checkpoint": "best", "seed": s, "trials": N, "depths": [...],
   "rope_scaling": ..., "rope_factor": ..., "filler": [...], "needle": ..., "question": ...,
   "results": [{"multiple": m, "length": L, "depth": d, "accuracy": a, "correct": c, "n": N,
                "prompt_tokens": mean prompt length, "key_tokens": mean key length}, ...
               {"multiple": m, "length": L, "depth": d, "accuracy": null, "correct": 0, "n": 0, "note": ...}]}

and the depth × length heatmap `RUN/eval/passkey.png`. Lengths a scheme cannot run at are n/a (`note`), as in
extrapolation.json; a split too short for a window is not (the prompts are generated text and never read it). A
repeated depth is scored once (0.5,1,0.5 = 0.5,1). Decoding is a loop of full forward passes over the growing
prefix (no KV cache): the prompts are at most 16·T tokens, and one compiled step serves every prompt of a length.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import figures
from research.data import passkey as text
from research.data import tokenizers
from research.data.tokenizers import PAD_ID, SEP_ID, UNK_ID
from research.evaluate import previous
from research.evaluate.errors import EvaluationError
from research.model.config import ModelConfig
from research.model.transformer import Transformer
from research.train import loop

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
TRIALS = 10
FILE = "passkey.json"
PLOT = "passkey.png"
# Tokenizer kinds that cannot spell the keys whatever they were trained on: `word` holds a number only as a whole word
# seen in training and encodes the others to [UNK]. The other kinds spell digits where their learned alphabet has them
# (`tokenize_prompt` checks every key once the run's tokenizer exists).
UNSPELLING_TOKENIZERS = ("word",)


@dataclasses.dataclass(frozen=True)
class Prompt:
  ids: np.ndarray  # int32 [P]: [SEP] + the prompt's tokens (the model reads a document after its separator)
  answer: np.ndarray  # int32 [k]: the key's tokens in context, what the model must produce after `ids`
  key: str
  key_position: int  # index in `ids` of the needle key's first token (the one holding its leading space, if any)
  depth: float


def check_options(depths: Sequence[float], trials: int) -> list[float]:
  """One-line errors for depths outside [0, 1] (or none) and a trial count below 1; returns the depths, each once in
  the order first given, -0 as 0 (0.5,1,0.5,-0 = 0.5,1,0): a cell is keyed by its depth, so a repeated one would be
  scored once but listed, drawn and printed twice."""
  if not depths or any(not isinstance(d, (int, float)) or not 0.0 <= float(d) <= 1.0 for d in depths):
    raise EvaluationError(f"passkey_depths={list(depths)!r} must be fractions in [0, 1] (0 = the key at the start "
                          f"of the filler, 1 = right before the question)")
  if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
    raise EvaluationError(f"passkey_trials={trials!r} must be an integer >= 1")
  return list(dict.fromkeys(float(d) + 0.0 for d in depths))  # + 0.0: -0.0 becomes 0.0


def check_tokenizer(kind: str) -> None:
  """A one-line error for a tokenizer kind that can never spell the keys (UNSPELLING_TOKENIZERS): known from the
  config alone, so research-evaluate and a sweep (before any trial trains) refuse it alike. A kind whose learned
  alphabet lacks a digit is only known once its tokenizer is trained: `tokenize_prompt` refuses it."""
  if kind in UNSPELLING_TOKENIZERS:
    allowed = ", ".join(k for k in tokenizers.KINDS if k not in UNSPELLING_TOKENIZERS)
    raise _spell_error(kind, "the random keys", f"a word-level vocabulary encodes a number it did not hold as a word "
                       f"to [UNK]; allowed kinds: {allowed}")


def check_given(passkey: bool, given: Sequence[str]) -> None:
  """A one-line error for passkey options given without `passkey`: they would be accepted and nothing scored.
  `given` names the options set explicitly (a flag present, an EVALUATE key not None)."""
  if given and not passkey:
    verb = "applies" if len(given) == 1 else "apply"
    raise EvaluationError(f"{', '.join('--' + name for name in given)} {verb} with --passkey only (without it no "
                          f"passkey retrieval is scored)")


def keys(seed: int, length: int, depth: float, n: int) -> list[str]:
  """The `n` keys of cell (length, depth): a generator seeded by (seed, length, depth in thousandths)."""
  rng = np.random.default_rng([abs(int(seed)), int(length), int(round(float(depth) * 1000))])
  return [text.random_key(rng) for _ in range(n)]


def _spell_error(kind: str, what: str, detail: str) -> EvaluationError:
  return EvaluationError(f"passkey retrieval needs a tokenizer that spells digits, but data.tokenizer={kind!r} "
                         f"cannot spell {what}: {detail}")


def tokenize_prompt(tokenizer, key: str, num_filler: int, depth: float, kind: str = "?") -> Prompt:
  """The prompt with `num_filler` filler sentences and the needle at `depth`, and the key's tokens in context
  (a one-line error naming the tokenizer `kind` when they are not the key's digits)."""
  prompt = text.prompt_text(key, num_filler, text.depth_split(num_filler, depth))
  encoding = tokenizer.encode(prompt)
  full = tokenizer.encode(prompt + text.answer_text(key)).ids
  ids = encoding.ids
  if full[:len(ids)] != ids or len(full) == len(ids):
    raise _spell_error(kind, f"the key {key}", "its tokens merge with the end of the prompt")
  answer = full[len(ids):]
  spelled = tokenizer.decode(answer).replace(" ", "").replace("\u2581", "").replace("##", "")
  if UNK_ID in answer or spelled != key:
    raise _spell_error(kind, f"the key {key}", f"it encodes to {[tokenizer.id_to_token(i) for i in answer]}")
  # The key's first token: the one holding the space before it, where the tokenizer keeps spaces (byte-level BPE's
  # "Ġ4"), else its first digit's.
  start = prompt.index(key)
  key_token = encoding.char_to_token(start - 1)
  key_token = encoding.char_to_token(start) if key_token is None else key_token
  return Prompt(ids=np.asarray([SEP_ID, *ids], np.int32), answer=np.asarray(answer, np.int32), key=key,
                key_position=1 + int(key_token), depth=float(depth))


def fits(prompt: Prompt, length: int) -> bool:
  return len(prompt.ids) + len(prompt.answer) <= length


def build_prompt(tokenizer, key: str, length: int, depth: float, kind: str = "?") -> Prompt | None:
  """The longest prompt (most filler sentences) whose ids and answer fit in `length` tokens; None when not even the
  needle and the question fit."""
  encode = functools.partial(tokenize_prompt, tokenizer, key, depth=depth, kind=kind)
  best = encode(num_filler=0)
  if not fits(best, length):
    return None
  lo, hi = 0, 1  # fits with lo sentences; find an hi that does not, then bisect
  while fits(candidate := encode(num_filler=hi), length):
    lo, best, hi = hi, candidate, hi * 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    candidate = encode(num_filler=mid)
    if fits(candidate, length):
      lo, best = mid, candidate
    else:
      hi = mid
  return best


@functools.partial(jax.jit, static_argnames=("model", "steps"))
def _greedy(params, ids_BxL, lengths_B, *, model: Transformer, steps: int):
  rows_B = jnp.arange(ids_BxL.shape[0])

  def step(s, ids_BxL):
    # A causal model: the logits at column lengths + s − 1 see only the prefix, whatever pads the rest of the row.
    hidden_BxLxD = model.apply({"params": params}, ids_BxL, return_hidden=True)
    last_B = jnp.minimum(lengths_B + s - 1, ids_BxL.shape[1] - 1)
    logits_BxV = model.apply({"params": params}, hidden_BxLxD[rows_B, last_B], method=Transformer.logits)
    token_B = jnp.argmax(logits_BxV.astype(jnp.float32), axis=-1).astype(ids_BxL.dtype)
    return ids_BxL.at[rows_B, lengths_B + s].set(token_B, mode="drop")

  ids_BxL = jax.lax.fori_loop(0, steps, step, ids_BxL)
  columns_BxS = jnp.minimum(lengths_B[:, None] + jnp.arange(steps)[None, :], ids_BxL.shape[1] - 1)
  return ids_BxL[rows_B[:, None], columns_BxS]


def greedy_decode(params, model_cfg: ModelConfig, ids_BxL, lengths_B, steps: int, char_ids=None) -> np.ndarray:
  """The `steps` tokens a causal model appends greedily (argmax) to each row's prefix ids[b, :lengths[b]], by full
  forward passes over the growing prefix; the rest of each row is ignored (padding). Needs lengths + steps <= L.
  Returns int32 [B, steps]. A pure function of its arguments, jitted once per (model, steps, shape)."""
  if model_cfg.kind != "decoder":
    raise EvaluationError("greedy decoding needs a causal (decoder) model")
  ids_BxL, lengths_B = jnp.asarray(ids_BxL, jnp.int32), jnp.asarray(lengths_B, jnp.int32)
  model = Transformer(model_cfg, char_ids=char_ids)
  return np.asarray(_greedy(params, ids_BxL, lengths_B, model=model, steps=int(steps)))


def score_prompts(params, model_cfg: ModelConfig, prompts: list[Prompt], length: int, *, char_ids=None,
                  max_tokens_per_batch: int = 8192) -> np.ndarray:
  """Bool [len(prompts)]: exact match of the greedy continuation with each prompt's answer. Rows are batched
  (max_tokens_per_batch // length of them; the last batch padded) so that a length compiles once."""
  batch = max(1, max_tokens_per_batch // length)
  steps = max(len(p.answer) for p in prompts)
  correct = []
  for start in range(0, len(prompts), batch):
    chunk = prompts[start:start + batch]
    ids = np.full((batch, length), PAD_ID, np.int32)
    lengths = np.ones(batch, np.int32)
    for i, p in enumerate(chunk):
      ids[i, :len(p.ids)], lengths[i] = p.ids, len(p.ids)
    out = greedy_decode(params, model_cfg, ids, lengths, steps, char_ids)
    correct += [bool(np.array_equal(out[i, :len(p.answer)], p.answer)) for i, p in enumerate(chunk)]
  return np.asarray(correct, bool)


def cell_record(multiple: int, length: int, depth: float, *, prompts: list[Prompt] | None = None,
                correct: np.ndarray | None = None, note: str | None = None) -> dict[str, Any]:
  record: dict[str, Any] = {"multiple": int(multiple), "length": int(length), "depth": float(depth)}
  if note:
    return {**record, "accuracy": None, "correct": 0, "n": 0, "note": note}
  n = len(prompts)
  return {**record, "accuracy": float(np.mean(correct)), "correct": int(np.sum(correct)), "n": n,
          "prompt_tokens": float(np.mean([len(p.ids) for p in prompts])),
          "key_tokens": float(np.mean([len(p.answer) for p in prompts]))}


def report_record(*, train_len: int, checkpoint_step: int, seed: int, trials: int, depths: Sequence[float],
                  rope_scaling: str | None, rope_factor: float | None, results: list[dict],
                  checkpoint: str | None = None) -> dict[str, Any]:
  return {"train_len": train_len, "checkpoint_step": checkpoint_step, "checkpoint": checkpoint, "seed": seed,
          "trials": trials, "depths": [float(d) for d in depths], "rope_scaling": rope_scaling,
          "rope_factor": rope_factor if rope_scaling else None, "filler": list(text.FILLER), "needle": text.NEEDLE,
          "question": text.QUESTION, "results": results}


def report_file(rope_scaling: str | None = None) -> str:
  return FILE if not rope_scaling else f"passkey_{rope_scaling}.json"


def plot_file(rope_scaling: str | None = None) -> str:
  return PLOT if not rope_scaling else f"passkey_{rope_scaling}.png"


def write_report(workdir: str | os.PathLike, report: dict[str, Any]) -> tuple[Path, Path]:
  """RUN/eval/passkey.json and its heatmap RUN/eval/passkey.png (`_<scaling>` with a RoPE scaling); the json it
  replaces is kept first (`previous.keep_previous`; the heatmap is drawn from it)."""
  out_dir = Path(workdir) / "eval"
  out_dir.mkdir(exist_ok=True)
  path = out_dir / report_file(report["rope_scaling"])
  previous.keep_previous(path, report)
  loop.atomic_write_json(path, report)
  return path, plot_heatmap(report, out_dir / plot_file(report["rope_scaling"]))


def plot_heatmap(report: dict[str, Any], path: str | os.PathLike) -> Path:
  """Depth (rows) × length (columns) accuracy, each cell annotated; n/a cells grey."""
  import matplotlib

  depths = report["depths"]
  columns = sorted({(r["length"], r["multiple"]) for r in report["results"]})
  grid = np.full((len(depths), len(columns)), np.nan)
  for r in report["results"]:
    if r["accuracy"] is not None:
      grid[depths.index(r["depth"]), columns.index((r["length"], r["multiple"]))] = r["accuracy"]
  fig = figures.figure((1.1 * len(columns) + 2.5, 0.55 * len(depths) + 1.8))
  ax = fig.add_subplot()
  cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
  image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
  for i in range(len(depths)):
    for j in range(len(columns)):
      value = grid[i, j]
      ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8,
              color="black" if np.isnan(value) or value > 0.6 else "white")
  ax.set_xticks(range(len(columns)), [f"{m:g}× ({length})" for length, m in columns], fontsize=8)
  ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=8)
  ax.set_xlabel("prompt length (multiple of the training length)")
  ax.set_ylabel("depth of the key")
  ax.set_title(f"passkey retrieval: exact match, {report['trials']} keys per cell", fontsize=10)
  fig.colorbar(image, ax=ax, label="accuracy")
  return figures.save_png(fig, path, dpi=110, tight=True)
