"""Packing rows into bins of a token budget (`entropix_rl.packing`): the plan is a valid,
deterministic, balanced first-fit-decreasing packing, and the decoder over the packed bins
gives every completion token the hidden state, log-prob and target of the unpacked row."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropix_rl import packing
from entropix_rl.models import forward_hidden, init_params
from entropix_rl.train.update import completion_hidden
from tests.synthetic import UPDATE_MODEL, rl_rows

MODEL = UPDATE_MODEL
PROMPT, COMPLETION = 5, 9


def _rows(seed=0):
  rows = rl_rows(MODEL.vocab_size, 4, 4, PROMPT, COMPLETION, seed=seed, left_pad=True)
  return jax.tree.map(jnp.asarray, rows)


def _long_tail_mask(rows=32, width=64, seed=0):
  """Left-aligned spans whose lengths are long-tailed (most short, a few near the width)."""
  rng = np.random.default_rng(seed)
  lengths = np.minimum(width, 2 + rng.geometric(1 / 10, rows))
  return jnp.asarray(np.arange(width)[None] < lengths[:, None])


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_plan_is_a_valid_balanced_first_fit_decreasing_packing(shards):
  mask = _long_tail_mask()
  budget = 80
  plan = packing.plan_packing(mask, budget, shards, "rl.micro_batch_tokens")
  again = packing.plan_packing(mask, budget, shards, "rl.micro_batch_tokens")
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plan), jax.tree.leaves(again)))
  lengths = np.asarray(mask.sum(1))
  shard, bin_, start = (np.asarray(x) for x in (plan.shard, plan.bin, plan.start))
  assert np.bincount(shard, minlength=shards).tolist() == [32 // shards] * shards
  assert bin_.max() < plan.bins == packing.bin_capacity(32 // shards, 64, budget)
  assert int(plan.steps) == bin_.max() + 1
  tokens = [lengths[shard == s].sum() for s in range(shards)]
  assert max(tokens) - min(tokens) <= lengths.max()  # the snake deal balances the shards
  for s in range(shards):
    for b in range(plan.bins):
      here = np.nonzero((shard == s) & (bin_ == b))[0]
      spans = sorted((start[r], start[r] + lengths[r]) for r in here)
      assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))  # disjoint
      assert all(end <= budget for _, end in spans)
    # First fit, longest first: a row never fits in a bin before its own at its placement.
    order = sorted(np.nonzero(shard == s)[0], key=lambda r: (-lengths[r], r))
    fill = np.zeros(plan.bins, int)
    for r in order:
      assert bin_[r] == np.argmax(fill + lengths[r] <= budget) and start[r] == fill[bin_[r]]
      fill[bin_[r]] += lengths[r]
  padded_slots = 32 * 64
  packed_slots = int(plan.steps) * shards * budget
  assert packed_slots < 0.5 * padded_slots  # long tail: packing computes under half the slots


def test_a_row_wider_than_the_budget_names_the_field():
  with pytest.raises(ValueError, match=r"rl.micro_batch_tokens=10 .* >= 14"):
    packing.plan_packing(_rows()["attention_mask"], 10, 1, "rl.micro_batch_tokens")


@pytest.mark.parametrize("shards", [1, 2])
def test_packed_bins_give_each_completion_token_its_row_values(shards):
  rows = _rows()
  mask = rows["attention_mask"]
  params = init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2)
  want = completion_hidden(MODEL, params, rows)
  plan = packing.plan_packing(mask, 20, shards, "budget")
  bins = packing.pack(plan, rows["tokens"], mask)
  real = np.asarray(mask[:, PROMPT:])
  got = np.zeros(want.shape, np.float32)
  targets = np.zeros(real.shape, np.int32)
  for k in range(int(plan.steps)):
    view = jax.tree.map(lambda x: x.reshape(-1, x.shape[-1]), packing.step_bins(bins, k))
    hidden = completion_hidden(MODEL, params, view).reshape(shards, 20, -1)
    for d in range(hidden.shape[-1]):
      got[..., d] = packing.unpack(plan, hidden[..., d], k, mask, jnp.asarray(got[..., d]))
    targets = packing.unpack(
        plan, view["targets"].reshape(shards, 20), k, mask, jnp.asarray(targets)
    )
  np.testing.assert_allclose(got[real], np.asarray(want)[real], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(targets)[real], np.asarray(rows["completion"])[real])
  assert int(plan.steps) < 16 // shards  # 2 rows share a bin


def test_map_packed_lays_values_out_as_the_rows():
  rows = _rows(seed=1)

  def fn(view):
    hidden, _ = forward_hidden(
        MODEL, params, view["tokens"], positions=view["positions"], segment_ids=view["segment_ids"]
    )
    return {"targets": view["targets"], "norm": jnp.linalg.norm(hidden, axis=-1), "none": None}

  params = init_params(MODEL, jax.random.PRNGKey(2), init_std=0.2)
  out = jax.jit(lambda r: packing.map_packed(fn, r, budget=28, what="budget"))(rows)
  real = np.asarray(rows["attention_mask"][:, PROMPT:])
  assert out["none"] is None
  np.testing.assert_array_equal(np.asarray(out["targets"]), np.where(real, rows["completion"], 0))
  want = jnp.linalg.norm(completion_hidden(MODEL, params, rows), axis=-1)
  np.testing.assert_allclose(np.asarray(out["norm"])[real], np.asarray(want)[real], atol=1e-5)
  assert np.all(np.asarray(out["norm"])[~real] == 0)
