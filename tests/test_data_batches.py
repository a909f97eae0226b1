"""Token cache, packed batches (coverage, determinism, resume, sharding), evaluation windows, MLM masking."""

import contextlib
import functools
import json
import os
import re
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research.data import batches as B
from research.data import corpora
from research.data import tokenizers as T
from research.data.corpora import CorpusError, load_corpus
from tests.train_utils import tiny_config

HYP = settings(max_examples=40, deadline=None)
KEYS = ("inputs", "targets", "positions", "weights")


def stream(n):
  """A stream whose every token is distinct, so lost or duplicated tokens are visible (no special ids)."""
  return np.arange(10, 10 + n, dtype=np.uint32)


def check_format(batch, b, length):
  assert sorted(batch) == sorted(KEYS)
  for k in KEYS:
    assert batch[k].shape == (b, length), k
  assert batch["inputs"].dtype == batch["targets"].dtype == batch["positions"].dtype == np.int32
  assert batch["weights"].dtype == np.float32
  np.testing.assert_array_equal(batch["positions"], np.broadcast_to(np.arange(length), (b, length)))


def scored_targets(batches):
  return np.concatenate([b["targets"][b["weights"] > 0] for b in batches])


# ----------------------------------------------------------------------------------------------------------------
# CLM packing


@HYP
@given(n=st.integers(2, 300), length=st.integers(1, 17), batch=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_clm_epoch_scores_every_target_once(n, length, batch, seed):
  it = B.ClmBatches(stream(n), length, batch, seed=seed, num_epochs=1)
  out = list(it)
  assert len(out) == it.steps_per_epoch
  for b in out:
    check_format(b, batch, length)
    w = b["weights"] > 0
    np.testing.assert_array_equal(b["targets"][w], b["inputs"][w] + 1)  # targets are the next token
    assert (b["inputs"][~w & (b["inputs"] != 0)] >= 10).all()
  np.testing.assert_array_equal(np.sort(scored_targets(out)), stream(n)[1:])


def test_clm_shuffles_per_epoch_and_seed():
  ids = stream(2000)
  epoch = lambda it: [next(it)["inputs"][:, 0].tolist() for _ in range(it.steps_per_epoch)]  # each batch's rows
  a, b, c = (B.ClmBatches(ids, 16, 8, seed=s) for s in (0, 0, 1))
  epoch1, other_seed = epoch(a), epoch(c)
  assert epoch(b) == epoch1 != other_seed
  epoch2 = epoch(a)
  assert a.epoch == 2 and sorted(sum(epoch2, [])) != sum(epoch2, [])  # shuffled, not in stream order
  # Every epoch holds the same rows, each in a new order: the whole order differs, not only its first batches.
  assert sorted(sum(epoch2, [])) == sorted(sum(epoch1, [])) == sorted(sum(other_seed, []))
  assert epoch2 != epoch1 and epoch2 != other_seed


@HYP
@given(n=st.integers(50, 400), length=st.integers(3, 12), batch=st.integers(1, 4), cut=st.integers(0, 40),
       objective=st.sampled_from(B.OBJECTIVES))
def test_restore_mid_epoch_yields_exactly_the_remaining_batches(n, length, batch, cut, objective):
  make = functools.partial(B.PackedBatches, stream(n), length, batch, objective=objective, seed=7)
  ref = make()
  expected = [next(ref) for _ in range(cut + 3 * ref.steps_per_epoch)]
  it = make()
  for _ in range(cut):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # must survive a JSON round trip (checkpoint metadata)
  assert len(json.dumps(state)) < 300  # the bound docs/data.md states
  resumed = make(seed=123)  # the seed comes from the state
  resumed.set_state(state)
  for want in expected[cut:]:
    got = next(resumed)
    for k in KEYS:
      np.testing.assert_array_equal(got[k], want[k])


def test_state_small_even_for_large_runs():
  it = B.ClmBatches(stream(100_000), 512, 32, seed=2**31 - 1, process_index=1023, process_count=1024)
  it.epoch = 10**7
  assert len(json.dumps(it.get_state())) < 300  # the bound docs/data.md states


def test_set_state_rejects_other_layout():
  it = B.ClmBatches(stream(100), 8, 2)
  state = it.get_state()
  with pytest.raises(ValueError, match="seq_len=8 in the state but 16 here"):
    B.ClmBatches(stream(100), 16, 2).set_state(state)
  with pytest.raises(ValueError, match="process_count"):
    B.ClmBatches(stream(100), 8, 2, process_index=1, process_count=2).set_state(state)


def _rows(batches):
  """The multiset of real (non-padding) rows of one step across hosts, as tuples: hosts interleave differently."""
  return sorted(tuple(row) for b in batches for row, w in zip(b["inputs"].tolist(), b["weights"]) if w.any())


@HYP
@given(n=st.integers(2, 300), per_host=st.integers(1, 3), cut=st.integers(0, 30), saved_on=st.sampled_from([1, 2, 4]),
       resumed_on=st.sampled_from([1, 2, 4]), objective=st.sampled_from(B.OBJECTIVES))
def test_a_state_saved_on_some_hosts_resumes_on_any_number_with_the_same_rows_at_every_step(n, per_host, cut,
                                                                                            saved_on, resumed_on,
                                                                                            objective):
  global_batch = 4 * per_host

  def hosts(count):
    return [B.PackedBatches(stream(n), 6, global_batch // count, objective=objective, seed=5, process_index=h,
                            process_count=count) for h in range(count)]

  reference, saved = hosts(1)[0], hosts(saved_on)
  assert {it.steps_per_epoch for it in saved} == {reference.steps_per_epoch}  # the same steps whatever the hosts
  for _ in range(cut):
    next(reference)
    for it in saved:
      next(it)
  state = json.loads(json.dumps(saved[0].get_state()))  # what a checkpoint keeps: process 0's state
  resumed = hosts(resumed_on)
  for it in resumed:
    it.set_state(state)
  for _ in range(reference.steps_per_epoch + 2):  # across an epoch boundary
    assert _rows([next(it) for it in resumed]) == _rows([next(reference)])


def test_set_state_refuses_another_global_batch():
  state = B.ClmBatches(stream(100), 8, 4, process_index=1, process_count=2).get_state()  # 8 rows per step
  B.ClmBatches(stream(100), 8, 8).set_state(state)
  with pytest.raises(ValueError, match=r"a global batch of 8 rows \(batch_size=4 x process_count=2\) in the state "
                                       r"but 4 here \(batch_size=4 x process_count=1\)"):
    B.ClmBatches(stream(100), 8, 4).set_state(state)


@pytest.mark.parametrize("objective", B.OBJECTIVES)
@HYP
@given(n=st.integers(2, 500), seed=st.integers(0, 100))
def test_four_hosts_disjoint_and_complete(objective, n, seed):
  hosts = [B.PackedBatches(stream(n), 6, 3, objective=objective, seed=seed, process_index=h, process_count=4,
                           num_epochs=1) for h in range(4)]
  per_host = [list(h) for h in hosts]
  assert len({len(p) for p in per_host}) == 1  # lockstep: same number of steps on every host
  if objective == "clm":
    seen = [set(scored_targets(p).tolist()) for p in per_host]
    expected = stream(n)[1:]
  else:
    seen = [set(np.concatenate([b["inputs"][b["inputs"] >= 10] for b in p]).tolist()) for p in per_host]
    expected = stream(n)
  for i in range(4):
    for j in range(i + 1, 4):
      assert not seen[i] & seen[j]
  assert sorted(set.union(*seen)) == expected.tolist()
  assert sum(map(len, seen)) == len(expected)


# ----------------------------------------------------------------------------------------------------------------
# MLM packing


@HYP
@given(n=st.integers(2, 300), length=st.integers(3, 16), batch=st.integers(1, 4))
def test_mlm_rows_are_cls_chunk_sep_and_cover_the_stream(n, length, batch):
  out = list(B.MlmBatches(stream(n), length, batch, seed=3, num_epochs=1))
  tokens = []
  for b in out:
    check_format(b, batch, length)
    np.testing.assert_array_equal(b["targets"], b["inputs"])  # unmasked: masking is mask_tokens' job
    for row, w in zip(b["inputs"], b["weights"]):
      if w.sum() == 0:
        assert (row == T.PAD_ID).all()
        continue
      real = row[w > 0]
      assert real[0] == T.CLS_ID and real[-1] == T.SEP_ID and (row[w == 0] == T.PAD_ID).all()
      assert (w[:len(real)] == 1).all()  # padding only at the end
      tokens.append(real[1:-1])
  np.testing.assert_array_equal(np.sort(np.concatenate(tokens)), stream(n))


# ----------------------------------------------------------------------------------------------------------------
# evaluation


@HYP
@given(n=st.integers(2, 400), length=st.integers(1, 20), batch=st.integers(1, 5), data=st.data())
def test_eval_scores_every_target_exactly_once(n, length, batch, data):
  mode = data.draw(st.sampled_from(B.EVAL_MODES))
  stride = data.draw(st.integers(1, length)) if mode == "sliding" else None
  out = list(B.eval_batches(stream(n), length, batch, mode, stride))
  for b in out:
    check_format(b, batch, length)
    w = b["weights"] > 0
    np.testing.assert_array_equal(b["targets"][w], b["inputs"][w] + 1)
  np.testing.assert_array_equal(np.sort(scored_targets(out)), stream(n)[1:])
  assert len(out) == -(-B.num_eval_windows(n, length, mode, stride) // batch)


def test_sliding_scores_only_last_stride_with_full_context():
  n, length, stride = 100, 16, 4
  rows = [r for b in B.eval_batches(stream(n), length, 64, "sliding", stride) for r in zip(b["inputs"], b["weights"])]
  assert rows[0][1].sum() == length  # the first window scores everything
  for inputs, w in rows[1:]:
    if w.sum() == 0:
      continue
    scored = np.nonzero(w)[0]
    assert scored[0] == length - stride and len(scored) <= stride
    assert inputs[0] >= 10  # a full window of context precedes every scored token


@HYP
@given(n=st.integers(2, 300), length=st.integers(1, 12), mode=st.sampled_from(B.EVAL_MODES))
def test_eval_sharded_over_hosts_scores_each_target_once(n, length, mode):
  stride = max(1, length // 3) if mode == "sliding" else None
  per_host = [list(B.eval_batches(stream(n), length, 2, mode, stride, process_index=h, process_count=3))
              for h in range(3)]
  assert len({len(p) for p in per_host}) == 1
  np.testing.assert_array_equal(np.sort(np.concatenate([scored_targets(p) for p in per_host])), stream(n)[1:])


def test_eval_errors_name_the_value():
  with pytest.raises(ValueError, match="'strided'"):
    list(B.eval_batches(stream(10), 4, 2, "strided"))
  with pytest.raises(ValueError, match="stride=None"):
    list(B.eval_batches(stream(10), 4, 2, "sliding"))
  with pytest.raises(ValueError, match="stride=5"):
    list(B.eval_batches(stream(10), 4, 2, "sliding", 5))


def test_batch_constructor_errors_name_the_value():
  with pytest.raises(ValueError, match="'prefix'"):
    B.PackedBatches(stream(10), 4, 2, objective="prefix")
  with pytest.raises(ValueError, match="process_index=4"):
    B.ClmBatches(stream(10), 4, 2, process_index=4, process_count=4)


# ----------------------------------------------------------------------------------------------------------------
# MLM masking

V = 1000


@functools.lru_cache(maxsize=None)
def _masker(**kwargs):
  return jax.jit(functools.partial(B.mask_tokens, vocab_size=V, **kwargs))


def _tokens(seed, shape=(64, 512), pad_tail=True):
  tokens = np.array(jax.random.randint(jax.random.key(seed), shape, 0, V))
  if pad_tail:
    tokens[:, -64:] = T.PAD_ID
  return jnp.asarray(tokens, jnp.int32)


@pytest.mark.parametrize("rates", [(0.15, 0.8, 0.1), (0.3, 0.5, 0.25)])
def test_masking_rates_statistically(rates):
  select_rate, mask_rate, random_rate = rates
  tokens = _tokens(0)
  inputs, targets, weights = _masker(select_rate=select_rate, mask_rate=mask_rate, random_rate=random_rate)(
      jax.random.key(1), tokens)
  tokens, inputs, targets, sel = map(np.asarray, (tokens, inputs, targets, weights > 0))
  eligible = tokens >= 5
  n_elig, n_sel = eligible.sum(), sel.sum()

  def close(count, total, p):  # within 5 standard deviations of a binomial
    assert abs(count - total * p) < 5 * np.sqrt(total * p * (1 - p)) + 1, (count, total, p)

  close(n_sel, n_elig, select_rate)
  masked, kept = (inputs == T.MASK_ID) & sel, (inputs == tokens) & sel
  randomised = sel & ~masked & ~kept
  close(masked.sum(), n_sel, mask_rate)
  # a random draw equals the original token with probability 1/(V-5): count it with "kept"
  close(randomised.sum(), n_sel, random_rate * (1 - 1 / (V - 5)))
  np.testing.assert_array_equal(targets, tokens)
  assert weights.dtype == jnp.float32


@HYP
@given(seed=st.integers(0, 2**31 - 1))
def test_masking_never_touches_specials_and_is_deterministic(seed):
  special = np.asarray(_tokens(seed, (4, 64), pad_tail=False)) % 5  # all special
  mixed = np.where(np.arange(64)[None, :] % 2 == 0, special, np.asarray(_tokens(seed + 1, (4, 64), False)))
  mixed = jnp.asarray(mixed, jnp.int32)
  f = _masker(select_rate=0.9)
  inputs, _, weights = f(jax.random.key(seed), mixed)
  is_special = np.isin(np.asarray(mixed), T.SPECIAL_IDS)
  assert not np.asarray(weights)[is_special].any()
  np.testing.assert_array_equal(np.asarray(inputs)[is_special], np.asarray(mixed)[is_special])
  replaced = (np.asarray(inputs) != np.asarray(mixed)) & (np.asarray(inputs) != T.MASK_ID)
  assert (np.asarray(inputs)[replaced] >= 5).all()  # random replacements are never special ids
  again = f(jax.random.key(seed), mixed)
  np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(inputs))


def test_masking_same_without_jit():
  tokens = _tokens(3, (2, 32))
  eager = B.mask_tokens(jax.random.key(5), tokens, vocab_size=V)
  jitted = _masker()(jax.random.key(5), tokens)
  for a, b in zip(eager, jitted):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_masking_rejects_bad_rates():
  with pytest.raises(ValueError, match="0.8, 0.3"):
    B.mask_tokens(jax.random.key(0), _tokens(0, (1, 4)), vocab_size=V, mask_rate=0.8, random_rate=0.3)


# ----------------------------------------------------------------------------------------------------------------
# token cache


class CountingTokenizer:
  """Delegates to a real tokenizer and counts encode calls."""

  def __init__(self, tok):
    self.tok, self.calls = tok, 0

  def encode_batch(self, *args, **kwargs):
    self.calls += 1
    return self.tok.encode_batch(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self.tok, name)


@pytest.fixture(scope="module")
def lee_tok():
  lee = load_corpus("lee")
  return lee, T.train_tokenizer("bpe", lee.train, 400)


def test_cache_builds_once_loads_memmapped_and_rebuilds_on_new_key(lee_tok, tmp_path):
  lee, tok = lee_tok
  counting = CountingTokenizer(tok)
  built = B.build_or_load_cache("lee", counting, "bpe-400", tmp_path, corpus=lee)
  assert counting.calls == 3  # one batch per split
  for split, ids in built.items():
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert ids[0] == ids[-1] == T.SEP_ID
    docs = lee.split(split)
    assert (np.asarray(ids) == T.SEP_ID).sum() == len(docs) + 1
    first = tok.encode(docs[0], add_special_tokens=False).ids
    np.testing.assert_array_equal(ids[1:1 + len(first)], first)

  loaded = B.build_or_load_cache("lee", counting, "bpe-400", tmp_path)
  assert counting.calls == 3  # no tokenizing on a hit
  for split in built:
    np.testing.assert_array_equal(loaded[split], built[split])

  B.build_or_load_cache("lee", counting, "bpe-400-retrained", tmp_path, corpus=lee)
  assert counting.calls == 6  # a changed key rebuilds
  assert len(list((tmp_path / "tokens").iterdir())) == 2  # no temporary directories left behind


def test_cache_key_covers_corpus_tokenizer_and_versions(monkeypatch):
  base = B.cache_key("lee", "t")
  assert base == B.cache_key("lee", "t")
  assert len({base, B.cache_key("wikipedia-sample", "t"), B.cache_key("lee", "u")}) == 3
  monkeypatch.setattr(B, "TOKEN_CACHE_VERSION", "999")
  assert B.cache_key("lee", "t") != base
  # The generated passkey corpus also carries its generator's version; the other specs do not.
  passkey, lee = B.cache_key("passkey", "t"), B.cache_key("lee", "t")
  monkeypatch.setattr(B.passkey, "CORPUS_VERSION", "999")
  assert B.cache_key("passkey", "t") != passkey and B.cache_key("lee", "t") == lee


def _write_docs(path, prefix, n=40):
  path.write_text("".join(f"{prefix} number {i} of the test text\n" for i in range(n)), encoding="utf-8")


def test_cache_rebuilds_when_a_text_file_changes(lee_tok, tmp_path):
  _, tok = lee_tok
  data = tmp_path / "data"
  data.mkdir()
  for name in ("a", "b", "c"):
    _write_docs(data / f"{name}.txt", name)
  spec, cache = f"text:{data}", tmp_path / "cache"
  counting = CountingTokenizer(tok)
  first = B.build_or_load_cache(spec, counting, "k", cache)
  assert counting.calls == 3
  B.build_or_load_cache(spec, counting, "k", cache)
  assert counting.calls == 3  # unchanged files: a hit
  _write_docs(data / "b.txt", "edited b")  # new contents (and size) under the same name
  second = B.build_or_load_cache(spec, counting, "k", cache)
  assert counting.calls == 6
  assert not np.array_equal(second["train"], first["train"])  # the edit reached the streams
  (data / "d.txt").write_text("one more line\n", encoding="utf-8")  # a new file matched by the spec
  B.build_or_load_cache(spec, counting, "k", cache)
  assert counting.calls == 9


def test_a_file_edited_after_the_corpus_was_read_does_not_file_old_tokens_under_the_new_key(lee_tok, tmp_path):
  """The key of a `text:` cache is the fingerprint of the bytes the loaded corpus was cut from, not of a second read
  of the files: an edit between load_corpus and the cache build must not give the old documents' tokens the new
  content's key (a later start on the edited file would then train on the old text)."""
  _, tok = lee_tok
  data = tmp_path / "data.txt"
  _write_docs(data, "old")
  spec, cache = f"text:{data}", tmp_path / "cache"
  corpus = load_corpus(spec)
  old_fingerprint = corpora.corpus_fingerprint(spec)
  _write_docs(data, "new")  # edited while the run was tokenizing the text it read
  B.build_or_load_cache(spec, tok, "k", cache, corpus=corpus)
  edited = load_corpus(spec)
  later = B.build_or_load_cache(spec, tok, "k", cache)  # the next start, on the edited file
  for split, ids in B.encode_splits(edited, tok).items():
    np.testing.assert_array_equal(later[split], ids)
  assert corpus.fingerprint == old_fingerprint != edited.fingerprint  # one definition of the fingerprint
  assert B.cache_key(spec, "k", corpus=corpus) != B.cache_key(spec, "k")


def test_cache_key_covers_errors_policy_of_text_corpora(tmp_path):
  _write_docs(tmp_path / "a.txt", "a")
  spec = f"text:{tmp_path}"
  keys = {e: B.cache_key(spec, "t", e) for e in ("strict", "replace", "ignore")}
  assert len(set(keys.values())) == 3
  assert B.cache_key(spec, "t") == keys["strict"]
  # Bundled corpora are never decoded under errors=: their cache is shared whatever policy a caller passes.
  assert B.cache_key("lee", "t", "replace") == B.cache_key("lee", "t", "strict")


def test_cache_key_names_a_vanished_text_path(tmp_path):
  with pytest.raises(CorpusError, match="nope"):
    B.cache_key(f"text:{tmp_path}/nope.txt", "t")


def test_default_tokenizer_key_is_its_fingerprint(lee_tok, tmp_path):
  lee, tok = lee_tok
  B.build_or_load_cache("lee", tok, cache_dir=tmp_path, corpus=lee)
  meta = json.loads(next((tmp_path / "tokens").glob("*/meta.json")).read_text())
  assert meta["tokenizer"] == T.fingerprint(tok) and meta["corpus"] == "lee"
  assert meta["num_tokens"]["train"] > 0


def test_uint32_for_large_vocabularies():
  assert B.id_dtype(65536) == np.uint16 and B.id_dtype(65537) == np.uint32


def test_end_to_end_lee_clm_batches(lee_tok, tmp_path):
  lee, tok = lee_tok
  ids = B.build_or_load_cache("lee", tok, "k", tmp_path, corpus=lee)["valid"]
  out = list(B.ClmBatches(ids, 32, 4, num_epochs=1))
  assert scored_targets(out).size == ids.size - 1
  assert max(int(b["inputs"].max()) for b in out) < tok.get_vocab_size()


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(2, 400), seq_len=st.integers(4, 64), batch=st.integers(1, 12),
       objective=st.sampled_from(["clm", "mlm"]))
def test_a_stream_shorter_than_one_batch_gets_a_note_saying_how_many_rows_each_step_trains_on(tokens, seq_len, batch,
                                                                                             objective):
  """The note of research-train (loop.stream_notes) against what the batcher really yields: a note exactly when the
  first batch holds fewer real rows (any weight) than train.batch_size, and it names that number."""
  import ml_collections
  from research.train import loop
  config = ml_collections.ConfigDict({"objective": objective, "data": {"seq_len": seq_len},
                                      "train": {"batch_size": batch}})
  ids = stream(tokens)
  first = next(iter(B.PackedBatches(ids, seq_len, batch, objective=objective)))
  real = int((first["weights"].sum(axis=1) > 0).sum())
  notes = loop.stream_notes(config, ids)
  assert bool(notes) == (real < batch)
  if notes:
    assert f"packs into {real} row" in notes[0] and f"train.batch_size={batch}" in notes[0]


def test_a_damaged_token_cache_is_tokenized_again_not_read(tmp_path, capsys):
  """A cache file truncated by a full disk (np.load refuses it), or one shorter than meta.json says, is moved aside
  and rebuilt with a note; the streams equal a fresh cache's."""
  corpus = load_corpus("lee")
  tok = T.train_tokenizer("char", corpus.train, 100)
  fresh = {s: np.array(v) for s, v in B.build_or_load_cache("lee", tok, cache_dir=tmp_path).items()}
  (cache,) = (tmp_path / "tokens").iterdir()
  for damage in ("truncate", "shorter"):
    path = cache / "train.npy"
    if damage == "truncate":
      path.write_bytes(path.read_bytes()[:1000])
    else:
      np.save(path, fresh["train"][:-5])
    again = B.build_or_load_cache("lee", tok, cache_dir=tmp_path)
    assert "is damaged" in capsys.readouterr().out
    assert all(np.array_equal(again[s], fresh[s]) for s in fresh)
  assert [p.name for p in (tmp_path / "tokens").iterdir()] == [cache.name]  # nothing left aside


def test_a_token_cache_entry_without_meta_json_is_built_again_in_train_and_evaluate(tmp_path, capsys):
  """An entry directory whose meta.json is gone (an entry is renamed into place with it) is damaged: moved aside and
  built again with a note, by the trainer's loader and research-evaluate's (`extrapolation.load_run`) alike (was
  "[Errno 39] Directory not empty" on every rerun, which research-evaluate blamed on an unwritable cache)."""
  from research.evaluate import extrapolation
  from research.train import loop
  tok = T.train_tokenizer("char", load_corpus("lee").train, 100)
  fresh = {s: np.array(v) for s, v in B.build_or_load_cache("lee", tok, cache_dir=tmp_path).items()}
  (cache,) = (tmp_path / "tokens").iterdir()
  run = tmp_path / "run"
  run.mkdir()
  config = tiny_config(**{"data.corpus": "lee", "data.tokenizer": "char", "data.vocab_size": 100,
                          "data.cache_dir": str(tmp_path)})
  (run / loop.CONFIG_FILE).write_text(json.dumps(config.to_dict()))
  T.save_tokenizer(tok, run)
  past_the_cache = pytest.raises(extrapolation.EvaluationError, match="has no checkpoints")  # the run has none
  for load, ends in ((lambda: B.build_or_load_cache("lee", tok, cache_dir=tmp_path), contextlib.nullcontext()),
                     (lambda: extrapolation.load_run(run), past_the_cache)):
    (cache / "meta.json").unlink()
    with ends:
      load()
    assert f"note: the token cache {str(cache)!r} is damaged (no meta.json)" in capsys.readouterr().out
    again = B.build_or_load_cache("lee", tok, cache_dir=tmp_path)
    assert all(np.array_equal(again[s], fresh[s]) for s in fresh) and capsys.readouterr().out == ""
  assert [p.name for p in (tmp_path / "tokens").iterdir()] == [cache.name]  # nothing left aside


def test_a_damaged_cached_tokenizer_is_trained_again(tmp_path, capsys):
  corpus = load_corpus("lee")
  tok, directory = T.build_or_load_tokenizer("bpe", corpus, 300, cache_dir=tmp_path)
  path = T.tokenizer_path(directory)
  path.write_text(path.read_text()[:500])
  again, same = T.build_or_load_tokenizer("bpe", corpus, 300, cache_dir=tmp_path)
  assert same == directory and "is damaged" in capsys.readouterr().out
  assert again.to_str() == tok.to_str()  # bpe trains deterministically
  assert T.load_tokenizer(directory).to_str() == tok.to_str()


def test_a_flipped_bit_in_a_cached_stream_is_found_and_tokenized_again(tmp_path, capsys):
  """A cached stream whose bytes changed but still hold valid ids (a bit flip, an edit) would be trained on: its
  SHA-256 in meta.json, recorded at the build, differs, so it is rebuilt with a note. A cache from before the
  checksums were kept is rebuilt once too."""
  corpus = load_corpus("lee")
  tok = T.train_tokenizer("char", corpus.train, 100)
  fresh = {s: np.array(v) for s, v in B.build_or_load_cache("lee", tok, cache_dir=tmp_path).items()}
  (cache,) = (tmp_path / "tokens").iterdir()
  flipped = fresh["train"].copy()
  flipped[1000] ^= 1  # another valid id of the vocabulary
  assert flipped[1000] < tok.get_vocab_size()
  np.save(cache / "train.npy", flipped)
  again = B.build_or_load_cache("lee", tok, cache_dir=tmp_path)
  assert "train.npy's checksum is not the one meta.json recorded" in capsys.readouterr().out
  assert all(np.array_equal(again[s], fresh[s]) for s in fresh)
  B.build_or_load_cache("lee", tok, cache_dir=tmp_path)
  assert capsys.readouterr().out == ""  # a sound cache loads without a note


def _cache_without_checksums(tok, cache_dir):
  """A filled token cache as the code before the checksums wrote it (meta.json without `sha256`): its directory
  and its streams."""
  fresh = {s: np.array(v) for s, v in B.build_or_load_cache("lee", tok, cache_dir=cache_dir).items()}
  (cache,) = (cache_dir / "tokens").iterdir()
  meta = json.loads((cache / "meta.json").read_text())
  del meta["sha256"]
  (cache / "meta.json").write_text(json.dumps(meta))
  return cache, fresh


@contextlib.contextmanager
def read_only(path):
  """`path` and everything below it unwritable for this process, as a read-only mount is: chmod for a user, and for
  root, whom chmod does not stop, the immutable attribute as well (chattr +i); skipped where neither holds."""
  every = [path, *path.rglob("*")]
  immutable = False
  try:
    for p in every:
      p.chmod(0o555 if p.is_dir() else 0o444)
    if _writable(path):
      immutable = subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode == 0
      if not immutable or _writable(path):
        pytest.skip("cannot make a read-only directory here (root, and no chattr +i on this file system)")
    yield path
  finally:
    if immutable:
      subprocess.run(["chattr", "-R", "-i", str(path)], check=True)
    for p in every:
      p.chmod(0o755 if p.is_dir() else 0o644)


def _writable(directory) -> bool:
  try:
    os.rmdir(tempfile.mkdtemp(dir=directory))
  except OSError:
    return False
  return True


def test_a_token_cache_from_before_the_checksums_is_used_as_it_is_and_gains_them(tmp_path, capsys):
  """A cache written before the checksums were kept is not tokenized again (a read-only one could not be): its
  lengths are checked, and its meta.json gains the SHA-256 of its streams as they are, with a note, once."""
  tok = T.train_tokenizer("char", load_corpus("lee").train, 100)
  cache, fresh = _cache_without_checksums(tok, tmp_path)
  counting = CountingTokenizer(tok)
  loaded = B.build_or_load_cache("lee", counting, cache_dir=tmp_path)
  assert counting.calls == 0 and all(np.array_equal(loaded[s], fresh[s]) for s in fresh)
  assert "had no checksums (built before they were kept)" in capsys.readouterr().out
  sha = json.loads((cache / "meta.json").read_text())["sha256"]
  assert sha == {s: B.stream_sha256(fresh[s]) for s in fresh}
  B.build_or_load_cache("lee", counting, cache_dir=tmp_path)
  assert capsys.readouterr().out == "" and counting.calls == 0  # once
  assert [p.name for p in (tmp_path / "tokens").iterdir()] == [cache.name]


def test_a_read_only_token_cache_from_before_the_checksums_is_used_and_a_damaged_one_is_one_line(tmp_path, capsys):
  """A read-only, filled cache written before the checksums is used as it is (its meta.json cannot gain them): no
  tokenizing, no note, no error. A damaged entry in a read-only cache cannot be built again there: one line (a
  CorpusError, which every command prints as `error: ...`) naming the entry, the damage and data.cache_dir, in
  research-train's loader and research-evaluate's and research-analyze's (`extrapolation.load_run`) alike."""
  from research.evaluate import extrapolation
  from research.train import loop
  tok = T.train_tokenizer("char", load_corpus("lee").train, 100)
  cache_dir = tmp_path / "cache"
  cache, fresh = _cache_without_checksums(tok, cache_dir)
  before = (cache / "meta.json").read_text()
  counting = CountingTokenizer(tok)
  with read_only(cache_dir):
    loaded = B.build_or_load_cache("lee", counting, cache_dir=cache_dir)
    assert counting.calls == 0 and all(np.array_equal(loaded[s], fresh[s]) for s in fresh)
    assert capsys.readouterr().out == "" and (cache / "meta.json").read_text() == before
  B.build_or_load_cache("lee", tok, cache_dir=cache_dir)  # writable again: the checksums are recorded
  flipped = fresh["train"].copy()
  flipped[1000] ^= 1
  np.save(cache / "train.npy", flipped)
  run = tmp_path / "run"
  run.mkdir()
  config = tiny_config(**{"data.corpus": "lee", "data.tokenizer": "char", "data.vocab_size": 100,
                          "data.cache_dir": str(cache_dir)})
  (run / loop.CONFIG_FILE).write_text(json.dumps(config.to_dict()))
  T.save_tokenizer(tok, run)
  with read_only(cache_dir):
    for load in (lambda: B.build_or_load_cache("lee", tok, cache_dir=cache_dir),
                 lambda: extrapolation.load_run(run)):
      with pytest.raises(CorpusError) as e:
        load()
      message = str(e.value)
      assert "\n" not in message and f"the token cache {str(cache)!r} is damaged (train.npy's checksum" in message
      assert f"the data cache {str(cache_dir)!r} (data.cache_dir) cannot be written" in message
      assert e.value.__context__ is None and e.value.__cause__ is None  # research-train: not "could not be written"
      assert "tokenizing" not in capsys.readouterr().out
    assert np.array_equal(np.load(cache / "train.npy"), flipped)  # left as it was
  B.build_or_load_cache("lee", tok, cache_dir=cache_dir)  # writable: built again, with a note
  assert "is damaged" in capsys.readouterr().out


def test_research_evaluate_names_data_cache_dir_when_it_is_not_a_directory_or_cannot_be_written(tmp_path):
  """A run whose config.json's data.cache_dir is a file, or a read-only directory without the run's streams, is one
  line naming data.cache_dir (was "[Errno 20] Not a directory: .../tokens", or an OSError traceback)."""
  from research.evaluate import extrapolation
  from research.train import loop
  tok = T.train_tokenizer("char", load_corpus("lee").train, 100)
  run, cache_dir = tmp_path / "run", tmp_path / "cache"
  run.mkdir()
  cache_dir.write_text("not a directory")
  T.save_tokenizer(tok, run)
  config = tiny_config(**{"data.corpus": "lee", "data.tokenizer": "char", "data.vocab_size": 100,
                          "data.cache_dir": str(cache_dir)})
  (run / loop.CONFIG_FILE).write_text(json.dumps(config.to_dict()))
  named = f"^run {re.escape(repr(str(run)))}: data.cache_dir {re.escape(repr(str(cache_dir)))}"
  with pytest.raises(extrapolation.EvaluationError, match=f"{named} is not a directory"):
    extrapolation.load_run(run)
  cache_dir.unlink()
  cache_dir.mkdir()
  with read_only(cache_dir), pytest.raises(extrapolation.EvaluationError, match=f"{named} could not be written"):
    extrapolation.load_run(run)


def test_the_temporary_directory_of_a_killed_cache_build_is_removed_by_a_later_build(lee_tok, tmp_path):
  """A build killed mid-way leaves `tokens/.<key>.xxxx`; a later build removes it once no process holds it (a
  live build holds its directory's flock) and it is older than an hour; a live or a young one is left alone."""
  import fcntl
  import os
  import time
  lee, tok = lee_tok
  root = tmp_path / "tokens"
  old = time.time() - 3 * 3600  # older than B.ABANDONED_AFTER_S
  killed, live, young = (root / f".{name}.tmp" for name in ("killed", "live", "young"))
  for d in (killed, live, young):
    d.mkdir(parents=True)
    (d / "train.npy").write_bytes(b"half")
  for d in (killed, live):
    os.utime(d, (old, old))
  held = os.open(live, os.O_RDONLY)
  fcntl.flock(held, fcntl.LOCK_EX)  # as a build in another process holds it
  try:
    B.build_or_load_cache("lee", tok, "k", tmp_path, corpus=lee)
    assert not killed.exists() and live.exists() and young.exists()
  finally:
    os.close(held)
  assert B.remove_abandoned(root) == [live]  # its writer is gone now
  assert sorted(p.name for p in root.iterdir()) == sorted([B.cache_key("lee", "k"), young.name])
