"""FIRE: Functional Interpolation for Relative positions (Li et al. 2023, "Functional Interpolation for Relative
Positions Improves Long Context Transformers", arXiv 2310.04418, eq. 6 and appendix code).

    b_h(i, j) = f_θ( ψ(i − j) / ψ(max(L, i)) ),   ψ(x) = log(c·x + 1),   L = |L_mult| · L_init

f_θ is an MLP 1 → 32 → H with a ReLU (one output per head); c (init 0.1) and the multiplier L_mult (init 1) are
learned, L_init is fixed (`model.fire_init_length`, default the paper's 512). Dividing by ψ(max(L, i)) maps every
query's distances into [0, 1] (progressive interpolation), so a longer sequence never feeds the MLP an input it has
not seen. Each attention layer owns its FIRE (per_layer), as in the paper.

What we follow: the paper's appendix PyTorch module (`FIRE.forward`): abs(c·(i − j)) inside ψ, the normaliser
ψ(max(|L_mult·L_init|, i)) plus eps = 1e-6, PyTorch's default Linear init (kaiming-uniform, i.e. uniform in
±1/√fan_in for weights and biases). The reference is decoder-only; an encoder uses |i − j| and normalises by
ψ(max(L, i, j)) so that keys after the query also map into [0, 1] (identical to the reference wherever j ≤ i).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.embeddings.registry import PositionalScheme, bias_for_shared_rows, register

MLP_WIDTH = 32
INIT_C = 0.1
EPS = 1e-6
# The MLP's hidden activations [rows, L, S, 32] are computed in blocks of query rows when they would exceed this many
# elements (256 MiB of float32): a 4096-token evaluation needs 2.1 GB per layer in one piece, 8192 tokens 8.6 GB.
# Training shapes (one shared row of 256 × 256: 2 M) stay in one piece, so their numerics do not change.
HIDDEN_BUDGET = 1 << 26
BLOCK_BUDGET = 1 << 24  # elements of one block's hidden activations (64 MiB)


def fire_inputs(q_positions_BxL, k_positions_BxS, c, threshold, causal: bool):
  """The MLP's input ψ(|i − j|) / (ψ(max(threshold, i)) + eps), ψ(x) = log(|c·x| + 1), as [B, L, S] in float32;
  an encoder normalises by max(threshold, i, j). In [0, 1] for every j ≤ i (and for every j in an encoder)."""
  i_BxLx1 = q_positions_BxL.astype(jnp.float32)[:, :, None]
  j_Bx1xS = k_positions_BxS.astype(jnp.float32)[:, None, :]
  psi = lambda x: jnp.log(jnp.abs(c * x) + 1.0)  # noqa: E731
  normaliser = jnp.maximum(i_BxLx1, threshold) if causal else jnp.maximum(jnp.maximum(i_BxLx1, j_Bx1xS), threshold)
  return psi(jnp.abs(i_BxLx1 - j_Bx1xS)) / (psi(normaliser) + EPS)


def torch_linear_init(fan_in: int):
  """PyTorch's nn.Linear default for weights and biases alike: uniform in ±1/√fan_in (kaiming_uniform, a = √5)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


@register("fire")
class FirePositions(PositionalScheme):
  """FIRE bias per layer: params mlp_hidden (1→32, bias), mlp_out (32→H, bias), c (scalar), length_multiplier
  (scalar). The [B, L, S, 32] hidden activations make it the most memory-hungry bias here (as in the paper); above
  HIDDEN_BUDGET they are computed in blocks of query rows (docs/benchmarks.md, "FIRE's MLP in query blocks")."""

  per_layer = True

  def setup(self):
    dense = lambda features, fan_in, name: nn.Dense(  # noqa: E731
        features, kernel_init=torch_linear_init(fan_in), bias_init=torch_linear_init(fan_in), dtype=jnp.float32,
        param_dtype=jnp.float32, name=name)
    self.mlp_hidden = dense(MLP_WIDTH, 1, "mlp_hidden")
    self.mlp_out = dense(self.cfg.num_heads, MLP_WIDTH, "mlp_out")
    self.c = self.param("c", nn.initializers.constant(INIT_C), (), jnp.float32)
    self.length_multiplier = self.param("length_multiplier", nn.initializers.ones, (), jnp.float32)

  def bias(self, q_positions_BxL, k_positions_BxL):
    # Once for the batch when its rows share positions: the [B, L, S, 32] hidden layer is most of FIRE's cost.
    return bias_for_shared_rows(self, FirePositions.rows_bias, q_positions_BxL, k_positions_BxL)

  def rows_bias(self, q_positions_BxL, k_positions_BxL):
    threshold = jnp.abs(self.length_multiplier * self.cfg.fire_init_length)
    x_BxLxS = fire_inputs(q_positions_BxL, k_positions_BxL, self.c, threshold, self.cfg.causal)
    if x_BxLxS.size * MLP_WIDTH > HIDDEN_BUDGET and not self.is_initializing():
      return mlp_in_query_blocks(x_BxLxS, self.mlp_hidden.variables["params"], self.mlp_out.variables["params"])
    bias_BxLxSxH = self.mlp_out(nn.relu(self.mlp_hidden(x_BxLxS[..., None])))
    return jnp.moveaxis(bias_BxLxSxH, -1, 1)  # [B, H, L, S]


def mlp_in_query_blocks(x_BxLxS, hidden_params, out_params, block_budget: int = BLOCK_BUDGET):
  """The bias f_θ(x) as [B, H, L, S], computed in a loop over blocks of query rows written in place into one
  output, so only one block's [B, rows, S, 32] hidden activations are live at a time (the same two Dense layers,
  applied to the given params)."""
  B, L, S = x_BxLxS.shape
  H = out_params["bias"].shape[0]
  rows = max(1, min(L, block_budget // (B * S * MLP_WIDTH)))
  blocks = -(-L // rows)
  x_BxPxS = jnp.pad(x_BxLxS, ((0, 0), (0, blocks * rows - L), (0, 0)))  # P = blocks·rows ≥ L (no copy when equal)
  # Unbound copies of the two layers (parent=None: not submodules of the calling module), applied to given params.
  hidden = nn.Dense(MLP_WIDTH, dtype=jnp.float32, param_dtype=jnp.float32, parent=None)
  out = nn.Dense(H, dtype=jnp.float32, param_dtype=jnp.float32, parent=None)

  def block(i, bias_BxHxPxS):
    x_BxRxS = jax.lax.dynamic_slice_in_dim(x_BxPxS, i * rows, rows, axis=1)
    y_BxRxSxH = out.apply({"params": out_params}, nn.relu(hidden.apply({"params": hidden_params}, x_BxRxS[..., None])))
    return jax.lax.dynamic_update_slice_in_dim(bias_BxHxPxS, jnp.moveaxis(y_BxRxSxH, -1, 1), i * rows, axis=2)

  bias_BxHxPxS = jax.lax.fori_loop(0, blocks, block, jnp.zeros((B, H, blocks * rows, S), jnp.float32))
  return bias_BxHxPxS[:, :, :L]
