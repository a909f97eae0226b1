"""Character-aware word embeddings: Kim et al. 2016's character CNN over each vocabulary entry's spelling.

    ids_VxC = char_ids(tokens, kind)          # numpy int32 [V, C], computed once by the trainer from the tokenizer
    cnn = CharCNN(num_chars=..., char_dim=16, filters=parse_filters("1:25,2:50"), out_features=d_model)
    vectors_VxD = cnn(ids_VxC)                 # every vocabulary row at once, once per forward pass

The CNN (Kim, Jernite, Sontag & Rush 2016, "Character-Aware Neural Language Models"): a char_dim-wide embedding per
character, one 1-D convolution per filter width (no padding, tanh), max-pool over time, a highway layer
(y = t ⊙ relu(W_h x + b_h) + (1 − t) ⊙ x, t = σ(W_t x + b_t), b_t initialised to −2 as in the paper), then a linear
map to the model width (for `model.char_embeddings=sum`; for `concat` the model projects [token; chars] itself).

**Spellings** (`spelling`): a token's word form as the pretrained-vector alignment computes it
(`pretrained.token_word`: byte-level `Ġthe` → `the`, `▁the` → `the`, `##ing` → `ing`, the word tokenizer's token
itself), between a begin-of-word and an end-of-word character (Kim et al.'s `{` and `}`; here reserved ids, so
they cannot collide with the text). A piece that stands for no text (a byte-level piece of a multi-byte character
such as the lead byte `é` = 0xE9, or a piece of whitespace alone such as `Ġ`) is spelled with its raw token string
(GPT-2's byte alphabet: `Ã`, `¤`, ...) after a mark (`model.char_spelling=marked`, the default): the id after
the last character's, which no character has, so such a piece never shares a spelling with a piece of text
(`é` the lead byte against `Ã©`, which decodes to the character é). `raw` leaves the mark out, as runs before that
field had it (they resume and evaluate with the spellings they trained with); there `é` and `Ã©` collide.
The five special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]) are spelled with one reserved character each (ids
3–7), not with their bracketed names. Characters get ids from 8 up in sorted order of the vocabulary's characters
(then the mark, only when some piece needs it: a vocabulary in which every piece stands for text, such as the word
tokenizer's, has the same ids under either value);
id 0 pads, with a zero vector that gets no gradient (`model.char_padding=zero`, as in Kim et al.'s code; `learned`
makes it an ordinary row, as runs before that field had it), so a window over padding contributes tanh(bias) alone.
A filter wider than the longest spelling C is narrowed to C (one window over the whole spelling). Spellings are cut
at `MAX_CHARS` = 20 characters including the two word-boundary marks (C = the longest spelling, capped): a longer
word keeps its first 18 characters and its end mark.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.embeddings import pretrained

MAX_CHARS = 20
PAD, BOW, EOW = 0, 1, 2
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # the tokenizers' five, in id order
FIRST_CHAR_ID = 3 + len(SPECIAL_TOKENS)
SPELLINGS = ("marked", "raw")  # model.char_spelling: how a piece that stands for no text is spelled
# Kim et al.'s small model: widths 1..6 with 25·w filters each (525 features).
DEFAULT_FILTERS = "1:25,2:50,3:75,4:100,5:125,6:150"


def parse_filters(spec: str) -> tuple[tuple[int, int], ...]:
  """"1:25,2:50" → ((1, 25), (2, 50)): (width, number of filters) per convolution.

  Each width once: the convolution of width w is the module `conv_<w>` (a repeated width would be a second module
  of that name, a flax error after the tokenizer was built; "1:25,01:10" repeats width 1 too)."""
  out = []
  for part in str(spec).split(","):
    try:
      width, count = (int(x) for x in part.split(":"))
    except ValueError:
      raise ValueError(f"model.char_filters={spec!r}: expected 'width:count,...' such as {DEFAULT_FILTERS!r}") \
          from None
    if width < 1 or count < 1:
      raise ValueError(f"model.char_filters={spec!r}: widths and counts must be >= 1")
    if any(width == w for w, _ in out):
      raise ValueError(f"model.char_filters={spec!r} repeats width {width}: each width once (give it the sum of the "
                       f"counts instead)")
    out.append((width, count))
  if not out:
    raise ValueError(f"model.char_filters={spec!r} names no convolution")
  return tuple(out)


def spelling(token: str, kind: str) -> str:
  """The characters a token is spelled with (without the word-boundary marks, and without the mark that `char_ids`
  puts before a piece that stands for no text, whose spelling is its raw token string); see the module docstring."""
  word = pretrained.token_word(token, kind)
  return word if word else token


def char_ids(tokens: Sequence[str], kind: str, max_chars: int = MAX_CHARS, spelling_of: str = "marked") -> np.ndarray:
  """int32 [V, C]: BOW, the spelling's character ids, EOW, then PAD; C = the longest, at most `max_chars`.

  `spelling_of` (model.char_spelling): `marked` puts the mark (the id after the last character's) after BOW in the
  row of a piece that stands for no text; `raw` does not (runs before the field)."""
  if spelling_of not in SPELLINGS:
    raise ValueError(f"model.char_spelling={spelling_of!r} is not one of {', '.join(SPELLINGS)}")
  words = [None if t in SPECIAL_TOKENS else pretrained.token_word(t, kind) for t in tokens]
  spelled = [None if w is None else w or t for t, w in zip(tokens, words)]  # as `spelling`, each word found once
  marked = [w == "" and spelling_of == "marked" for w in words]
  alphabet = sorted({c for s in spelled if s for c in s})
  index = {c: FIRST_CHAR_ID + i for i, c in enumerate(alphabet)}
  mark = FIRST_CHAR_ID + len(alphabet)
  rows = []
  for token, s, m in zip(tokens, spelled, marked):
    if s is None:
      rows.append([BOW, 3 + SPECIAL_TOKENS.index(token), EOW])
    else:
      head = [BOW, mark] if m else [BOW]
      rows.append(head + [index[c] for c in s][:max_chars - 1 - len(head)] + [EOW])
  width = min(max(len(r) for r in rows), max_chars)
  out = np.full((len(rows), width), PAD, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


class Highway(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_NxF):
    f = x_NxF.shape[-1]
    dense = lambda name, **kw: nn.Dense(f, dtype=self.dtype, param_dtype=jnp.float32, name=name, **kw)  # noqa: E731
    gate = nn.sigmoid(dense("gate", bias_init=nn.initializers.constant(-2.0))(x_NxF))
    return gate * nn.relu(dense("transform")(x_NxF)) + (1.0 - gate) * x_NxF


class CharCNN(nn.Module):
  """[V, C] char ids → [V, out_features] vectors (or [V, Σ filters] with out_features = 0)."""

  num_chars: int
  char_dim: int = 16
  filters: tuple[tuple[int, int], ...] = parse_filters(DEFAULT_FILTERS)
  out_features: int = 0
  dtype: Any = jnp.float32
  zero_padding: bool = True  # the PAD character's vector is 0 and gets no gradient (Kim et al.'s code)

  @nn.compact
  def __call__(self, ids_VxC):
    x_VxCxE = nn.Embed(self.num_chars, self.char_dim, param_dtype=jnp.float32, dtype=self.dtype,
                       name="chars")(ids_VxC)
    if self.zero_padding:  # the table keeps a row for PAD (one tree either way); masked, it is 0 and gets no gradient
      x_VxCxE = jnp.where((ids_VxC != PAD)[..., None], x_VxCxE, jnp.zeros((), x_VxCxE.dtype))
    length = ids_VxC.shape[1]
    pooled = []
    for width, count in self.filters:
      # A filter wider than the longest spelling sees the whole (padded) spelling once.
      w = min(width, length)
      conv = nn.Conv(count, (w,), padding="VALID", param_dtype=jnp.float32, dtype=self.dtype,
                     name=f"conv_{width}")(x_VxCxE)
      pooled.append(jnp.max(jnp.tanh(conv), axis=1))  # max over time
    h_VxF = Highway(dtype=self.dtype, name="highway")(jnp.concatenate(pooled, axis=-1))
    if self.out_features:
      h_VxF = nn.Dense(self.out_features, use_bias=False, param_dtype=jnp.float32, dtype=self.dtype,
                       name="out")(h_VxF)
    return h_VxF


class Constant:
  """A numpy array as a module attribute: hashed and compared by identity (flax modules hash their fields)."""

  def __init__(self, array: np.ndarray):
    self.array = np.asarray(array)

  def __hash__(self):
    return id(self)

  def __eq__(self, other):
    return self is other


def as_jax(ids: Constant | np.ndarray) -> jax.Array:
  return jnp.asarray(ids.array if isinstance(ids, Constant) else ids)
