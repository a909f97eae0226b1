"""The transformer: token embedding + positional scheme → blocks → final norm → LM head (tied or untied).

`kind="decoder"` is a causal LM, `kind="encoder"` a bidirectional masked LM; they differ only in the mask (and in
the causal/bidirectional variants of ALiBi and T5 buckets, which read `cfg.causal`). Parameter layout, which the
optimizer's rules rely on:

  token_embed/embedding   [V, e]          the token table (the only V×e parameter when tied); e = table_dim or d_model
  token_embed/projection/kernel       [e, d_model]  factorized (e != d_model) only: table → model width
  token_embed/head_projection/kernel  [d_model, e]  factorized and tied only: the head's way back to the table
  position_embed/...      whatever a shared scheme owns (learned: embedding [max_len, pos width]; t5: rel_bias)
  block_{i}/...           attention qkv / out, mlp, layer norms; a per-layer scheme's parameters (fire, kerple_*,
                          cope) at block_{i}/attention/position_embed/...
  final_norm/             pre-LN only
  char_embed/...          model.char_embeddings only: the character CNN (chars, conv_<w>, highway, out for sum)
  char_combine/kernel     [d_model + Σ filters, d_model]  char_embeddings=concat only
  head_proj/kernel        [width, d_model]  only when tied and concat makes width > d_model
  lm_head/kernel          [width, V]        only when untied
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.embeddings import chars, token
from research.model.attention import MultiHeadAttention, attention_mask
from research.model.config import ModelConfig

Array = Any
# The modules `Transformer.logits` reads (the last three lines of the layout above).
HEAD_MODULES = ("token_embed", "head_proj", "lm_head")
CHAR_MODULES = ("char_embed", "char_combine")


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.cfg
    # Over [tokens, d] (see MultiHeadAttention): the weight gradients are then plain matmuls on XLA:CPU.
    x_NxD = x_BxLxD.reshape(-1, x_BxLxD.shape[-1])
    dense = lambda features, name: nn.Dense(  # noqa: E731
        features, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32, dot_general=cfg.dot_general,
        name=name)
    h = nn.gelu(dense(cfg.mlp_dim, "fc1")(x_NxD))
    out_NxD = dense(cfg.width, "fc2")(h)
    return out_NxD.reshape(*x_BxLxD.shape[:-1], cfg.width)


class Block(nn.Module):
  """Pre-LN (default): x + f(LN(x)); post-LN (original transformer, BERT): LN(x + f(x)).

  Arguments are positional so that `remat_block` can mark `hooks`, `causal` and `deterministic` static (nn.remat's
  static_argnums); `hooks` may arrive wrapped in `Static`."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL=None, mask=None, hooks=None, causal=False, deterministic=True):
    cfg = self.cfg
    hooks = hooks.value if isinstance(hooks, Static) else hooks
    norm = lambda name: nn.LayerNorm(dtype=cfg.compute_dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
    drop = lambda y: nn.Dropout(cfg.dropout)(y, deterministic=deterministic)  # noqa: E731
    attend = lambda y: MultiHeadAttention(cfg, name="attention")(  # noqa: E731
        y, hooks=hooks, positions_BxL=positions_BxL, mask=mask, causal=causal)
    if cfg.norm == "pre":
      x_BxLxD = x_BxLxD + drop(attend(norm("norm_attention")(x_BxLxD)))
      return x_BxLxD + drop(Mlp(cfg, name="mlp")(norm("norm_mlp")(x_BxLxD)))
    x_BxLxD = norm("norm_attention")(x_BxLxD + drop(attend(x_BxLxD)))
    return norm("norm_mlp")(x_BxLxD + drop(Mlp(cfg, name="mlp")(x_BxLxD)))


class Static:
  """A static argument of a rematerialised block, hashed by identity. jax.checkpoint must hash its static arguments,
  and the attention hooks can be neither traced (they hold functions) nor hashed (they hold arrays); inside the
  block the arrays they close over are read as closed-over values, which jax.checkpoint turns into inputs, so their
  gradients flow as without remat."""

  __slots__ = ("value",)

  def __init__(self, value):
    self.value = value


# model.remat → jax.checkpoint's policy: block keeps nothing but the block's inputs; dots_saveable keeps the outputs
# of the matmuls (no batch dimensions) and recomputes the elementwise work between them.
REMAT_POLICIES = {"block": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}


def remat_block(cfg: ModelConfig):
  """The block class for `cfg.remat`: Block itself, or Block under nn.remat with the policy of REMAT_POLICIES
  (same parameter names, same values and gradients; tests check both)."""
  if cfg.remat == "none":
    return Block
  # Argument 0 is the module: hooks (4), causal (5) and deterministic (6) are static.
  return nn.remat(Block, static_argnums=(4, 5, 6), policy=REMAT_POLICIES[cfg.remat])


class Transformer(nn.Module):
  """`__call__(tokens, positions)` → logits [B, L, V] (or the final hidden states with `return_hidden=True`;
  `logits(h)` is the head alone, so a loss can apply it chunk by chunk)."""

  cfg: ModelConfig
  embedding_init: Any = None  # overrides cfg.embed_init, e.g. `token.from_matrix(pretrained)`
  # With cfg.char_embeddings: the vocabulary's spellings as char ids, int [V, C] (`chars.char_ids`, wrapped in
  # `chars.Constant`), a constant of the model, not a parameter.
  char_ids: Any = None

  def setup(self):
    cfg = self.cfg
    self.token_embed = token.TokenEmbedding(
        cfg.vocab_size, cfg.table_width, out_features=cfg.d_model,
        embedding_init=self.embedding_init or token.make_init(cfg.embed_init, cfg.embed_init_std),
        scale=cfg.embed_scale, dropout=cfg.embedding_dropout, token_dropout=cfg.token_dropout,
        dtype=cfg.compute_dtype, dot_general=cfg.dot_general)
    if cfg.uses_chars:
      if self.char_ids is None:
        raise ValueError("model.char_embeddings needs the vocabulary's char ids (Transformer(cfg, char_ids=...))")
      ids = self.char_ids.array if isinstance(self.char_ids, chars.Constant) else self.char_ids
      if ids.shape[0] != cfg.vocab_size:
        raise ValueError(f"char ids have {ids.shape[0]} rows, the vocabulary {cfg.vocab_size}")
      self.char_embed = chars.CharCNN(
          num_chars=int(ids.max()) + 1, char_dim=cfg.char_dim, filters=chars.parse_filters(cfg.char_filters),
          out_features=cfg.d_model if cfg.char_embeddings == "sum" else 0, dtype=cfg.compute_dtype,
          zero_padding=cfg.char_padding == "zero")
      if cfg.char_embeddings == "concat":
        self.char_combine = nn.Dense(cfg.d_model, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                                     dot_general=cfg.dot_general)
    # A per-layer scheme's instance here is never called (so it owns no parameters); each attention layer builds its
    # own (see MultiHeadAttention).
    self.position_embed = cfg.scheme(cfg)
    block = remat_block(cfg)
    self.blocks = [block(cfg, name=f"block_{i}") for i in range(cfg.num_layers)]
    if cfg.norm == "pre":
      self.final_norm = nn.LayerNorm(dtype=cfg.compute_dtype, param_dtype=jnp.float32)
    if not cfg.tie_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                              dot_general=cfg.dot_general)
    elif cfg.width != cfg.d_model:
      self.head_proj = nn.Dense(cfg.d_model, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                                dot_general=cfg.dot_general)

  def vocab_vectors(self):
    """[V, d_model]: every token's input vector (scaled, projected), with char embeddings combined with its
    spelling's CNN vector; computed once per forward pass, for the input lookup and the tied head alike, when the
    model has char embeddings (without them the lookup reads the table directly)."""
    tok_VxD = self.token_embed.all_vectors()
    if not self.cfg.uses_chars:
      return tok_VxD
    char_VxF = self.char_embed(chars.as_jax(self.char_ids))
    if self.cfg.char_embeddings == "sum":
      return tok_VxD + char_VxF
    return self.char_combine(jnp.concatenate([tok_VxD, char_VxF.astype(tok_VxD.dtype)], axis=-1))

  def embed(self, tokens_BxL, positions_BxL, *, deterministic=True, vocab_VxD=None):
    """The input hook: token vectors, plus or concatenated with the scheme's positional vectors (if any)."""
    if self.cfg.uses_chars:
      vocab_VxD = self.vocab_vectors() if vocab_VxD is None else vocab_VxD
      x_BxLxD = token.lookup(vocab_VxD, tokens_BxL, "token id", " (the vocabulary size)")
      x_BxLxD = self.token_embed.dropout_vectors(x_BxLxD, deterministic=deterministic)
    else:
      x_BxLxD = self.token_embed(tokens_BxL, deterministic=deterministic)
    pos_BxLxP = self.position_embed.embed(positions_BxL) if self.cfg.scheme.has_input else None
    if pos_BxLxP is None:
      return x_BxLxD
    pos_BxLxP = pos_BxLxP.astype(x_BxLxD.dtype)
    if self.cfg.combine == "concat":
      return jnp.concatenate([x_BxLxD, pos_BxLxP], axis=-1)
    return x_BxLxD + pos_BxLxP

  def __call__(self, tokens_BxL, positions_BxL=None, *, key_mask_BxL=None, segments_BxL=None, deterministic=True,
               return_hidden=False):
    """`segments_BxL` (int document ids, or None): attention only between tokens of the same id (data.document_mask;
    the train step derives them from [SEP], `steps.segments`)."""
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape)
    vocab_VxD = self.vocab_vectors() if self.cfg.uses_chars else None  # once, for input and head
    x_BxLxD = self.embed(tokens_BxL, positions_BxL, deterministic=deterministic, vocab_VxD=vocab_VxD)
    h_BxLxD = self.encode(x_BxLxD, positions_BxL, key_mask_BxL=key_mask_BxL, segments_BxL=segments_BxL,
                          deterministic=deterministic)
    return h_BxLxD if return_hidden else self.logits(h_BxLxD, vocab_VxD=vocab_VxD)

  def encode(self, x_BxLxD, positions_BxL, *, key_mask_BxL=None, segments_BxL=None, deterministic=True):
    """Blocks and final norm over already-embedded inputs (for analysis, and inputs built elsewhere)."""
    # A shared scheme's hooks are computed once for every layer (T5 shares its bias table across layers); a per-layer
    # scheme computes them in each attention layer from the positions.
    hooks = None if self.cfg.scheme.per_layer else self.position_embed.attention_hooks(positions_BxL, positions_BxL)
    length = x_BxLxD.shape[1]
    mask = attention_mask(length, length, self.cfg.causal, key_mask_BxL, segments_BxL)
    # Without key padding a causal mask leaves every query a key (a document mask keeps each query's own one), so
    # attention may skip the all-masked blocks.
    causal = self.cfg.causal and key_mask_BxL is None
    static_hooks = Static(hooks) if self.cfg.remat != "none" else hooks
    for block in self.blocks:
      x_BxLxD = block(x_BxLxD, positions_BxL, mask, static_hooks, causal, deterministic)
    if self.cfg.norm == "pre":
      x_BxLxD = self.final_norm(x_BxLxD)
    return x_BxLxD

  def logits(self, h_BxLxD, vocab_VxD=None):
    """The LM head: h·Eᵀ through the token table when tied, a separate V-way projection when untied. With char
    embeddings, tied: h·Mᵀ/√d through the combined vectors M (`vocab_vectors`; √d undoes the input scale, so the
    token part is the unscaled table, as without chars)."""
    if not self.cfg.tie_embeddings:
      return self.lm_head(h_BxLxD)
    if self.cfg.width != self.cfg.d_model:
      h_BxLxD = self.head_proj(h_BxLxD)  # concat widened the stream; project back to the table's width
    if self.cfg.uses_chars:
      vocab_VxD = self.vocab_vectors() if vocab_VxD is None else vocab_VxD
      if self.cfg.embed_scale:
        vocab_VxD = vocab_VxD / jnp.sqrt(float(self.cfg.d_model)).astype(vocab_VxD.dtype)
      return token.attend_rows(h_BxLxD, vocab_VxD.astype(h_BxLxD.dtype), self.cfg.dot_general)
    return self.token_embed.attend(h_BxLxD)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


# The modules that make the input token vectors: the token embedding (its table, a factorized table's e→d
# projection, and tied its d→e head_projection, the head's way back through that table), the character CNN and,
# for char_embeddings=concat, char_combine, which maps every [table row; CNN vector] to d_model. Not the head's own
# matrices: lm_head (untied) and head_proj (combine=concat's widened stream back to d_model).
EMBEDDING_MODULES = ("token_embed",) + CHAR_MODULES


def count_embedding_params(params) -> int:
  """Parameters of the token vectors (EMBEDDING_MODULES): summary.json's num_embedding_params."""
  return sum(count_params(params[name]) for name in EMBEDDING_MODULES if name in params)
