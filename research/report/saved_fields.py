"""What a run's config.json means by a field it lacks: the value research-train's resume rule reads it as.

A config.json written before a field existed lacks it. research-train compares such a run by
`configuration.with_defaults` (research/train/configuration.py): the field's default or, where the default changed
what runs do, the value that reproduces the run (`schema.LEGACY_VALUES`: train.count_updates false,
train.position.weight_decay true, ...). The report reads a missing field the same way (`IMPLIED_VALUES`), so that an
old run groups with (and is a copy of) a new run of the same model instead of sitting in a row of its own under
`(unset)`. The schema's defaults come from the model's dataclass, whose module imports JAX, and the report imports
none (docs/reports.md): so the values are kept here, as data, and a test (tests/test_report.py) checks them against
`configuration.with_defaults({})`; regenerate them from it when the schema gains a field. A field not listed (a
newer schema's, an external scheme's) has no implied value: the report shows it `(unset)`.
"""

from __future__ import annotations

from typing import Any

# {dotted field: what a saved config.json that lacks it means} = flatten(configuration.with_defaults({})).
IMPLIED_VALUES: dict[str, Any] = {
    "data.cache_dir": "", "data.corpus": "wikipedia-sample", "data.document_mask": False,
    "data.document_positions": "continuous", "data.errors": "strict", "data.mlm_mask_rate": 0.8,
    "data.mlm_random_rate": 0.1, "data.mlm_select_rate": 0.15, "data.seq_len": 128, "data.tokenizer": "bpe",
    "data.train_fraction": 1.0, "data.vocab_size": 4096, "mesh.data": -1, "mesh.distributed": "auto", "mesh.fsdp": 1,
    "mesh.heartbeat_timeout_s": 60, "mesh.init_timeout_s": 300, "model.attention": "einsum", "model.char_dim": 16,
    "model.char_embeddings": "none", "model.char_filters": "1:25,2:50,3:75,4:100,5:125,6:150",
    "model.char_padding": "learned", "model.char_spelling": "raw", "model.combine": "add", "model.cope_max_pos": 64,
    "model.d_model": 128, "model.dropout": 0.0, "model.dtype": "float32", "model.embed_init": "normal",
    "model.embed_init_std": 0.0, "model.embed_scale": True, "model.embedding_dropout": 0.0,
    "model.fire_init_length": 512.0, "model.max_len": 0, "model.max_position": 0, "model.mlp_dim": 512,
    "model.norm": "pre", "model.num_heads": 4, "model.num_layers": 2, "model.pos_dim": 0,
    "model.position": "learned", "model.position_sampling": "none", "model.pretrained.dim_mismatch": "error",
    "model.pretrained.format": "auto", "model.pretrained.oov": "random", "model.pretrained.path": "",
    "model.pretrained.scale": "match", "model.pretrained.unicode_errors": "strict", "model.remat": "none",
    "model.rope_base": 10000.0, "model.rope_factor": 1.0, "model.rope_fraction": 1.0,
    "model.rope_keep_fraction": 1.0, "model.rope_original_len": 0, "model.rope_scaling": "none",
    "model.sinusoidal_wavelength": 10000.0, "model.t5_buckets": 32, "model.t5_max_distance": 128,
    "model.table_dim": 0, "model.tie_embeddings": True, "model.token_dropout": 0.0, "objective": "clm", "seed": 0,
    "train.async_checkpoints": True, "train.b1": 0.9, "train.b2": 0.95, "train.batch_size": 32,
    "train.checkpoint_every": 500, "train.count_updates": False, "train.embedding.freeze": False,
    "train.embedding.freeze_steps": 0, "train.embedding.lazy": False, "train.embedding.lazy_rows": "batch", "train.embedding.lr_multiplier": 1.0,
    "train.embedding.weight_decay": False, "train.eval_batches": 0, "train.eval_every": 250, "train.grad_accum": 1,
    "train.grad_clip": 1.0, "train.head.projection_group": "matrices", "train.head.weight_decay": True, "train.keep_checkpoints": 2, "train.learning_rate": 0.003, "train.log_every": 50,
    "train.loss_chunk": 512, "train.min_lr_ratio": 0.0, "train.momentum": 0.9, "train.optimizer": "adamw",
    "train.position.weight_decay": True, "train.schedule": "cosine", "train.steps": 1000, "train.warmup_steps": 100,
    "train.weight_decay": 0.1, "train.z_loss": 0.0,
}
