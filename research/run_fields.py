"""Which config fields change the model a run trains, as plain dict logic (no JAX, no config classes): the resume rule
of research-train (`schema.RESUMABLE_FIELDS`, `loop.unused_fields` re-export these), the sweep runner's same-model
warning and research-report's swept fields and duplicate runs all read it from here, so there is one definition.
"""

from __future__ import annotations

import json
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

# Which optimizers read which of their settings (research/train/optim.py `_core`): train.momentum only sgd's;
# train.b1 and train.b2 adamw's, adam's and lion's (adafactor is optax's factored RMS with its own constants). A
# name not listed here (none is valid) reads everything.
OPTIMIZER_FIELDS = {"train.momentum": ("sgd",), "train.b1": ("adamw", "adam", "lion"),
                    "train.b2": ("adamw", "adam", "lion")}
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "lion")

# The schedules that decay to train.min_lr_ratio · learning_rate (optim.make_schedule): constant and rsqrt never
# read it.
FLOOR_SCHEDULES = ("cosine", "linear")
SCHEDULES = ("constant", "cosine", "linear", "rsqrt")

# The token table's own optimizer settings, which a frozen table (train.embedding.freeze: optax.set_to_zero in
# place of its optimizer) never reads: its learning-rate multiplier and delayed start, lazy rows, and its weight
# decay (it only picks the table's leaf in the decay mask, and that leaf gets no update either way).
FROZEN_TABLE_FIELDS = ("train.embedding.lr_multiplier", "train.embedding.freeze_steps", "train.embedding.lazy",
                       "train.embedding.weight_decay")

# The word-vector file's options, read only at a fresh start with model.embed_init pretrained (loop.pretrained_table).
PRETRAINED_FIELDS = ("model.pretrained.path", "model.pretrained.format", "model.pretrained.oov",
                     "model.pretrained.dim_mismatch", "model.pretrained.scale", "model.pretrained.unicode_errors")

# Model fields that only some built-in positional schemes read (research/embeddings/: the `cfg.<field>` of each
# registered class and its bases; tests/test_sweeps.py checks this table against their source): {field: the schemes
# that read it}. A scheme not in BUILTIN_SCHEMES (registered elsewhere, or package.module:Class) may read anything.
SCHEME_FIELDS = {
    "model.sinusoidal_wavelength": ("sinusoidal",),
    "model.rope_base": ("rope", "p_rope", "xpos"), "model.rope_fraction": ("rope", "p_rope", "xpos"),
    "model.rope_original_len": ("rope", "p_rope"), "model.rope_keep_fraction": ("p_rope",),
    "model.t5_buckets": ("t5",), "model.t5_max_distance": ("t5",), "model.cope_max_pos": ("cope",),
    "model.fire_init_length": ("fire",)}
BUILTIN_SCHEMES = ("none", "learned", "sinusoidal", "rope", "p_rope", "xpos", "alibi", "sandwich", "t5", "cope",
                   "fire", "kerple_log", "kerple_log_shared", "kerple_power", "kerple_power_shared")

# The built-in schemes that contribute input channels (`has_input`: learned, sinusoidal; a test checks it against
# the registry): model.combine and model.pos_dim shape only their runs (ModelConfig.positional_width).
INPUT_SCHEMES = ("learned", "sinusoidal")

# The built-in schemes that own no parameters (closed forms, fixed slopes: docs/training.md, "What each built-in scheme
# owns"; a test checks it against each scheme's initialised parameters), and the settings of the optimizer's
# `position` group (train.position.*; a test checks this list against the schema), which reach only parameters under
# a scheme's `position_embed` module: nothing, in a run of one of these schemes.
PARAMETERLESS_SCHEMES = ("none", "sinusoidal", "rope", "p_rope", "xpos", "alibi", "sandwich")
POSITION_GROUP_FIELDS = ("train.position.weight_decay",)

# The head's optimizer settings (optim.decay_mask): an untied head's (`lm_head`) decay flag, which a tied model reads
# only for a factorized table's head_projection, when train.head.projection_group puts it in the head; and that group,
# which only a tied factorized model has a head_projection to read it for.
UNTIED_HEAD_FIELDS = ("train.head.weight_decay",)
PROJECTION_GROUP_FIELDS = ("train.head.projection_group",)

# Which rows a lazy table updates: read only with lazy rows of an unfrozen table and an untied head (with a tied head
# both values name the inputs' and the targets' rows).
LAZY_ROWS_FIELDS = ("train.embedding.lazy_rows",)


# The RoPE scalings research-evaluate switches on (--rope_scaling; extrapolation.ROPE_SCALINGS, which a test checks
# against this), for the report, which reads eval/extrapolation_<scaling>.json and its siblings of these names only.
EVALUATION_SCALINGS = ("linear", "ntk", "yarn")


# The built-in schemes that rotate with RoPE's frequencies (subclasses of relative.RotaryPositions; a test checks this
# against the registry), for a caller that imports no scheme (research-report).
ROTARY_SCHEMES = ("rope", "p_rope")


def builtin_rotates(config: Mapping[str, Any]) -> bool | None:
  """Whether a config's scheme rotates with RoPE's frequencies, for the built-in schemes; None (cannot be told
  without importing it) for another. The `rotates` argument of `unused_fields` where no scheme may be imported."""
  position = _get(config, "model.position")
  return position in ROTARY_SCHEMES if position in BUILTIN_SCHEMES else None


def _get(config: Mapping[str, Any], field: str, default: Any = None) -> Any:
  """A dotted field of a nested config dict, `default` when a section or the field is missing."""
  *sections, name = field.split(".")
  for section in sections:
    config = config.get(section, {})
    if not isinstance(config, Mapping):
      return default
  return config.get(name, default)


def _read_only_by(field: str, values: tuple[Any, ...], readers: tuple[str, ...], known: tuple[str, ...]) -> bool:
  """Whether none of `values` (the two configs' choice of optimizer, schedule or scheme) reads `field`: each is a
  known choice and not one of its `readers`."""
  return all(v in known and v not in readers for v in values)


def unused_fields(previous: Mapping[str, Any], current: Mapping[str, Any],
                  rotates: Callable[[Mapping[str, Any]], bool | None] = lambda config: None) -> tuple[str, ...]:
  """Fields of two nested config dicts that may differ because neither model uses them: the char CNN's when both
  have model.char_embeddings none; RoPE's scaling when `rotates` (whether a config's scheme rotates with RoPE's
  frequencies; None: cannot be told, the default here, where no scheme is imported) is False for both; the MLM
  rates when both have objective clm; data.vocab_size when both tokenizers are of FIXED_VOCAB_TOKENIZERS; an
  optimizer's setting neither optimizer reads (`OPTIMIZER_FIELDS`: train.momentum but under sgd, train.b1 and b2
  under sgd or adafactor); train.min_lr_ratio when neither schedule decays to a floor (constant, rsqrt);
  `FROZEN_TABLE_FIELDS` when both tables are frozen; `PRETRAINED_FIELDS` when neither has model.embed_init
  pretrained; model.pos_dim when both have model.combine add; model.max_position when both have
  model.position_sampling none; model.combine and model.pos_dim when both schemes are built-in ones without input
  channels (`INPUT_SCHEMES`); a scheme's own field (`SCHEME_FIELDS`) when both schemes are built-in ones that do
  not read it; the positional group's optimizer settings (`POSITION_GROUP_FIELDS`) when both schemes are built-in
  ones without parameters (`PARAMETERLESS_SCHEMES`); the head's decay (`UNTIED_HEAD_FIELDS`) when neither model has
  an untied head nor a factorized tied head_projection in the head's group, and that group
  (`PROJECTION_GROUP_FIELDS`) when neither is a tied factorized model; `LAZY_ROWS_FIELDS` when neither has lazy
  rows of an unfrozen table under an untied head; model.table_dim when both are the plain table (0 or their
  d_model), model.max_len when both are the training length (0 or their data.seq_len). Each rule holds only where the field is verified unread (or its two
  values name one model); anything unknown counts as read."""
  both = lambda test: test(previous) and test(current)  # noqa: E731
  values = lambda field, default=None: (_get(previous, field, default), _get(current, field, default))  # noqa: E731
  unused = CHAR_FIELDS if both(lambda c: c.get("model", {}).get("char_embeddings", "none") == "none") else ()
  if rotates(previous) is False and rotates(current) is False:
    unused += ROPE_SCALING_FIELDS
  if both(lambda c: c.get("objective") == "clm"):
    unused += MLM_FIELDS
  if both(lambda c: c.get("data", {}).get("tokenizer") in FIXED_VOCAB_TOKENIZERS):
    unused += ("data.vocab_size",)
  unused += tuple(f for f, readers in OPTIMIZER_FIELDS.items()
                  if _read_only_by(f, values("train.optimizer"), readers, OPTIMIZERS))
  if _read_only_by("train.min_lr_ratio", values("train.schedule"), FLOOR_SCHEDULES, SCHEDULES):
    unused += ("train.min_lr_ratio",)
  if all(v is True for v in values("train.embedding.freeze")):
    unused += FROZEN_TABLE_FIELDS
  if all(isinstance(v, str) and v != "pretrained" for v in values("model.embed_init", "normal")):
    unused += PRETRAINED_FIELDS
  if all(v == "add" for v in values("model.combine", "add")):
    unused += ("model.pos_dim",)
  if _read_only_by("model.combine", values("model.position"), INPUT_SCHEMES, BUILTIN_SCHEMES):
    unused += tuple(f for f in ("model.combine", "model.pos_dim") if f not in unused)
  if all(v == "none" for v in values("model.position_sampling", "none")):
    unused += ("model.max_position",)
  unused += tuple(f for f, readers in SCHEME_FIELDS.items()
                  if _read_only_by(f, values("model.position"), readers, BUILTIN_SCHEMES))
  if all(v in PARAMETERLESS_SCHEMES for v in values("model.position")):
    unused += POSITION_GROUP_FIELDS
  if not any(map(_reads_head_decay, (previous, current))):
    unused += UNTIED_HEAD_FIELDS
  if not any(map(_tied_factorized, (previous, current))):
    unused += PROJECTION_GROUP_FIELDS
  if not any(map(_reads_lazy_rows, (previous, current))):
    unused += LAZY_ROWS_FIELDS
  # Values that name the same model: model.table_dim 0 and d_model are both the plain V × d table (ModelConfig:
  # `table_dim or d_model`, factorized only when that differs from d_model); model.max_len 0 and data.seq_len are
  # both the training length (configuration.model_config). d_model and seq_len themselves are still compared.
  if all(_same_as_default(c, "model.table_dim", "model.d_model") for c in (previous, current)):
    unused += ("model.table_dim",)
  if all(_same_as_default(c, "model.max_len", "data.seq_len") for c in (previous, current)):
    unused += ("model.max_len",)
  return unused


def _tied(config: Mapping[str, Any]) -> bool:
  return _get(config, "model.tie_embeddings", True) is True


def _tied_factorized(config: Mapping[str, Any]) -> bool:
  """Whether a config's model has a factorized tied table, whose head_projection is the head's (anything unknown
  counts as factorized)."""
  return _tied(config) and not _same_as_default(config, "model.table_dim", "model.d_model")


def _reads_head_decay(config: Mapping[str, Any]) -> bool:
  """Whether train.head.weight_decay reaches a parameter of the config's model: an untied head, or a factorized tied
  table's head_projection in the head's group."""
  in_head = _get(config, "train.head.projection_group", "head") != "matrices"
  return not _tied(config) or (_tied_factorized(config) and in_head)


def _reads_lazy_rows(config: Mapping[str, Any]) -> bool:
  """Whether train.embedding.lazy_rows chooses anything: lazy rows of an unfrozen table under an untied head."""
  return (_get(config, "train.embedding.lazy", False) is not False and _get(config, "train.embedding.freeze", False)
          is not True and not _tied(config))


# Fields `unused_fields` lists because two values name one model (0 and its default's value), not because the model
# never reads them: research-train notes neither, and research-report shows them as they are.
SAME_MODEL_VALUES = ("model.table_dim", "model.max_len")


def unread_reason(field: str, config: Mapping[str, Any]) -> str:
  """Why `field` (one of `unused_fields(config, config)`) is not read by `config`'s model, for research-train's note
  on a value that was set (not the default) but shapes nothing."""
  position, optimizer, schedule = (_get(config, f) for f in ("model.position", "train.optimizer", "train.schedule"))
  if field in ("model.combine", "model.pos_dim") and position in BUILTIN_SCHEMES and position not in INPUT_SCHEMES:
    return f"read only by a scheme with input channels ({' or '.join(INPUT_SCHEMES)}), and this run's is {position!r}"
  if field in SCHEME_FIELDS:
    return f"read only by model.position {' or '.join(SCHEME_FIELDS[field])}, and this run's is {position!r}"
  if field in OPTIMIZER_FIELDS:
    return f"read only by train.optimizer {' or '.join(OPTIMIZER_FIELDS[field])}, and this run's is {optimizer!r}"
  reasons = {
      CHAR_FIELDS: "read only with a character CNN, and this run's model.char_embeddings is 'none'",
      ROPE_SCALING_FIELDS: f"read only by a scheme that rotates with RoPE, and this run's is {position!r}",
      MLM_FIELDS: "read only by objective mlm, and this run's is 'clm'",
      ("data.vocab_size",): f"not read by the {_get(config, 'data.tokenizer')!r} tokenizer, whose vocabulary does "
                            f"not depend on it (it is only checked to be large enough)",
      ("train.min_lr_ratio",): f"read only by train.schedule {' or '.join(FLOOR_SCHEDULES)}, and this run's is "
                               f"{schedule!r}",
      FROZEN_TABLE_FIELDS: "not read while train.embedding.freeze is true",
      PRETRAINED_FIELDS: f"read only with model.embed_init 'pretrained', and this run's is "
                         f"{_get(config, 'model.embed_init', 'normal')!r}",
      ("model.pos_dim",): "read only with model.combine other than 'add', and this run's is 'add'",
      ("model.max_position",): "read only with model.position_sampling other than 'none', and this run's is 'none'",
      POSITION_GROUP_FIELDS: f"read only by a scheme with parameters, and {position!r} has none",
      UNTIED_HEAD_FIELDS: "read only by an untied head or a factorized tied table's head_projection (with "
                          "train.head.projection_group 'head'), and this run's model has neither",
      PROJECTION_GROUP_FIELDS: "read only by a tied model with a factorized table (model.table_dim other than "
                               "model.d_model), and this run's model is not one",
      LAZY_ROWS_FIELDS: "read only with train.embedding.lazy true, an unfrozen table and an untied head "
                        "(model.tie_embeddings false), and this run has not all three"}
  return next((why for fields, why in reasons.items() if field in fields), "not read by this run's model")


def _same_as_default(config: Mapping[str, Any], field: str, default_field: str) -> bool:
  """Whether `field` is 0 (which means `default_field`'s value) or that value itself."""
  value, default = _get(config, field, 0), _get(config, default_field)
  return isinstance(value, int) and not isinstance(value, bool) and value in (0, default)


def same_model_ignored(previous: Mapping[str, Any], current: Mapping[str, Any],
                       rotates: Callable[[Mapping[str, Any]], bool | None] = lambda config: None) -> tuple[str, ...]:
  """The fields in which two configs may differ and still train the same model: `RESUMABLE_FIELDS` but
  `MODEL_FIELDS`, and `unused_fields`."""
  return tuple(f for f in RESUMABLE_FIELDS if f not in MODEL_FIELDS) + unused_fields(previous, current, rotates)


def fill_lacking(saved: Mapping[str, Any], values: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
  """(a copy of the saved run config `saved` (nested dicts, config.json) with each dotted field of `values` it lacks
  set to that value; the fields set). A field under a section that is not a dict is left alone. The resume rule
  fills a config.json written before a field existed with what the field meant then
  (`configuration.with_defaults`), and research-report reads such a config the same way (JAX-free, here)."""
  out, filled = json.loads(json.dumps(saved)), []
  for field, value in values.items():
    *parents, leaf = field.split(".")
    node = out
    for parent in parents:
      node = node.setdefault(parent, {})
      if not isinstance(node, dict):
        break
    else:
      if leaf not in node:
        node[leaf] = value
        filled.append(field)
  return out, tuple(filled)


# How an MLM run's validation masked the split before today's rule (per row, b2cb295), told by the first field of
# the schema its config.json lacks, as (field, the rule, the commit that changed it, its date): each rule moved the
# figure (one run's parameters: valid ppl 274.86, 306.77, 268.86). research-train refuses to train such a run on
# (`loop.check_workdir`); research-report names the rule (`Trial.validation_masks`).
OLD_MLM_VALIDATION = (("train.position.weight_decay", "from one key for every batch", "059dd28", "2026-12-01"),
                      ("model.char_spelling", "per batch", "b2cb295", "2026-12-07"))


def outdated_mlm_validation(saved: Mapping[str, Any]) -> str | None:
  """For a saved MLM run config (config.json) written under an earlier validation masking rule: that rule, in
  words (OLD_MLM_VALIDATION); None for a causal LM or a run validated as today."""
  if _get(saved, "objective") != "mlm":
    return None
  missing = object()
  return next((f"masks {rule} (written before {commit})" for field, rule, commit, _ in OLD_MLM_VALIDATION
               if _get(saved, field, missing) is missing), None)
