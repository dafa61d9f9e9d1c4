"""ETTRL (tree rollouts, majority votes, EAR), AEPO-agentic (entropy-aware advantage,
entropy-balanced clipping, entropy-guided branching at step delimiters) and ARES (HWE counts,
difficulty buckets, the hierarchical entropy reward, the α, τ_H and β controllers), against
references written from the formulas in docs/interventions.md (the jnp formulas with and without
jit, chex variants); each preset end to end."""

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from preset_runs import train_two_steps
import pytest

from configs import interventions as presets
from entropix_rl import interventions, sampling
from entropix_rl.interventions import aepo_agentic, ares, ettrl, rollout_ops
from entropix_rl.models import init_params, tiny_config
from entropix_rl.tokenizer import CharTokenizer
from entropix_rl.train import rollout as rollout_lib
from entropix_rl.train.config_dict import apply_overrides
from entropix_rl.train.rollout import Responses

F32 = lambda x: np.asarray(x, np.float32)
EOS, PAD, DELIM = 2, 0, 9


def cfg(**overrides):
  return interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), overrides)
  )


class FakeContext:
  """A `RolloutContext` whose sampler writes `script(prefix)` for each row: the completion
  that follows a response prefix (its prompt tokens after the 3-token question)."""

  def __init__(self, script, group_size, *, delimiter=-1, seed=0):
    self.script, self.group_size, self.step_delimiter_id = script, group_size, delimiter
    self.rng = np.random.default_rng(seed)
    self.min_prompt_bucket, self.pad_id, self.stop_ids = 4, PAD, (EOS,)
    self.key = jax.random.PRNGKey(seed)
    self.decode = lambda ids: "".join(chr(ord("a") + int(i)) for i in ids if i not in (PAD, EOS))
    self.calls = []

  def answer_keys(self, responses, mode):
    return list(responses.texts)

  def sample(
      self,
      prompt_tokens,
      prompt_lengths,
      examples,
      group_ids,
      num_samples,
      key,
      temperature=None,
      prefix_lengths=None,
  ):
    del key, temperature
    prefix_lengths = (
        np.zeros(len(prompt_lengths), np.int32)
        if prefix_lengths is None
        else np.asarray(prefix_lengths)
    )
    self.calls.append(len(prompt_lengths) * num_samples)
    width, budget = prompt_tokens.shape[1], 6
    rows = []
    for p in range(len(prompt_lengths)):
      prefix = (
          prompt_tokens[p, width - prefix_lengths[p] :]
          if prefix_lengths[p]
          else np.zeros(0, np.int32)
      )
      for _ in range(num_samples):
        rows.append((p, prefix, list(self.script(list(prefix), self.rng))))
    n = len(rows)
    tokens = np.full((n, budget), PAD, np.int32)
    mask = np.zeros((n, budget), bool)
    for i, (_, _, completion) in enumerate(rows):
      tokens[i, : len(completion)] = completion
      mask[i, : len(completion)] = True
    owner = np.asarray([p for p, _, _ in rows])
    return Responses(
        prompt_tokens=np.asarray(prompt_tokens)[owner],
        prompt_lengths=np.asarray(prompt_lengths)[owner],
        completion_tokens=tokens,
        completion_mask=mask,
        logp=np.zeros((n, budget), np.float32),
        entropy=np.where(mask, self.rng.uniform(0.1, 2.0, (n, budget)), 0).astype(np.float32),
        truncated=np.zeros(n, bool),
        group_ids=np.asarray(group_ids, np.int32)[owner],
        examples=[examples[p] for p in owner],
        texts=[self.decode(list(pre) + c) for _, pre, c in rows],
        rewards=np.zeros(n, np.float32),
        correct=np.zeros(n, bool),
        prefix_lengths=prefix_lengths[owner].astype(np.int32),
    )


def _questions(groups):
  tokens = np.tile(np.array([[3, 4, 5]], np.int32), (groups, 1)) + np.arange(groups)[:, None]
  return tokens, np.full(groups, 3, np.int32), [None] * groups, np.arange(groups)


# ================================================================================== ETTRL


def test_fork_points_take_the_highest_entropy_eligible_positions_per_prompt():
  entropy = F32([[9, 5, 1, 7], [0, 6, 6, 2], [9, 1, 1, 1], [0, 8, 8, 8]])
  tokens = np.array([[4, 4, EOS, PAD], [4, 4, 4, EOS], [4, 4, EOS, PAD], [4, EOS, PAD, PAD]])
  mask = tokens != PAD
  r = Responses(
      prompt_tokens=np.zeros((4, 3), np.int32),
      prompt_lengths=np.full(4, 3),
      completion_tokens=tokens,
      completion_mask=mask,
      logp=entropy,
      entropy=entropy,
      truncated=np.zeros(4, bool),
      group_ids=np.array([0, 0, 1, 1]),
      examples=[None] * 4,
      texts=[""] * 4,
      rewards=np.zeros(4),
      correct=np.zeros(4, bool),
  )
  taken = np.zeros((4, 4), bool)
  taken[1, 2] = True
  eligible = ettrl.fork_candidates(r, (EOS,), taken)
  # position 0, stop tokens, padding and the forked (1, 2) are out
  np.testing.assert_array_equal(eligible, [[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0] * 4])
  rows, cuts = ettrl.fork_points(entropy, eligible, r.group_ids, 2)
  np.testing.assert_array_equal(rows, [1, 0, 2, 2])  # group 1: one candidate, then a fresh root
  np.testing.assert_array_equal(cuts, [1, 1, 1, 0])


def _digits(prefix, rng):
  """A completion of 2–5 tokens ending in EOS, from the vocabulary {4, 5}."""
  return list(rng.integers(4, 6, rng.integers(1, 5))) + [EOS]


def test_ettrl_tree_has_the_leaves_and_rewards_by_vote_over_all_of_them():
  config = cfg(
      **{
          "ettrl.enabled": True,
          "ettrl.num_roots": 2,
          "ettrl.rounds": 2,
          "ettrl.forks": 2,
          "ettrl.branches": 2,
      }
  )
  ctx = FakeContext(_digits, group_size=10)
  roots = ctx.sample(*_questions(3), 2, None)
  out = ettrl.ettrl_rollout(config, roots, ctx, None)
  assert ctx.calls == [6, 12, 12]  # roots, then G·N forks x T per round
  assert np.array_equal(out.group_ids, np.repeat(np.arange(3), 10))
  for g in range(3):
    rows = np.flatnonzero(out.group_ids == g)
    assert list(out.prefix_lengths[rows[:2]]) == [0, 0]  # the roots come first
    keys = [out.texts[i] for i in rows]
    winner = max(keys, key=keys.count)
    np.testing.assert_array_equal(out.rewards[rows], [float(k == winner) for k in keys])
  # a leaf's text is its prefix followed by its completion
  branched = np.flatnonzero(out.prefix_lengths > 0)
  assert branched.size
  for i in branched:
    prefix = out.prompt_tokens[i, out.prompt_tokens.shape[1] - out.prefix_lengths[i] :]
    n = int(out.completion_mask[i].sum())
    assert out.texts[i] == ctx.decode(list(prefix) + list(out.completion_tokens[i, :n]))


def test_ettrl_group_size_must_equal_the_leaves():
  config = cfg(**{"ettrl.enabled": True})
  ctx = FakeContext(_digits, group_size=6)
  with pytest.raises(
      ValueError, match=r"num_roots \+ rounds·forks·branches = .* = 8 .*" r"rl.group_size=6"
  ):
    ettrl.ettrl_rollout(config, ctx.sample(*_questions(1), 2, None), ctx, None)
  with pytest.raises(ValueError, match="loss.ettrl.ear_max"):
    cfg(**{"ettrl.ear_min": 1.0, "ettrl.ear_max": 0.5})


class EARTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_ear_multiplier_and_advantages(self):
    mean_entropy = F32([1.0, 3.0, 0.5, 0.2, 0.2, 0.0])
    groups = np.array([0, 0, 1, 1, 2, 2], np.int32)
    multiplier = self.variant(functools.partial(ettrl.ear_multiplier, power=2.0, low=0.5, high=2.0))
    got = np.asarray(multiplier(jnp.asarray(mean_entropy), jnp.asarray(groups)))
    group_mean = np.array([2.0, 2.0, 0.35, 0.35, 0.1, 0.1])
    np.testing.assert_allclose(got, np.clip((mean_entropy / group_mean) ** 2, 0.5, 2.0), rtol=1e-6)
    # EAR on: A·g with H̄ the old entropy's response mean; EAR off: A unchanged
    mask = F32([[1, 1, 0]] * 6)
    old_entropy = np.repeat(mean_entropy[:, None], 3, axis=1) * mask
    adv = np.repeat(F32([1, -1, 2, -2, 0.5, -0.5])[:, None], 3, axis=1) * mask
    batch = interventions.TokenBatch(
        logp=jnp.zeros((6, 3)),
        old_logp=jnp.zeros((6, 3)),
        advantages=jnp.asarray(adv),
        mask=jnp.asarray(mask),
        old_entropy=jnp.asarray(old_entropy),
        group_ids=jnp.asarray(groups),
    )
    on = cfg(**{"ettrl.enabled": True, "ettrl.ear": True, "ettrl.ear_power": 2.0})
    assert {"old_entropy", "group_ids"} <= interventions.needs(on)
    np.testing.assert_allclose(
        self.variant(lambda b: interventions.rollout_advantages(on, b, {}))(batch),
        adv * got[:, None],
        rtol=1e-6,
    )
    off = cfg(**{"ettrl.enabled": True})
    np.testing.assert_array_equal(interventions.rollout_advantages(off, batch, {}), adv)


# =========================================================================== AEPO-agentic


def _batch(seed=0, rows=6, time=8):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 3.0, (rows, time))
  lengths = rng.integers(2, time + 1, (rows, 1))
  mask = (np.arange(time)[None] < lengths).astype(np.float32)
  adv = np.repeat(rng.normal(0, 1, (rows, 1)), time, 1) * mask
  return dict(
      logp=F32(logp),
      old_logp=F32(logp + rng.normal(0, 0.5, (rows, time))),
      advantages=F32(adv),
      mask=mask,
      entropy=F32(rng.uniform(0.01, 3.0, (rows, time))),
  )


def _loss_and_grad(config, batch, variant=lambda fn: fn):
  """`(loss, aux, d loss / d logp)`, the gradient function wrapped by `variant` (chex)."""

  def f(logp, batch):
    return interventions.policy_loss(config, **dict(batch, logp=logp), rng=None)

  (loss, aux), grad = variant(jax.value_and_grad(f, has_aux=True))(batch["logp"], batch)
  return float(loss), jax.tree.map(np.asarray, aux), np.asarray(grad)


class EntropyBalancedLossTest(chex.TestCase):
  """AEPO-agentic's loss side, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_entropy_aware_advantage_standardises_over_the_valid_tokens(self):
    batch = _batch(1)
    m, h = batch["mask"], batch["entropy"].astype(np.float64)
    valid = h[m > 0]
    score = (h - valid.mean()) / valid.std(ddof=1)
    shaped = batch["advantages"] * (1 + 0.2 * score) * m
    plain = cfg(name="aepo_agentic", **{"aepo_agentic.entropy_advantage": False})
    _, aux, _ = _loss_and_grad(cfg(name="aepo_agentic"), batch, self.variant)
    _, ref, _ = _loss_and_grad(plain, dict(batch, advantages=F32(shaped)), self.variant)
    np.testing.assert_allclose(aux["per_token_loss"], ref["per_token_loss"], rtol=1e-5, atol=1e-6)
    assert "entropy" in interventions.needs(cfg(name="aepo_agentic"))
    assert "entropy" not in interventions.needs(plain)
    # equal entropies: σ = 0 → 1, Ĥ = 0, Ã = A
    stats = self.variant(aepo_agentic.entropy_statistics)(jnp.full((6, 8), 0.7), jnp.asarray(m))
    assert float(stats["std"][0]) == 1.0
    flat = dict(batch, entropy=np.full_like(batch["entropy"], 0.7))
    _, flat_aux, _ = _loss_and_grad(cfg(name="aepo_agentic"), flat, self.variant)
    _, plain_aux, _ = _loss_and_grad(plain, flat, self.variant)
    np.testing.assert_allclose(flat_aux["per_token_loss"], plain_aux["per_token_loss"], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_entropy_balanced_clipping_has_ppo_values_and_keeps_the_upper_gradient(self):
    batch = _batch(2)
    plain = cfg(name="aepo_agentic", dual_clip_c=3.0, **{"aepo_agentic.entropy_advantage": False})
    loss, aux, _ = _loss_and_grad(plain, batch, self.variant)
    ppo_loss, ppo_aux, _ = _loss_and_grad(cfg(dual_clip_c=3.0), batch, self.variant)
    assert loss == pytest.approx(ppo_loss, rel=1e-6)
    np.testing.assert_allclose(aux["per_token_loss"], ppo_aux["per_token_loss"], rtol=1e-6)
    # A > 0, r = e^0.5 > 1.2 | A < 0, r = e^−0.5 < 0.8 | A < 0, r = e^2 (dual-clip) | on-policy
    logp = F32([[-1.0, -1.0, -1.0, -1.0]])
    tokens = dict(
        logp=logp,
        old_logp=F32([[-1.5, -0.5, -3.0, -1.0]]),
        advantages=F32([[2.0, -1.0, -1.0, 1.0]]),
        mask=F32([[1, 1, 1, 1]]),
        entropy=F32([[0.5] * 4]),
    )
    _, aux, grad = _loss_and_grad(plain, tokens, self.variant)
    np.testing.assert_allclose(grad[0], [-2.0 * 1.2 / 4, 0.0, 0.0, -1.0 / 4], rtol=1e-6)
    np.testing.assert_allclose(aux["per_token_loss"][0], [-2.0 * 1.2, 0.8, 3.0, -1.0], rtol=1e-6)
    _, _, ppo_grad = _loss_and_grad(cfg(dual_clip_c=3.0), tokens, self.variant)
    assert ppo_grad[0, 0] == 0.0
    assert aux["clip_frac"] == pytest.approx(0.5)  # the two clip bounds; dual-clip is not counted


def test_branch_probability_falls_with_consecutive_branches():
  u = np.random.default_rng(0).random(20000)
  rates = [
      np.mean(
          [
              aepo_agentic.branch_probability(x, 0.3, 0.3, c, weight=0.2, penalty=0.05) >= 0.5
              for x in u
          ]
      )
      for c in (0, 4, 8, 10)
  ]
  np.testing.assert_allclose(rates, [0.5, 1 - 0.5 / 0.8, 1 - 0.5 / 0.6, 0.0], atol=0.015)
  assert aepo_agentic.branch_probability(0.9, 2.0, 0.0, 0, weight=0.2, penalty=0.05) == 1.0
  assert aepo_agentic.branch_probability(0.1, 0.0, 2.0, 0, weight=0.2, penalty=0.05) == 0.0


def test_trajectory_segments_end_at_delimiters():
  path = aepo_agentic._Trajectory(0, 0, np.array([4, DELIM, 5, DELIM, 6, EOS]), 6, DELIM)
  assert [path.segment(r) for r in (1, 2, 3, 4)] == [(0, 2), (2, 4), (4, 6), None]
  assert [path.goes_on(r) for r in (1, 2, 3)] == [True, True, False]
  late = aepo_agentic._Trajectory(1, 2, np.array([4, DELIM, PAD]), 2, DELIM)
  assert late.segment(2) is None and late.segment(3) == (0, 2)
  assert not late.goes_on(3)  # the delimiter is its last token: truncated, not a tool call
  assert aepo_agentic.segment_entropy(np.arange(30.0), 2, 30, 20) == pytest.approx(
      np.mean(np.arange(2, 22))
  )


def _one_step(prefix, rng):
  """Fresh rows say "4 5 + 6 7 EOS"; a row continuing after "+" says "6 7 EOS"."""
  return [6, 7, EOS] if prefix else [4, 5, DELIM, 6, 7, EOS]


@pytest.mark.parametrize("seed", [0, 1])
def test_aepo_agentic_rollout_branches_after_delimiters_and_fills_each_group(seed):
  config = cfg(**{"aepo_agentic.branching": True, "aepo_agentic.initial_rollouts": 3})
  ctx = FakeContext(_one_step, group_size=8, delimiter=DELIM, seed=seed)
  first = ctx.sample(*_questions(4), 3, None)
  out = aepo_agentic.aepo_agentic_rollout(config, first, ctx, None)
  assert np.array_equal(out.group_ids, np.repeat(np.arange(4), 8))
  assert set(out.prefix_lengths.tolist()) <= {0, 3}
  branched = out.prefix_lengths == 3
  assert branched.any() and (~branched).sum() > 12  # fresh roots fill the rest
  width = out.prompt_tokens.shape[1]
  np.testing.assert_array_equal(
      out.prompt_tokens[branched, width - 3 :], np.tile([4, 5, DELIM], (branched.sum(), 1))
  )
  assert all(out.texts[i] == ctx.decode([4, 5, DELIM, 6, 7]) for i in range(out.rows))
  ctx = FakeContext(_one_step, group_size=8, delimiter=DELIM, seed=seed)
  again = aepo_agentic.aepo_agentic_rollout(config, ctx.sample(*_questions(4), 3, None), ctx, None)
  np.testing.assert_array_equal(again.prefix_lengths, out.prefix_lengths)  # nothing carried over


def test_aepo_agentic_rollout_needs_a_delimiter_and_enough_slots():
  first = FakeContext(_one_step, 8).sample(*_questions(1), 4, None)
  config = cfg(**{"aepo_agentic.branching": True})
  with pytest.raises(ValueError, match="rl.step_delimiter"):
    aepo_agentic.aepo_agentic_rollout(config, first, FakeContext(_one_step, 8), None)
  with pytest.raises(ValueError, match="initial_rollouts=4 must be <= rl.group_size=2"):
    aepo_agentic.aepo_agentic_rollout(
        config, first, FakeContext(_one_step, 2, delimiter=DELIM), None
    )
  with pytest.raises(ValueError, match="loss.aepo_agentic.branch_probability"):
    cfg(**{"aepo_agentic.branch_probability": 1.5})


def test_sample_in_buckets_pads_to_a_power_of_two_and_returns_the_given_prompts():
  ctx = FakeContext(_digits, 4)
  tokens, lengths, examples, groups = _questions(5)
  out = rollout_ops.sample_in_buckets(
      ctx.sample, tokens, lengths, examples, groups, 2, None, prefix_lengths=np.zeros(5, np.int32)
  )
  assert ctx.calls == [16] and out.rows == 10
  np.testing.assert_array_equal(out.group_ids, np.repeat(np.arange(5), 2))


def test_sampler_scores_a_branch_on_its_prefix_and_continuation():
  tokenizer = CharTokenizer("0123456789+=")
  seen = []

  class Task:

    def verify(self, example, text):
      seen.append(text)
      return 1.0

  model = tiny_config(
      vocab_size=tokenizer.vocab_size,
      hidden_size=16,
      num_heads=2,
      num_kv_heads=1,
      head_dim=8,
      intermediate_size=32,
      max_position_embeddings=32,
  )
  sampler_cfg = sampling.SamplerConfig(
      max_new_tokens=4, stop_ids=tokenizer.stop_ids, min_prompt_bucket=8
  )
  sampler = rollout_lib.Sampler(model, sampler_cfg, Task(), tokenizer, None)
  prompts = np.zeros((2, 8), np.int32)
  prompts[0, -4:] = tokenizer.encode("12=3")
  prompts[1, -4:] = tokenizer.encode("12=3")
  out = sampler(
      init_params(model, jax.random.PRNGKey(0)),
      prompts,
      np.array([4, 4]),
      [None, None],
      np.array([0, 1]),
      2,
      jax.random.PRNGKey(1),
      prefix_lengths=np.array([0, 1]),
  )
  np.testing.assert_array_equal(out.prefix_lengths, [0, 0, 1, 1])
  for i in range(4):
    prefix = "3" if i >= 2 else ""
    assert out.texts[i] == prefix + tokenizer.decode(out.completion_tokens[i])
  assert seen == out.texts


# =================================================================================== ARES


def test_entropy_reward_table_on_hand_made_cases():
  sig = lambda x, t: 1 / (1 + math.exp(-x / t))
  cases = [  # (acc, difficulty, n, T, α) -> s
      ((1, 0, 5, 2, 0.5), -(1.0 / 3 * 0.5)),  # easy ✓: m 1, over 2, hub 1, /(1+2)
      ((1, 0, 2, 2, 0.5), 0.0),  # easy ✓ on target
      ((1, 0, 40, 0, 0.5), -0.5),  # easy ✓: the cap
      ((0, 0, 0, 3, 0.5), 0.5 * 0.5 * 0.6),  # easy ✗: sig(0) · cap · 0.6
      ((1, 1, 0, 8, 1.0), -0.9),  # medium ✓: m 2, |Δ|−m 6, hub 4.5, /5
      ((0, 1, 10, 4, 1.0), sig(5, 2.5) * 0.8),  # medium ✗: m 1, over 5
      ((1, 2, 6, 5, 0.5), sig(2.75, 3.0) * 0.6),  # hard ✓, Δ ≥ −m: m 1.75, cap 0.6
      ((1, 2, 0, 10, 1.0), -0.36),  # hard ✓, Δ < −m: 0.5 · 4.5 / 7.5 · 1.2
      ((0, 2, 3, 0, 2.0), sig(2, 3.0) * 2.4),  # hard ✗: m 1, over 2, cap 2.4
  ]
  args = [np.asarray(x) for x in zip(*(c for c, _ in cases))]
  np.testing.assert_allclose(
      ares.entropy_reward(*args), [s for _, s in cases], rtol=1e-9, atol=1e-12
  )


def test_hwe_counts_windows_and_percentiles():
  entropy = F32([[0, 2, 2, 0, 3, 3], [1, 1, 0, 0, 0, 0]])
  mask = np.array([[1] * 6, [1, 1, 0, 0, 0, 0]], bool)
  triggers = np.zeros((2, 6), bool)
  triggers[0, [0, 3, 4]] = True  # position 4 has no complete window
  triggers[1, 0] = True
  np.testing.assert_array_equal(ares.hwe_counts(entropy, mask, triggers, 2, 1.5), [2, 0])
  np.testing.assert_array_equal(ares.hwe_counts(entropy, mask, triggers, 2, 2.5), [1, 0])
  got = ares.window_percentiles(entropy, mask, 2, 95.0)
  complete = [2.0, 1.0, 1.5, 3.0]
  want = np.percentile(complete + [np.mean(complete)] * 2, 95.0)
  np.testing.assert_allclose(got, [want, 1.0], rtol=1e-6)  # no complete window: H_0 = 1


def test_trigger_mask_matches_normalised_token_strings():
  names = {3: "▁Wait", 4: "Ġbut", 5: " however", 6: "x"}
  decode = lambda ids: "".join(names[i] for i in ids)
  tokens = np.array([[3, 4, 5, 6]])
  mask = np.array([[1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(
      ares.trigger_mask(tokens, mask, ("wait", "BUT"), decode), [[1, 1, 0, 0]]
  )
  np.testing.assert_array_equal(ares.trigger_mask(tokens, mask, (), None), mask)
  with pytest.raises(ValueError, match="loss.ares.triggers"):
    ares.ARESConfig(triggers=("wait", 3)).validate("loss.ares")
  assert cfg(**{"ares.triggers": ("wait",)}).ares.triggers == ("wait",)


class ARESControllerTest(chex.TestCase):
  """ARES's jnp controllers and dynamic KL, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_difficulty_and_alpha_controller(self):
    acc = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0], float)
    groups = np.repeat(np.arange(3), 3)
    np.testing.assert_array_equal(ares.difficulty_of(acc, groups), [0] * 3 + [1] * 3 + [2] * 3)
    alpha_update = self.variant(ares.alpha_update, static_argnums=0)
    counts = jnp.asarray(F32([0, 2, 4, 8, 8, 8, 1, 1, 1]))
    difficulty = jnp.asarray(np.repeat([0, 1, 2], 3))
    config = cfg().ares
    alpha, targets, mean = alpha_update(
        config, jnp.full((3,), 0.5), counts, difficulty, jnp.asarray(groups)
    )
    np.testing.assert_allclose(mean, [2.0, 8.0, 1.0])
    np.testing.assert_allclose(targets, [2.0, 4.0, 5.0])  # ⌊0 + (.35, .5, .65)·8⌋
    np.testing.assert_allclose(alpha, [0.5, 0.5 + 0.05 * 4, 0.5 + 0.05 * 4], rtol=1e-6)
    released = dataclasses.replace(config, target_rule="bucket_mean")
    alpha, targets, _ = alpha_update(
        released,
        jnp.full((3,), 0.5),
        counts,
        jnp.asarray(np.repeat([0, 0, 2], 3)),
        jnp.asarray(groups),
    )
    np.testing.assert_allclose(targets, [5.0, 0.0, 1.0])  # round(5), absent, round(1)
    np.testing.assert_allclose(alpha, [0.5, 0.5, 0.5])  # δ = 0, medium absent: unchanged

  @chex.variants(with_jit=True, without_jit=True)
  def test_beta_controller_deadzone_interval_and_step(self):
    config = cfg(**{"ares.enabled": True, "ares.kl_update_every": 2}).ares
    beta_update = self.variant(ares.beta_update, static_argnums=0)
    state = ares._kl_init_state(cfg(**{"ares.enabled": True}))
    difficulty = jnp.asarray([0, 0, 1, 1])
    kl = jnp.asarray(F32([0.05, 0.05, 0.0101, 0.0101]))
    state = beta_update(config, state, kl, difficulty)
    np.testing.assert_allclose(state["beta"], [1, 1, 1])  # call 1: not an update call
    np.testing.assert_allclose(state["kl"], [0.05, 0.0101, 0.0], rtol=1e-6)
    state = beta_update(config, state, kl, difficulty)
    error = 0.03 * (0.05 / 0.01 - 1)  # EMA of e from 0; |ē| < 0.2
    np.testing.assert_allclose(state["beta"], [math.exp(0.05 * error), 1.0, 1.0], rtol=1e-5)
    # medium: e = 0.01 inside the deadzone; hard: no rows, untouched

  @chex.variants(with_jit=True, without_jit=True)
  def test_dynamic_kl_term(self):
    rng = np.random.default_rng(0)
    logp, ref = F32(-rng.uniform(0.1, 2, (4, 3))), F32(-rng.uniform(0.1, 2, (4, 3)))
    mask = F32([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    difficulty = np.array([0, 1, 2, 2], np.int32)
    config = cfg(**{"ares.enabled": True, "ares.kl_coef": 0.5})
    states = interventions.init_states(config)
    states["ares_kl"] = dict(states["ares_kl"], beta=jnp.asarray(F32([1.0, 2.0, 4.0])))
    args = dict(
        logp=logp,
        old_logp=logp,
        advantages=np.zeros_like(logp),
        mask=mask,
        rng=None,
        states=states,
        info={ares.DIFFICULTY: difficulty},
    )
    loss = self.variant(lambda a, **kw: interventions.policy_loss(config, **a, **kw))
    _, aux = loss(args, ref_logp=ref)
    delta = ref.astype(np.float64) - logp
    k3 = np.exp(delta) - delta - 1
    want = (np.array([1.0, 2.0, 4.0, 4.0])[:, None] * k3 * mask).sum() / mask.sum()
    assert float(aux["ares_kl"]) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="rl.use_reference=True"):
      loss(args)


def _ares_rollout_batch(rewards, counts, difficulty, p95):
  n = len(rewards)
  return interventions.TokenBatch(
      logp=jnp.zeros((n, 2)),
      old_logp=jnp.zeros((n, 2)),
      advantages=jnp.zeros((n, 2)),
      mask=jnp.ones((n, 2)),
      group_ids=jnp.repeat(jnp.arange(n // 2), 2),
      rewards=jnp.asarray(F32(rewards)),
      info={
          ares.HWE_COUNT: jnp.asarray(F32(counts)),
          ares.DIFFICULTY: jnp.asarray(np.asarray(difficulty, np.int32)),
          ares.WINDOW_PERCENTILE: jnp.asarray(F32(p95)),
      },
  )


def test_threshold_is_seeded_by_the_first_batch_then_an_ema():
  config = cfg(**{"ares.enabled": True})
  state = interventions.init_states(config)["ares"]
  assert float(state["threshold"]) == 1.5
  batch = _ares_rollout_batch([1, 0, 0, 0], [1, 2, 3, 4], [1, 1, 2, 2], [1.0, 2.0, 3.0, 10.0])
  state, metrics = ares._before_update(config, state, batch)
  assert float(state["threshold"]) == pytest.approx(2.5)  # the median
  state, _ = ares._before_update(config, state, batch)
  assert float(state["threshold"]) == pytest.approx(2.5)
  state, _ = ares._before_update(
      config,
      state,
      dataclasses.replace(
          batch, info=dict(batch.info, **{ares.WINDOW_PERCENTILE: jnp.full((4,), 4.5)})
      ),
  )
  assert float(state["threshold"]) == pytest.approx(0.99 * 2.5 + 0.01 * 4.5)
  assert "alpha_hard" in metrics


def test_ares_rollout_shapes_rewards_with_the_updated_controller():
  def script(prefix, rng):
    return list(rng.integers(4, 6, rng.integers(2, 5))) + [EOS]

  ctx = FakeContext(script, 4)
  r = ctx.sample(*_questions(3), 4, None)
  r = dataclasses.replace(r, rewards=F32([1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0]))
  config = cfg(**{"ares.enabled": True, "ares.window": 2, "ares.triggers": ("e",)})
  state = {
      "threshold": jnp.float32(0.5),
      "seeded": jnp.bool_(True),
      "alpha": jnp.asarray(F32([0.5, 1.0, 1.5])),
  }
  out = ares.ares_rollout(config, dataclasses.replace(r, info={}), ctx, state)
  trig = r.completion_tokens == 4  # decode(4) = "e"
  counts = ares.hwe_counts(r.entropy, r.completion_mask, trig & r.completion_mask, 2, 0.5)
  difficulty = np.repeat([0, 1, 2], 4)
  alpha, targets, _ = ares.alpha_update(
      config.ares,
      state["alpha"],
      jnp.asarray(counts),
      jnp.asarray(difficulty),
      jnp.asarray(r.group_ids),
  )
  alpha, targets = np.asarray(alpha), np.asarray(targets)
  want = r.rewards + ares.entropy_reward(
      r.rewards, difficulty, counts, targets[difficulty], alpha[difficulty]
  )
  np.testing.assert_allclose(out.rewards, want, rtol=1e-6)
  np.testing.assert_array_equal(out.info[ares.DIFFICULTY], difficulty)
  np.testing.assert_array_equal(out.info[ares.HWE_COUNT], counts)
  assert out.info[ares.WINDOW_PERCENTILE].shape == (12,)
  released = cfg(
      **{
          "ares.enabled": True,
          "ares.window": 2,
          "ares.triggers": ("e",),
          "ares.score_as_released": True,
      }
  )
  out = ares.ares_rollout(released, dataclasses.replace(r, info={}), ctx, state)
  want = r.rewards + ares.entropy_reward(
      r.rewards, np.zeros(12), counts, np.zeros(12), np.full(12, 0.5)
  )
  np.testing.assert_allclose(out.rewards, want, rtol=1e-6)


# ============================================================================ end to end


@pytest.mark.parametrize(
    "preset", ["ettrl", "ettrl_ear", "aepo_agentic", "aepo_agentic_loss", "ares"]
)
def test_preset_trains_two_steps(tmp_path, preset):
  config = presets.get_config(preset)
  history = train_two_steps(config, str(tmp_path))
  if preset == "ares":
    assert "ares/threshold" in history[-1] and "ares_kl/beta_hard" in history[-1]
