"""The default experiment config: every field a run reads, with its default.

Field names here are a public contract (users' scripts override them by name): extend, never rename.
Other config files start from this one and change a few fields.
"""

import ml_collections


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
  c.data.mlm_select_rate = 0.15
  c.data.mlm_mask_rate = 0.8
  c.data.mlm_random_rate = 0.1

  c.model = ml_collections.ConfigDict()
  # none | learned | sinusoidal | rope | alibi | t5 | fire | kerple_log | kerple_power | xpos | cope | sandwich |
  # p_rope (or any registered scheme, or package.module:Class for a scheme class of your own)
  c.model.position = "learned"
  c.model.combine = "add"  # add | concat
  c.model.pos_dim = 0  # positional width for combine=concat; 0 = d_model
  c.model.max_len = 0  # learned table length; 0 = data.seq_len
  c.model.tie_embeddings = True
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.dropout = 0.0
  c.model.embedding_dropout = 0.0
  c.model.token_dropout = 0.0
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  c.model.norm = "pre"  # pre | post
  c.model.attention = "einsum"  # einsum (reference; fastest on CPU) | xla (jax.nn.dot_product_attention)
  c.model.embed_init = "normal"  # normal | uniform
  # Unit-scale token vectors, as fairseq / Vaswani et al.: table ~ N(0, 1/d), multiplied by sqrt(d) at the input.
  # A table of std 0.02 without the scale is swamped by unit-amplitude sinusoids (docs/results.md).
  c.model.embed_init_std = 0.0  # 0 = d_model ** -0.5
  c.model.embed_scale = True
  c.model.sinusoidal_wavelength = 10_000.0
  c.model.rope_base = 10_000.0
  c.model.rope_fraction = 1.0
  c.model.rope_scaling = "none"  # none | linear | ntk | yarn
  c.model.rope_factor = 1.0
  c.model.rope_original_len = 0  # 0 = data.seq_len
  c.model.t5_buckets = 32
  c.model.t5_max_distance = 128
  c.model.rope_keep_fraction = 1.0  # p_rope: fraction of RoPE frequencies kept (the highest); 0 = NoPE, 1 = RoPE
  c.model.cope_max_pos = 64  # cope: positions per layer table (contextual positions clamp to cope_max_pos - 1)
  c.model.position_sampling = "none"  # none | randomized (Ruoss et al. 2023: sorted random positions in training)
  c.model.max_position = 0  # randomized positions are drawn from [0, max_position); 0 = data.seq_len

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 32
  c.train.grad_accum = 1  # micro-batches per step; batch_size is the total
  c.train.learning_rate = 3e-3
  c.train.optimizer = "adamw"  # adamw | adam | sgd | adafactor | lion
  c.train.schedule = "cosine"  # constant | cosine | linear | rsqrt (all after linear warmup)
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.0
  c.train.weight_decay = 0.1
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
  c.train.embedding = ml_collections.ConfigDict()
  c.train.embedding.weight_decay = False  # decay the token table?
  c.train.embedding.lr_multiplier = 1.0
  c.train.embedding.freeze = False
  c.train.embedding.lazy = False  # LazyAdam-style: rows absent from the batch keep values and moments

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 fills with the devices left
  c.mesh.fsdp = 1
  c.mesh.distributed = "auto"  # auto | true | false: call jax.distributed.initialize()
  return c
