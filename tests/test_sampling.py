"""The jitted KV-cache sampler: parity with transformers.generate, log-probs, sampling statistics."""

import dataclasses

from hf_utils import make_hf_model, save_hf_model
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

from entropix_rl import padding, sampling
from entropix_rl.models import forward, hf, init_params, tiny_config


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def _left_padded(lengths, vocab, seed=0, pad=0):
  rng = np.random.RandomState(seed)
  width = max(lengths)
  tokens = np.full((len(lengths), width), pad, np.int64)
  for row, n in enumerate(lengths):
    tokens[row, width - n :] = rng.randint(3, vocab, n)
  return tokens


@pytest.mark.parametrize(
    "model_type,window", [("qwen2", None), ("llama", None), ("qwen3", None), ("mistral", 6)]
)
def test_greedy_matches_transformers_generate(tmp_path, model_type, window):
  """Mistral's window of 6 is shorter than prompt + generation (up to 21 tokens), so it masks
  the prompt's early tokens both in the prefill and in every decode step."""
  model = make_hf_model(
      model_type,
      tie=model_type == "llama",
      seed=3,
      sliding_window=window,
      head_dim=16 if model_type == "qwen3" else None,
  )
  cfg, params = hf.load(save_hf_model(model, str(tmp_path / "ckpt")))
  assert cfg.sliding_window == window
  lengths = [5, 9, 3, 7]
  prompts = _left_padded(lengths, cfg.vocab_size)
  attention = np.arange(prompts.shape[1])[None] >= prompts.shape[1] - np.array(lengths)[:, None]
  new = 12
  with torch.no_grad():
    reference = model.generate(
        torch.tensor(prompts),
        attention_mask=torch.tensor(attention),
        do_sample=False,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=0,
        eos_token_id=None,
    ).numpy()[:, prompts.shape[1] :]
  sampler_cfg = sampling.SamplerConfig(greedy=True, max_new_tokens=new)
  rollout = sampling.sample(cfg, params, prompts, lengths, jax.random.PRNGKey(0), sampler_cfg)
  np.testing.assert_array_equal(np.asarray(rollout.completion_tokens), reference)
  assert np.asarray(rollout.truncated).all()
  assert (np.asarray(rollout.lengths) == new).all()


def _teacher_forced(cfg, params, rollout, temperature):
  """Log-probs and entropies of the completion recomputed by one full forward pass."""
  tokens = np.concatenate(
      [np.asarray(rollout.prompt_tokens), np.asarray(rollout.completion_tokens)], axis=1
  )
  width = rollout.prompt_tokens.shape[1]
  mask = np.concatenate(
      [
          np.arange(width)[None] >= width - np.asarray(rollout.prompt_lengths)[:, None],
          np.ones(rollout.completion_tokens.shape, bool),
      ],
      axis=1,
  )
  logits, _ = forward(cfg, params, jnp.asarray(tokens), mask=jnp.asarray(mask))
  log_probs = jax.nn.log_softmax(logits[:, width - 1 : -1] / temperature, axis=-1)
  logp = jnp.take_along_axis(log_probs, jnp.asarray(rollout.completion_tokens)[..., None], -1)[
      ..., 0
  ]
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return np.asarray(logp), np.asarray(entropy)


@pytest.mark.parametrize("top_p,top_k", [(1.0, 0), (0.8, 5)])
def test_logp_and_entropy_match_teacher_forcing(top_p, top_k):
  cfg = tiny_config(vocab_size=48, max_position_embeddings=128)
  params = init_params(cfg, jax.random.PRNGKey(1), init_std=0.3)
  lengths = [4, 6, 2]
  prompts = _left_padded(lengths, cfg.vocab_size, seed=2)
  sampler_cfg = sampling.SamplerConfig(
      temperature=0.7, top_p=top_p, top_k=top_k, max_new_tokens=10, num_samples=3, stop_ids=(2,)
  )
  rollout = sampling.sample(cfg, params, prompts, lengths, jax.random.PRNGKey(5), sampler_cfg)
  logp, entropy = _teacher_forced(cfg, params, rollout, 0.7)
  mask = np.asarray(rollout.completion_mask)
  assert mask.sum() > 0
  np.testing.assert_allclose(np.asarray(rollout.logp)[mask], logp[mask], atol=1e-4)
  np.testing.assert_allclose(np.asarray(rollout.entropy)[mask], entropy[mask], atol=1e-4)
  np.testing.assert_array_equal(np.asarray(rollout.group_ids), np.repeat(np.arange(3), 3))


def test_stop_tokens_end_completions_and_mask_includes_them():
  cfg = tiny_config(vocab_size=8, max_position_embeddings=128)
  params = init_params(cfg, jax.random.PRNGKey(0), init_std=0.01)  # near-uniform over 8 tokens
  sampler_cfg = sampling.SamplerConfig(max_new_tokens=40, num_samples=32, stop_ids=(2, 5))
  rollout = sampling.sample(
      cfg, params, np.array([[3, 4, 6]]), [3], jax.random.PRNGKey(0), sampler_cfg
  )
  toks, mask = np.asarray(rollout.completion_tokens), np.asarray(rollout.completion_mask)
  lengths, truncated = np.asarray(rollout.lengths), np.asarray(rollout.truncated)
  assert (~truncated).sum() > 20  # p(no stop in 40 draws) = (6/8)^40, tiny
  for row in range(toks.shape[0]):
    stops = np.flatnonzero(np.isin(toks[row], (2, 5)))
    n = lengths[row]
    assert mask[row, :n].all() and not mask[row, n:].any()
    if truncated[row]:
      assert stops.size == 0 and n == 40
    else:
      assert stops[0] == n - 1 and (toks[row, n:] == 0).all()
  assert np.all(np.asarray(rollout.logp)[~mask] == 0) and np.all(
      np.asarray(rollout.entropy)[~mask] == 0
  )


def _restricted_probs(logits, temperature, top_k, top_p):
  """NumPy: softmax(logits / T) restricted to top-k then top-p and renormalised."""
  scaled = logits / temperature
  order = np.argsort(-scaled)
  keep = np.zeros_like(scaled, bool)
  keep[order[:top_k] if top_k else order] = True
  probs = np.exp(scaled - scaled.max()) * keep
  probs /= probs.sum()
  sorted_p = probs[order]
  before = np.cumsum(sorted_p) - sorted_p
  nucleus = np.zeros_like(keep)
  nucleus[order[before < top_p]] = True
  probs = probs * nucleus
  return probs / probs.sum()


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.3, 6, 1.0), (1.0, 0, 0.7), (0.9, 8, 0.8)],
)
def test_first_token_frequencies_match_restricted_softmax(temperature, top_k, top_p):
  cfg = tiny_config(vocab_size=12, max_position_embeddings=64)
  params = init_params(cfg, jax.random.PRNGKey(4), init_std=0.5)
  prompt = np.array([[3, 7, 5, 9]])
  logits = np.asarray(forward(cfg, params, jnp.asarray(prompt))[0][0, -1], np.float64)
  expected = _restricted_probs(logits, temperature, top_k, top_p)
  draws = 4000
  sampler_cfg = sampling.SamplerConfig(
      temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1, num_samples=draws
  )
  rollout = sampling.sample(cfg, params, prompt, [4], jax.random.PRNGKey(11), sampler_cfg)
  counts = np.bincount(np.asarray(rollout.completion_tokens)[:, 0], minlength=cfg.vocab_size)
  support = expected > 0
  assert counts[~support].sum() == 0, "a token outside the top-k/top-p set was sampled"
  big = draws * expected >= 5  # chi-square needs expected counts >= 5: pool the rare tokens
  observed, predicted = counts[big], draws * expected[big]
  if (support & ~big).any():
    observed = np.append(observed, counts[support & ~big].sum())
    predicted = np.append(predicted, draws * expected[support & ~big].sum())
  _, p_value = scipy.stats.chisquare(observed, predicted)
  assert p_value > 1e-3


def test_repeated_calls_do_not_recompile():
  cfg = tiny_config(vocab_size=16, max_position_embeddings=64)
  params = init_params(cfg, jax.random.PRNGKey(0))
  sampler_cfg = sampling.SamplerConfig(max_new_tokens=4, num_samples=2)
  sampling.sample(cfg, params, _left_padded([3, 5], 16), [3, 5], jax.random.PRNGKey(0), sampler_cfg)
  programs = lambda: (
      sampling.compiled_prefill(cfg, sampler_cfg)._cache_size(),
      sampling.compiled_decode(cfg, sampler_cfg, 64)._cache_size(),
  )
  before = programs()
  for lengths in ([2, 7], [9, 1], [4, 4]):  # all fall into the 16-wide prompt bucket
    sampling.sample(
        cfg, params, _left_padded(lengths, 16), lengths, jax.random.PRNGKey(1), sampler_cfg
    )
  assert programs() == before
  assert padding.prompt_bucket(17, 16) == 32 and padding.prompt_bucket(3, 16) == 16


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("max_new_tokens", 0),
        ("num_samples", 0),
    ],
)
def test_bad_sampler_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=f"sampler.{field}"):
    sampling.SamplerConfig(**{field: value})


def test_too_long_context():
  cfg = tiny_config(vocab_size=16, max_position_embeddings=32)
  params = init_params(cfg, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="max_position_embeddings"):
    sampling.sample(
        cfg,
        params,
        np.array([[3, 4]]),
        [2],
        jax.random.PRNGKey(0),
        sampling.SamplerConfig(max_new_tokens=31),
    )


def test_kv_cache_dtype_follows_compute_dtype():
  cfg = dataclasses.replace(tiny_config(), compute_dtype="bfloat16")
  assert cfg.kv_cache_bytes_per_token() == 2 * 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim


def _stopping_model():
  """A model whose completions stop at many lengths. Its sliding window of 4 is shorter than
  the prompts plus completions, so passes, compaction and prefill sharing are checked with
  the window masking cache slots."""
  cfg = tiny_config(
      vocab_size=10, max_position_embeddings=64, model_type="mistral", sliding_window=4
  )
  return cfg, init_params(cfg, jax.random.PRNGKey(3), init_std=0.3)


def test_passes_and_compaction_give_the_samples_of_one_pass():
  """Per-row keys: refilling finished rows, splitting rows into passes and dropping finished
  rows change nothing."""
  cfg, params = _stopping_model()
  lengths = [3, 5, 2, 4, 6]
  prompts = _left_padded(lengths, cfg.vocab_size, seed=7)
  base = sampling.SamplerConfig(max_new_tokens=24, num_samples=4, stop_ids=(2,), decode_segment=0)
  ref = sampling.sample(cfg, params, prompts, lengths, jax.random.PRNGKey(9), base)
  lens = np.asarray(ref.lengths)
  assert lens.min() < 8 and np.asarray(ref.truncated).any()  # a real spread of lengths
  for changes in (
      {"max_decode_rows": 8},
      {"max_decode_rows": 8, "refill": False},
      {"decode_segment": 3},
      {"max_decode_rows": 12, "decode_segment": 2},
      {"max_decode_rows": 4, "decode_segment": 1},
  ):
    got = sampling.sample(
        cfg, params, prompts, lengths, jax.random.PRNGKey(9), dataclasses.replace(base, **changes)
    )
    np.testing.assert_array_equal(
        got.completion_tokens, ref.completion_tokens, err_msg=str(changes)
    )
    np.testing.assert_array_equal(got.completion_mask, ref.completion_mask)
    np.testing.assert_allclose(got.logp, ref.logp, atol=1e-5)
    np.testing.assert_allclose(got.entropy, ref.entropy, atol=1e-5)
    np.testing.assert_array_equal(got.truncated, ref.truncated)


def test_finished_rows_leave_the_decode_batch(monkeypatch):
  cfg, params = _stopping_model()
  compacted = []
  original = sampling.compiled_compact

  def spy(model_cfg, mesh=None):
    fn = original(model_cfg, mesh)
    return lambda state, rows: (compacted.append(int(rows.shape[0])), fn(state, rows))[1]

  monkeypatch.setattr(sampling, "compiled_compact", spy)
  lengths = [3] * 8
  cfg_s = sampling.SamplerConfig(max_new_tokens=40, num_samples=8, stop_ids=(2,), decode_segment=2)
  rollout = sampling.sample(
      cfg, params, _left_padded(lengths, cfg.vocab_size), lengths, jax.random.PRNGKey(0), cfg_s
  )
  assert compacted and compacted == sorted(compacted, reverse=True) and compacted[-1] < 64
  assert all(size & (size - 1) == 0 for size in compacted)  # powers of two
  assert np.asarray(rollout.completion_mask).sum() == np.asarray(rollout.lengths).sum()


def test_refill_keeps_the_decode_batch_full(monkeypatch):
  """With more rows than one batch, finished rows are refilled: every waiting row is admitted
  once, into a slot whose row had finished, no batch is compacted while rows wait, and the
  rollout needs fewer decode segments than passes of whole prompts."""
  cfg, params = _stopping_model()
  events = []
  for name in ("compiled_decode", "compiled_refill", "compiled_compact"):
    original = getattr(sampling, name)

    def spy(*args, _original=original, _name=name, **kwargs):
      fn = _original(*args, **kwargs)

      def call(*inputs):
        state = inputs[1] if _name != "compiled_compact" else inputs[0]
        events.append((_name, np.asarray(state.done).copy(), inputs))
        return fn(*inputs)

      return call

    monkeypatch.setattr(sampling, name, spy)
  lengths = [3, 5, 2, 4, 6, 3, 4, 5]
  prompts = _left_padded(lengths, cfg.vocab_size, seed=7)
  base = sampling.SamplerConfig(
      max_new_tokens=24, num_samples=4, stop_ids=(2,), decode_segment=2, max_decode_rows=8
  )
  sampling.sample(cfg, params, prompts, lengths, jax.random.PRNGKey(9), base)
  refills = [e for e in events if e[0] == "compiled_refill"]
  admitted = np.concatenate([np.asarray(e[2][7])[np.asarray(e[2][7]) >= 0] for e in refills])
  assert sorted(admitted.tolist()) == list(range(8, 32))  # rows of prompts 2..7, once each
  for _, done, inputs in refills:
    slots = np.asarray(inputs[5])[np.asarray(inputs[7]) >= 0]
    assert done[slots].all()  # only finished rows hand over their slots
  last_refill = max(i for i, e in enumerate(events) if e[0] == "compiled_refill")
  assert all(e[0] != "compiled_compact" for e in events[:last_refill])
  assert all(e[1].shape == (8,) for e in events[:last_refill])  # the batch stays 8 rows
  refilled_segments = sum(e[0] == "compiled_decode" for e in events)
  events.clear()
  sampling.sample(
      cfg, params, prompts, lengths, jax.random.PRNGKey(9), dataclasses.replace(base, refill=False)
  )
  assert refilled_segments < sum(e[0] == "compiled_decode" for e in events)


def test_samples_of_one_prompt_share_its_prefill():
  """Each prompt is prefilled once: its samples' first-step distributions are identical."""
  cfg, params = _stopping_model()
  cfg_s = sampling.SamplerConfig(max_new_tokens=2, num_samples=6)
  rollout = sampling.sample(
      cfg, params, _left_padded([4, 2], cfg.vocab_size), [4, 2], jax.random.PRNGKey(1), cfg_s
  )
  entropy = np.asarray(rollout.entropy)[:, 0].reshape(2, 6)
  assert np.all(entropy == entropy[:, :1]) and entropy[0, 0] != entropy[1, 0]


def test_temperature_override_and_rule_without_recompiling():
  """`temperature=` is traced (one program for every value) and a temperature rule sees the
  live logits: a rule returning 0.5 for every row samples as temperature 0.5 does."""
  cfg, params = _stopping_model()
  base = sampling.SamplerConfig(max_new_tokens=6, num_samples=4, decode_segment=0)
  prompts, lengths = _left_padded([3, 5], cfg.vocab_size), [3, 5]
  key = jax.random.PRNGKey(2)
  at_half = sampling.sample(
      cfg, params, prompts, lengths, key, dataclasses.replace(base, temperature=0.5)
  )
  override = sampling.sample(cfg, params, prompts, lengths, key, base, temperature=0.5)
  programs = sampling.compiled_decode(cfg, base, 6)._cache_size()
  sampling.sample(cfg, params, prompts, lengths, key, base, temperature=1.7)
  assert sampling.compiled_decode(cfg, base, 6)._cache_size() == programs
  ruled_cfg = dataclasses.replace(
      base, temperature_rule=lambda logits, t, state: jnp.full(logits.shape[:1], state)
  )
  ruled = sampling.sample(
      cfg, params, prompts, lengths, key, ruled_cfg, rule_state=jnp.float32(0.5)
  )
  for got in (override, ruled):
    np.testing.assert_array_equal(got.completion_tokens, at_half.completion_tokens)
    np.testing.assert_allclose(got.logp, at_half.logp, atol=1e-6)
  with pytest.raises(ValueError, match="temperature"):
    sampling.sample(cfg, params, prompts, lengths, key, base, temperature=0.0)
