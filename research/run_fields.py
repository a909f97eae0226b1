"""Which config fields change the model a run trains, as plain dict logic (no JAX, no config classes): the resume rule
of research-train (`schema.RESUMABLE_FIELDS`, `loop.unused_fields` re-export these), the sweep runner's same-model
warning and research-report's swept fields and duplicate runs all read it from here, so there is one definition.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

# Fields that change when, how often or where a run does its work, never what model it trains (model.remat: which
# activations the backward pass keeps or recomputes, the same operations either way). `train.steps`
# extends (or shortens) a run; note that the learning-rate schedule is computed from it, so a cosine run extended
# past its planned end continues from the schedule's new shape (docs/training.md). Not `train.eval_batches`: the
# validation loss it measures ranks the run's checkpoints (best_step, the checkpoint research-evaluate reads), and
# losses over other windows are not comparable.
RESUMABLE_FIELDS = (
    "train.steps", "train.eval_every", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.async_checkpoints", "data.cache_dir", "mesh.data", "mesh.fsdp", "mesh.distributed",
    "mesh.heartbeat_timeout_s", "mesh.init_timeout_s", "model.remat")

# Resumable fields that still change what a run trains: a longer run is another point of the comparison.
MODEL_FIELDS = ("train.steps",)

# The character CNN's settings, which shape nothing while model.char_embeddings is none.
CHAR_FIELDS = ("model.char_dim", "model.char_padding", "model.char_spelling", "model.char_filters")

# RoPE's scaling, which shapes nothing in a scheme that does not rotate with RoPE's frequencies.
ROPE_SCALING_FIELDS = ("model.rope_scaling", "model.rope_factor")

# The masked LM's rates, which a causal LM (objective clm) never reads.
MLM_FIELDS = ("data.mlm_select_rate", "data.mlm_mask_rate", "data.mlm_random_rate")

# The tokenizer kinds whose vocabulary does not depend on data.vocab_size (research/data/tokenizers.py): byte has its
# 5 + 256 ids, char the specials and every character of the train split; data.vocab_size is only checked to be large
# enough, so two runs that differ in it train the same model on the same ids.
FIXED_VOCAB_TOKENIZERS = ("byte", "char")


def unused_fields(previous: Mapping[str, Any], current: Mapping[str, Any],
                  rotates: Callable[[Mapping[str, Any]], bool | None] = lambda config: None) -> tuple[str, ...]:
  """Fields of two nested config dicts that may differ because neither model uses them: the char CNN's when both
  have model.char_embeddings none; RoPE's scaling when `rotates` (whether a config's scheme rotates with RoPE's
  frequencies; None: cannot be told, the default here, where no scheme is imported) is False for both; the MLM
  rates when both have objective clm; data.vocab_size when both tokenizers are of FIXED_VOCAB_TOKENIZERS."""
  both = lambda test: test(previous) and test(current)  # noqa: E731
  unused = CHAR_FIELDS if both(lambda c: c.get("model", {}).get("char_embeddings", "none") == "none") else ()
  if rotates(previous) is False and rotates(current) is False:
    unused += ROPE_SCALING_FIELDS
  if both(lambda c: c.get("objective") == "clm"):
    unused += MLM_FIELDS
  if both(lambda c: c.get("data", {}).get("tokenizer") in FIXED_VOCAB_TOKENIZERS):
    unused += ("data.vocab_size",)
  return unused


def same_model_ignored(previous: Mapping[str, Any], current: Mapping[str, Any],
                       rotates: Callable[[Mapping[str, Any]], bool | None] = lambda config: None) -> tuple[str, ...]:
  """The fields in which two configs may differ and still train the same model: `RESUMABLE_FIELDS` but
  `MODEL_FIELDS`, and `unused_fields`."""
  return tuple(f for f in RESUMABLE_FIELDS if f not in MODEL_FIELDS) + unused_fields(previous, current, rotates)
