"""The character CNN's cost (research/embeddings/chars.py), and formulations of it that were tried, side by side.

  python3 benchmarks/char_cnn.py [--vocab 16384] [--chars 20] [--rounds 3] [--steps 3]

What a char-aware train step pays for `model.char_embeddings`: the CNN over every vocabulary entry's spelling, forward
and backward (the gradient of a sum of squares of its [V, Σ filters] output), at Kim et al.'s small filters and the
schema's char_dim. Spellings are random ids with lengths drawn uniformly from 3 to --chars (the shape and padding
of the word tokenizer's [V, C], not its letters). Every variant is a pure function of the same parameters, those of
`chars.CharCNN` itself, and the script checks that each computes the module's vectors (to float32 rounding) before
timing; rounds alternate the variants, and the best round is reported with the ratio to the module:

  module          chars.CharCNN as the model runs it: nn.Conv per width, tanh, max over time
  tanh_after_max  tanh after the max (tanh is increasing, so max∘tanh = tanh∘max in real arithmetic): one tanh per
                  feature instead of one per position
  argmax_vjp      tanh after the max, and the max's gradient through its argmax (one select per position, where
                  JAX's rule for max compares, counts ties and divides); ties within a spelling carry identical
                  windows, so the parameters' gradient is the same
  windows_matmul  each width as one matmul over its windows (the spelling's shifted copies concatenated)
  fused_matmul    every width in one matmul over 6-wide windows, narrower kernels zero-padded, invalid positions
                  masked before the max

docs/benchmarks.md ("The character CNN") has the figures and why the module stays as it is.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

VARIANTS = ("module", "tanh_after_max", "argmax_vjp", "windows_matmul", "fused_matmul")


def spellings(vocab: int, chars: int, num_chars: int, seed: int = 0):
  """int32 [vocab, chars]: BOW, random character ids, EOW, then PAD (chars.char_ids's layout)."""
  import numpy as np

  from research.embeddings import chars as chars_lib
  rng = np.random.default_rng(seed)
  ids = np.full((vocab, chars), chars_lib.PAD, np.int32)
  for i, n in enumerate(rng.integers(3, chars + 1, vocab)):
    ids[i, 0], ids[i, n - 1] = chars_lib.BOW, chars_lib.EOW
    ids[i, 1:n - 1] = rng.integers(chars_lib.FIRST_CHAR_ID, num_chars, n - 2)
  return ids


def variant_fn(name: str, filters):
  """(params, ids) -> [V, out] for one formulation, from `chars.CharCNN`'s parameters."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from research.embeddings import chars as chars_lib

  @jax.custom_vjp
  def max_over_time(x_VxLxF):
    return jnp.max(x_VxLxF, axis=1)

  def _fwd(x_VxLxF):
    idx_VxF = jnp.argmax(x_VxLxF, axis=1)
    return jnp.take_along_axis(x_VxLxF, idx_VxF[:, None], axis=1)[:, 0], (idx_VxF, x_VxLxF.shape[1])

  def _bwd(res, g_VxF):
    idx_VxF, length = res
    return (jnp.where(jnp.arange(length)[None, :, None] == idx_VxF[:, None], g_VxF[:, None], 0.0),)

  max_over_time.defvjp(_fwd, _bwd)

  def head(p, pooled_VxF):
    """The highway layer and the output map, as the module applies them."""
    hw = p["highway"]
    gate = nn.sigmoid(pooled_VxF @ hw["gate"]["kernel"] + hw["gate"]["bias"])
    h = gate * nn.relu(pooled_VxF @ hw["transform"]["kernel"] + hw["transform"]["bias"]) + (1 - gate) * pooled_VxF
    return h @ p["out"]["kernel"]

  def windows(x_VxCxE, width):
    length = x_VxCxE.shape[1] - width + 1
    return jnp.concatenate([x_VxCxE[:, i:i + length] for i in range(width)], axis=-1)  # [V, L, width·E]

  def fn(params, ids_VxC):
    p = params["params"]
    if name == "module":
      module = chars_lib.CharCNN(num_chars=p["chars"]["embedding"].shape[0], char_dim=p["chars"]["embedding"].shape[1],
                                 filters=filters, out_features=p["out"]["kernel"].shape[1])
      return module.apply(params, ids_VxC)
    x_VxCxE = jnp.take(p["chars"]["embedding"], ids_VxC, axis=0)
    x_VxCxE = jnp.where((ids_VxC != chars_lib.PAD)[..., None], x_VxCxE, 0.0)  # the module's zero padding vector
    pooled = []
    if name == "fused_matmul":
      # A filter wider than the longest spelling has a kernel as wide as the spelling (as in the module).
      kernels = [p[f"conv_{w}"]["kernel"] for w, _ in filters]
      widest = max(k.shape[0] for k in kernels)
      length = ids_VxC.shape[1]
      xp = jnp.pad(x_VxCxE, ((0, 0), (0, widest - 1), (0, 0)))
      kernel = jnp.concatenate([jnp.pad(k, ((0, widest - k.shape[0]), (0, 0), (0, 0))).reshape(
          widest * x_VxCxE.shape[-1], k.shape[2]) for k in kernels], axis=1)
      bias = jnp.concatenate([p[f"conv_{w}"]["bias"] for w, _ in filters])
      valid = np.concatenate([np.repeat((np.arange(length) <= length - k.shape[0])[:, None], k.shape[2], 1)
                              for k in kernels], 1)
      y = jnp.where(valid[None], windows(xp, widest)[:, :length] @ kernel, -jnp.inf)
      return head(p, jnp.tanh(max_over_time(y) + bias))
    for width, _ in filters:
      kernel, bias = p[f"conv_{width}"]["kernel"], p[f"conv_{width}"]["bias"]
      if name == "windows_matmul":
        y = windows(x_VxCxE, kernel.shape[0]) @ kernel.reshape(-1, kernel.shape[2])
        pooled.append(jnp.tanh(max_over_time(y) + bias))
        continue
      y = jax.lax.conv_general_dilated(x_VxCxE, kernel, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
      if name == "tanh_after_max":
        pooled.append(jnp.tanh(jnp.max(y, axis=1) + bias))
      elif name == "argmax_vjp":
        pooled.append(jnp.tanh(max_over_time(y) + bias))
      else:
        raise ValueError(f"variant {name!r}: expected one of {', '.join(VARIANTS)}")
    return head(p, jnp.concatenate(pooled, axis=-1))

  return fn


def differences(steps, params) -> dict:
  """{variant: (relative difference of the loss, largest relative difference of a parameter's gradient)} against
  the module's own step, `steps["module"]` (each step: params -> (loss, gradient))."""
  import jax
  import numpy as np
  ref_loss, ref_grad = jax.device_get(steps["module"](params))
  out = {}
  for name, step in steps.items():
    loss, grad = jax.device_get(step(params))
    grad_err = max(float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-30))
                   for g, r in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(ref_grad)))
    out[name] = (abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)), grad_err)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--vocab", type=int, default=16384)
  p.add_argument("--chars", type=int, default=20, help="C, the longest spelling (chars.MAX_CHARS caps it at 20)")
  p.add_argument("--char-dim", type=int, default=16)
  p.add_argument("--out", type=int, default=128, help="output width (d_model, as model.char_embeddings=sum)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=3, help="forward+backward passes per variant and round")
  p.add_argument("--variants", default=",".join(VARIANTS))
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  for v in variants:
    if v not in VARIANTS:
      p.error(f"--variants: {v!r} is not one of {', '.join(VARIANTS)}")
  if args.rounds < 1 or args.steps < 1:
    p.error(f"--rounds={args.rounds} --steps={args.steps}: each must be at least 1")
  if args.vocab < 1 or args.chars < 3:
    p.error(f"--vocab={args.vocab} --chars={args.chars}: need at least 1 entry and 3 characters (BOW, one, EOW)")

  import jax
  import jax.numpy as jnp
  from benchmarks.common import commit, cpu_info, cpu_text
  from research.embeddings import chars as chars_lib

  filters = chars_lib.parse_filters(chars_lib.DEFAULT_FILTERS)
  num_chars = chars_lib.FIRST_CHAR_ID + 60
  ids = jnp.asarray(spellings(args.vocab, args.chars, num_chars))
  module = chars_lib.CharCNN(num_chars=num_chars, char_dim=args.char_dim, filters=filters, out_features=args.out)
  params = module.init(jax.random.PRNGKey(0), ids)
  steps = {name: jax.jit(jax.value_and_grad(lambda prm, fn=variant_fn(name, filters): jnp.sum(fn(prm, ids) ** 2)))
           for name in dict.fromkeys(["module", *variants])}  # the module's step is the reference, timed or not
  for name, (out_err, grad_err) in differences(steps, params).items():
    if out_err > 1e-4 or grad_err > 1e-3:
      raise SystemExit(f"variant {name} differs from chars.CharCNN: loss {out_err:.2e}, gradient {grad_err:.2e} "
                       "(max relative differences)")
  best = {name: float("inf") for name in variants}
  for _ in range(args.rounds):
    for name in variants:
      t = time.perf_counter()
      for _ in range(args.steps):
        jax.block_until_ready(steps[name](params))
      best[name] = min(best[name], (time.perf_counter() - t) / args.steps)
  info = cpu_info()
  print(f"char CNN forward+backward, V={args.vocab} C={args.chars} char_dim={args.char_dim} filters "
        f"{chars_lib.DEFAULT_FILTERS} out={args.out}; best of {args.rounds} rounds x {args.steps}; commit {commit()}; "
        f"{cpu_text(info)}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}")
  print("| variant | ms per pass | speed vs module |")
  print("|---|--:|--:|")
  base = best.get("module")
  for name in variants:
    ratio = f"{base / best[name]:.2f}x" if base else ""
    print(f"| {name} | {best[name] * 1000:.0f} | {ratio} |")


if __name__ == "__main__":
  main()
