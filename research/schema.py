"""The experiment config's schema: every field a run reads, with its default, in one place.

Field names are a public contract (users' scripts and sweeps override them by name): extend, never rename.
`get_config()` returns the defaults as an `ml_collections.ConfigDict`; config files (`configs/*.py`) start from it
and change a few values; the library validates every config against it (`research.train.configuration`).

The `model` section is generated from `ModelConfig`'s fields and defaults (research/model/config.py), so a model
field is declared once, where the model reads it. The one experiment-level difference: `model.max_len = 0` means
"data.seq_len" (a learned table exactly as long as the training windows).

`RESUMABLE_FIELDS` lists the only fields a rerun in an existing workdir may change; every other field, including any
field added later, must match the saved config.json, or the rerun is refused (docs/training.md, "Resuming"). A field
in `configuration.BACKEND_RESOLVED` (model.attention) matches when both values resolve to the same choice on the
backend the rerun runs on (auto = einsum on CPU, so an einsum run resumes under the new default there).
"""

from __future__ import annotations

import ml_collections

from research import run_fields
from research.model.config import ModelConfig


# The fields a rerun may change (research/run_fields.py says which and why; defined there without JAX, for reports).
RESUMABLE_FIELDS = run_fields.RESUMABLE_FIELDS


# The value that reproduces a run written before the field existed, where that is not the field's default. A saved
# config.json that lacks a field means this value (else the default): a rerun of such a run keeps it, whatever the
# current default, and says so in one note (configuration.lacking_fields, loop.keep_saved_choices; an old learned or
# T5 run decayed its positional table and goes on decaying it). research/report/saved_fields.py holds the same
# values for the JAX-free report.
# model.attention existed with the default einsum before auto: an old run that lacks the field ran einsum.
# model.char_padding: the CNN's padding character was an ordinary learned row before the field existed.
# model.char_spelling: a piece that stands for no text was spelled with its raw string alone, without the mark.
# train.head.weight_decay: the untied head was decayed with the transformer's matrices before the field existed.
# train.head.projection_group: a factorized tied table's head_projection was decayed with the transformer's matrices.
# train.embedding.lazy_rows: lazy rows were the ids of the inputs and the targets, whether the head was tied or not.
LEGACY_VALUES = {"train.position.weight_decay": True, "train.count_updates": False, "model.attention": "einsum",
                 "model.char_padding": "learned", "model.char_spelling": "raw", "train.head.weight_decay": True,
                 "train.head.projection_group": "matrices", "train.embedding.lazy_rows": "batch"}


def saved_value(field: str, default):
  """What a saved config that lacks `field` meant by it."""
  return LEGACY_VALUES.get(field, default)


def _model_section() -> ml_collections.ConfigDict:
  model = ml_collections.ConfigDict(ModelConfig.experiment_fields())
  model.max_len = 0  # 0 = data.seq_len
  # Initial table from word vectors, with model.embed_init=pretrained (docs/embeddings.md); read at a fresh start
  # only, by the trainer (not a ModelConfig field: the model only sees the resulting matrix).
  model.pretrained = ml_collections.ConfigDict()
  model.pretrained.path = ""  # word2vec / GloVe / fastText file
  model.pretrained.format = "auto"  # auto | word2vec | word2vec-binary | glove | fasttext | fasttext-bin
  model.pretrained.oov = "random"  # uncovered rows: random (normal init at the covered norm) | mean (+ noise)
  model.pretrained.dim_mismatch = "error"  # error | project (fixed random orthogonal projection, seeded)
  model.pretrained.scale = "match"  # match (covered mean norm = the normal init's) | keep
  # Undecodable bytes in a text file's words (gensim's unicode_errors): strict (refused, naming the line) | replace
  # | ignore. Binary words too.
  model.pretrained.unicode_errors = "strict"
  return model


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.objective = "clm"  # clm | mlm

  c.data = ml_collections.ConfigDict()
  c.data.corpus = "wikipedia-sample"  # wikipedia-sample | lee | text:<path|glob|dir> | hf:<name>[/<config>]
  c.data.errors = "strict"  # how undecodable bytes in text: corpora are handled: strict | replace | ignore
  c.data.tokenizer = "bpe"  # bpe | bpe-char | wordpiece | unigram | word | char | byte
  c.data.vocab_size = 4096
  c.data.seq_len = 128
  c.data.cache_dir = ""  # tokenizers and token caches; "" = $RESEARCH_CACHE_DIR or ~/.cache/research
  # Share of the train token stream the LM trains on: a prefix, cut at a document boundary. The tokenizer, its counts
  # and research-vectors still see the whole train split (what "less LM data, same unlabeled text" studies need).
  c.data.train_fraction = 1.0
  c.data.mlm_select_rate = 0.15
  c.data.mlm_mask_rate = 0.8
  c.data.mlm_random_rate = 0.1
  # Document boundaries inside a packed row (a [SEP] opens the document after it; docs/data.md): positions
  # continuous (arange over the row) | reset (0 at every [SEP]); document_mask: attention stays within a document.
  # Both change the model a run trains, so neither may change on resume; runs before them were continuous / False.
  c.data.document_positions = "continuous"
  c.data.document_mask = False

  c.model = _model_section()

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 32
  c.train.grad_accum = 1  # micro-batches per step; batch_size is the total
  c.train.learning_rate = 3e-3
  c.train.optimizer = "adamw"  # adamw | adam | sgd | adafactor | lion
  c.train.schedule = "cosine"  # constant | cosine | linear | rsqrt (all after linear warmup)
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.0
  c.train.weight_decay = 0.1  # on the transformer's matrices; the token table and positional parameters: below
  c.train.grad_clip = 1.0  # global norm; 0 = off
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.momentum = 0.9  # sgd only
  c.train.z_loss = 0.0
  c.train.loss_chunk = 512  # tokens per chunk of LM head + loss (never the full logits); 0 = all at once
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2  # plus the best by validation loss
  c.train.async_checkpoints = True
  c.train.eval_every = 250
  c.train.eval_batches = 0  # validation batches per evaluation; 0 = the whole split
  c.train.log_every = 50
  # Per row of the token table, count the steps whose batch held it and whose update of it was non-zero (int32 [V]
  # arrays in the train state, checkpointed; RUN/update_counts.npz at the end). About 0.3 ms a step, within the
  # noise of the step time (docs/benchmarks.md); runs written before it existed counted nothing (LEGACY_VALUES).
  c.train.count_updates = True
  c.train.embedding = ml_collections.ConfigDict()
  c.train.embedding.weight_decay = False  # decay the token table?
  c.train.embedding.lr_multiplier = 1.0
  c.train.embedding.freeze = False
  c.train.embedding.freeze_steps = 0  # the table gets zero updates for the first K steps, then trains
  c.train.embedding.lazy = False  # LazyAdam-style: rows absent from the batch keep values and moments
  # Which rows a lazy table updates (docs/training.md, "Lazy embedding updates"): lookups (the rows the table's
  # gradient reaches: the inputs' ids, and the targets' when the head is tied) | batch (the ids of inputs and
  # targets, head tied or not: runs before the field). Read only with lazy rows and an untied head.
  c.train.embedding.lazy_rows = "lookups"
  c.train.position = ml_collections.ConfigDict()
  # Decay the positional scheme's parameters (learned table, T5 buckets, ...)? Off, as the token table, and as
  # minGPT's configure_optimizers (its position embedding is "not decayed"): docs/training.md, "Parameter groups".
  c.train.position.weight_decay = False
  c.train.head = ml_collections.ConfigDict()
  # Decay the untied output head (lm_head, [width, V])? Off, as the token table it replaces: a tied and an untied
  # arm then differ in tying only (docs/training.md, "Parameter groups"). Unread by a tied model.
  c.train.head.weight_decay = False
  # A factorized tied table's head_projection ([d_model, table_dim], the head's way back to the table): head (decayed
  # iff train.head.weight_decay, as the untied lm_head it stands in for) | matrices (the >=2-d rule with the
  # transformer's matrices, decayed at train.weight_decay: runs before the field). Read only by a tied factorized model.
  c.train.head.projection_group = "head"

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 fills with the devices left
  c.mesh.fsdp = 1
  c.mesh.distributed = "auto"  # auto | true | false: call jax.distributed.initialize()
  # Multi-process runs (docs/training.md, "Multi-host"): a process that sends no heartbeat for this long is lost, and
  # every other process stops with one line naming it (JAX's default is 100 s); and how long the processes wait for
  # each other at start.
  c.mesh.heartbeat_timeout_s = 60
  c.mesh.init_timeout_s = 300
  return c
