"""The update's batch of a rollout (`Responses.rl_batch`), and cheaper batches that train the
same: the completion axis trimmed to a bucket, and the sampler's log-probs standing in for the
recomputed old log-probs."""

import jax
import numpy as np
import optax
import pytest

from entropix_rl import interventions
from entropix_rl.interventions import aggregation
from entropix_rl.models import init_params, tiny_config
from entropix_rl.train.rollout import Responses, abstract_rl_batch, trim_completions
from entropix_rl.train.state import create_train_state
from entropix_rl.train.update import completion_quantities, jit_rl_update
from tests.test_update import update_spec

MODEL = tiny_config(vocab_size=32, max_position_embeddings=64)
ROWS, PROMPT, BUDGET = 8, 4, 12


def _responses(seed=0, longest=5, prompt_lengths=None):
  rng = np.random.default_rng(seed)
  prompt = rng.integers(3, 32, (ROWS, PROMPT)).astype(np.int32)
  completion = rng.integers(3, 32, (ROWS, BUDGET)).astype(np.int32)
  lengths = rng.integers(1, longest + 1, ROWS)
  lengths[0] = longest
  mask = np.arange(BUDGET)[None] < lengths[:, None]
  rewards = rng.integers(0, 2, ROWS).astype(np.float32)
  return Responses(
      prompt_tokens=prompt,
      prompt_lengths=np.full(ROWS, PROMPT, np.int32) if prompt_lengths is None else prompt_lengths,
      completion_tokens=np.where(mask, completion, 0).astype(np.int32),
      completion_mask=mask,
      logp=-rng.uniform(0.1, 2.0, (ROWS, BUDGET)).astype(np.float32),
      entropy=rng.uniform(0.1, 2.0, (ROWS, BUDGET)).astype(np.float32),
      truncated=np.zeros(ROWS, bool),
      group_ids=np.repeat(np.arange(ROWS // 4), 4).astype(np.int32),
      examples=[None] * ROWS,
      texts=[""] * ROWS,
      rewards=rewards,
      correct=rewards >= 1.0,
  )


def _batch(seed=0, longest=5):
  return _responses(seed, longest).rl_batch(group_size=4)


def _update(batch, agg="token-mean", from_rollout=False, scale=None):
  cfg = interventions.default_loss_config()
  cfg.agg = agg
  cfg.loss_scale_factor = scale
  loss_cfg = interventions.resolve_loss_config(cfg)
  spec = update_spec(
      loss_cfg,
      MODEL,
      groups=2,
      num_minibatches=2,
      ppo_epochs=2,
      measure_dynamics=False,
      old_logp_from_rollout=from_rollout,
      token_chunk=2048,
  )
  state = create_train_state(
      init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2), optax.sgd(0.1), jax.random.PRNGKey(1)
  )
  return jit_rl_update(spec, optax.sgd(0.1))(state, batch)


def test_rl_batch_lays_prompt_and_completion_side_by_side_with_global_group_ids():
  responses = _responses(prompt_lengths=np.array([4, 3, 2, 1, 4, 4, 4, 4], np.int32))
  responses.info["cluster_ids"] = np.arange(ROWS, dtype=np.int32) % 2
  responses.info["ares_difficulty"] = np.ones(ROWS, np.int32)
  batch = responses.rl_batch(group_size=4, first_group=6, sampler_logp=True)
  np.testing.assert_array_equal(batch["group_ids"], [6, 6, 6, 6, 7, 7, 7, 7])
  np.testing.assert_array_equal(
      batch["attention_mask"][:4, :PROMPT],
      [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]],
  )
  np.testing.assert_array_equal(batch["tokens"][:, PROMPT:], responses.completion_tokens)
  np.testing.assert_array_equal(batch["attention_mask"][:, PROMPT:], responses.completion_mask)
  assert batch["completion_mask"].dtype == np.float32
  np.testing.assert_array_equal(batch["cluster_ids"], responses.info["cluster_ids"])
  assert set(batch["info"]) == {"ares_difficulty"}  # cluster ids are a TokenBatch field
  np.testing.assert_array_equal(batch["old_logp"], responses.logp)
  assert "old_logp" not in responses.rl_batch(group_size=4)


def test_abstract_rl_batch_has_the_layout_of_rl_batch_and_lowers_the_update():
  real = _batch()
  abstract = abstract_rl_batch(ROWS, PROMPT, BUDGET)
  assert set(abstract) == set(real)
  for key, value in real.items():
    assert (abstract[key].shape, abstract[key].dtype) == (value.shape, value.dtype), key
  assert abstract_rl_batch(3, 2, 5)["tokens"].shape == (3, 7)
  spec = update_spec(
      interventions.resolve_loss_config(interventions.default_loss_config()),
      MODEL,
      groups=2,
      num_minibatches=2,
      measure_dynamics=False,
  )
  state = create_train_state(
      init_params(MODEL, jax.random.PRNGKey(0)), optax.sgd(0.1), jax.random.PRNGKey(1)
  )
  jit_rl_update(spec, optax.sgd(0.1)).lower(state, abstract)  # what rl_update accepts


def test_trim_cuts_only_padding_to_the_smallest_bucket():
  batch = _batch(longest=5)
  trimmed = trim_completions(batch, budget=BUDGET, buckets=3, longest=5)  # 12, 6, 3
  assert trimmed["completion"].shape == (ROWS, 6) and trimmed["tokens"].shape == (ROWS, 10)
  assert trimmed["completion_mask"].sum() == batch["completion_mask"].sum()
  assert trim_completions(batch, budget=BUDGET, buckets=1, longest=5) is batch
  assert trim_completions(batch, budget=BUDGET, buckets=3, longest=7)["completion"].shape == (
      ROWS,
      12,
  )


@pytest.mark.parametrize("agg", aggregation.AGG_MODES)
def test_trimmed_batch_gives_the_same_update(agg):
  batch = _batch(longest=5)
  scale = BUDGET if agg == "seq-mean-token-sum-norm" else None
  ref_state, ref = _update(batch, agg, scale=scale)
  state, got = _update(
      trim_completions(batch, budget=BUDGET, buckets=2, longest=5), agg, scale=scale
  )
  for key in ("loss/loss", "loss/grad_norm", "entropy/sampled_nll"):
    assert float(got[key]) == pytest.approx(float(ref[key]), rel=1e-5, abs=1e-7), key
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state.params, ref_state.params
  )


def test_old_logp_from_rollout_replaces_the_behaviour_pass():
  """Given the same old log-probs, the flag changes nothing; the sampler's differ from the
  recomputed ones only by float round-off (tests/test_sampling.py bounds it at 1e-4)."""
  batch = _batch(seed=3, longest=9)
  params = init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2)
  old = completion_quantities(
      MODEL, params, batch, temperature=1.0, token_chunk=64, with_entropy=True
  )
  ref_state, ref = _update(batch)
  state, got = _update(
      dict(batch, old_logp=np.asarray(old["logp"]), old_entropy=np.asarray(old["entropy"])),
      from_rollout=True,
  )
  assert float(got["loss/loss"]) == pytest.approx(float(ref["loss/loss"]), rel=1e-6)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state.params, ref_state.params
  )
