"""EMPG, EPO and SEED-GRPO against NumPy references written from their formulas (with and
without jit, chex variants), and the shared infrastructure they read: step ids from a delimiter
token, answer keys and clusters."""

import dataclasses
import functools
import math

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import quickstart
from entropix_rl import interventions, tasks
from entropix_rl.interventions import compose
from entropix_rl.interventions import empg as empg_lib
from entropix_rl.interventions import epo as epo_lib
from entropix_rl.interventions import seed_grpo as seed_lib
from entropix_rl.interventions.batch import TokenBatch, step_ids_from_tokens
from entropix_rl.models import init_params
from entropix_rl.tasks.base import Example
from entropix_rl.tokenizer import CharTokenizer
from entropix_rl.train.config import resolve, step_delimiter_id
from entropix_rl.train.config_dict import apply_overrides, typed
from entropix_rl.train.state import create_train_state
from entropix_rl.train.update import jit_rl_update
from tests.synthetic import max_abs_diff
from tests.test_update import GROUPS, MODEL, PARAM_TOL, TOL, _batch, update_spec


def cfg(**overrides):
  """A LossConfig from dotted overrides on the default ConfigDict."""
  return interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), overrides)
  )


def make_rollout(seed=0, rows=6, time=10, delimiter_rate=0.25):
  """Random behaviour values with multi-step responses, ragged lengths and an empty row."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, time + 1, rows)
  lengths[1] = 0
  mask = (np.arange(time)[None] < lengths[:, None]).astype(np.float32)
  ends = rng.random((rows, time)) < delimiter_rate
  steps = (np.cumsum(ends, axis=1) - ends).astype(np.int32)
  f32 = lambda x: np.asarray(x, np.float32)
  return dict(
      old_logp=f32(-rng.uniform(0.05, 3.0, (rows, time))),
      old_entropy=f32(rng.uniform(0.0, 3.0, (rows, time))),
      advantages=f32(np.repeat(rng.normal(0, 1, (rows, 1)), time, 1) * mask),
      mask=mask,
      step_ids=steps,
      entropy=f32(rng.uniform(0.0, 3.0, (rows, time))),
      logp=f32(-rng.uniform(0.05, 3.0, (rows, time))),
  )


def rollout_batch(data, **fields):
  return TokenBatch(
      logp=data["old_logp"],
      old_logp=data["old_logp"],
      advantages=data["advantages"],
      mask=data["mask"],
      entropy=data["old_entropy"],
      old_entropy=data["old_entropy"],
      step_ids=data["step_ids"],
      **fields,
  )


def np_agg_token_mean(x, m):
  return (x * m).sum() / m.sum()


# ----------------------------------------------------------------------------- EMPG


def np_empg(adv, ent, mask, steps, k, k_future, zeta):
  step_h = {}
  for i in range(adv.shape[0]):
    for j in sorted(set(steps[i][mask[i] > 0].tolist())):
      sel = (steps[i] == j) & (mask[i] > 0)
      step_h[(i, j)] = ent[i][sel].astype(np.float64).mean()
  values = np.array(list(step_h.values()))
  low, high = values.min(), values.max()
  norm = {key: (v - low) / (high - low + 1e-8) for key, v in step_h.items()}
  mean_conf = np.mean([np.exp(-k * v) for v in norm.values()])
  out = np.zeros_like(adv, np.float64)
  for i, t in zip(*np.nonzero(mask)):
    j = steps[i, t]
    g = np.exp(-k * norm[(i, j)]) / mean_conf
    f = np.exp(-k_future * norm[(i, j + 1)]) if (i, j + 1) in norm else 0.0
    out[i, t] = g * adv[i, t] + zeta * f
  return out


# ----------------------------------------------------------------------------- SEED-GRPO


def np_seed_scale(old_logp, mask, groups, clusters, alpha, fn, gamma, estimator, mass):
  seq = (old_logp * mask).sum(1) / np.maximum(mask.sum(1), 1)
  scale = np.ones(len(groups))
  for g in np.unique(groups):
    idx = np.nonzero(groups == g)[0]
    w = np.exp(seq[idx].astype(np.float64)) if mass == "likelihood" else np.ones(len(idx))
    keys = [c if c >= 0 else ("none", i) for i, c in zip(idx, clusters[idx])]
    p = {}
    for key, wi in zip(keys, w):
      p[key] = p.get(key, 0.0) + wi / w.sum()
    probs = np.array(list(p.values()))
    se = -(probs * np.log(probs)).sum() if estimator == "entropy" else -np.log(probs).mean()
    x = alpha * se / np.log(len(idx))
    scale[idx] = {
        "linear": 1 - min(x, 1),
        "exponential": np.exp(-x),
        "focal": (1 - min(x, 1)) ** gamma,
        "inverse": 1 / (1 + x),
    }[fn]
  return scale


def seed_data(seed=0, groups=4, size=5, time=6):
  rng = np.random.default_rng(seed)
  n = groups * size
  mask = (np.arange(time)[None] < rng.integers(1, time + 1, n)[:, None]).astype(np.float32)
  return dict(
      old_logp=np.float32(-rng.uniform(0.05, 2.0, (n, time))),
      mask=mask,
      group_ids=np.repeat(np.arange(groups), size).astype(np.int32),
      cluster_ids=rng.integers(-1, 3, n).astype(np.int32),
      advantages=np.float32(np.repeat(rng.normal(0, 1, (n, 1)), time, 1) * mask),
  )


# ----------------------------------------------------------------------------- EPO


def epo_state(means, counts, updates=0):
  return {
      "sum": jnp.asarray(np.multiply(means, counts), jnp.float32),
      "count": jnp.asarray(counts, jnp.float32),
      "updates": jnp.int32(updates),
  }


def np_epo(h, m, steps, means, has, coef, smooth, r_min, r_max, weight):
  slot = np.clip(steps, 0, len(means) - 1)
  ref, ok = np.asarray(means)[slot], np.asarray(has)[slot]
  below, above = h < r_min * ref, h > r_max * ref
  penalty = (np.maximum(r_min * ref - h, 0) + np.maximum(h - r_max * ref, 0)) * ok
  loss = -coef * np_agg_token_mean(h, m) + coef * smooth * weight * np_agg_token_mean(penalty, m)
  grad = m / m.sum() * (-coef + coef * smooth * weight * ok * (above.astype(float) - below))
  return loss, np_agg_token_mean(penalty, m), grad


def epo_loss(config, data, state, entropy):
  return interventions.policy_loss(
      config,
      logp=data["logp"],
      old_logp=data["logp"],
      advantages=np.zeros_like(data["logp"]),
      mask=data["mask"],
      rng=None,
      entropy=entropy,
      step_ids=data["step_ids"],
      states={"epo": state},
  )


class EPOTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("no_phase", 0), ("phase", 10))
  def test_epo_value_and_gradient_match_reference(self, phase):
    data = make_rollout(5)
    config = cfg(
        **{
            "epo.enabled": True,
            "epo.coef": 0.01,
            "epo.smooth_coef": 2.0,
            "epo.max_turns": 3,
            "epo.phase_updates": phase,
        }
    )
    assert compose.grad_needs(config) == {"entropy"}
    means, counts = [1.2, 1.6, 0.9], [2, 1, 0]  # turn 2 (and later, pooled) has no history
    state = epo_state(means, counts, updates=7)
    weight = float(epo_lib.phase_weight(7, phase))
    loss_fn = self.variant(lambda s, h: epo_loss(config, data, s, h))
    loss, aux = loss_fn(state, data["entropy"])
    want, metric, want_grad = np_epo(
        data["entropy"],
        data["mask"],
        data["step_ids"],
        means,
        [True, True, False],
        0.01,
        2.0,
        0.5,
        1.5,
        weight,
    )
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(aux["epo"]) == pytest.approx(metric, rel=1e-5)
    grad = jax.grad(lambda h: loss_fn(state, h)[0])(data["entropy"])
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)
    assert np.any(np.abs(want_grad) > 0.011 / data["mask"].sum())  # the band term acts
    assert np.all(np.asarray(grad)[data["mask"] == 0] == 0)  # masked tokens carry no gradient


def test_epo_without_history_is_an_entropy_bonus_and_masked_tokens_do_not_count():
  data = make_rollout(6)
  config = cfg(**{"epo.enabled": True})
  empty = interventions.init_states(config)["epo"]
  loss, aux = epo_loss(config, data, empty, data["entropy"])
  assert float(loss) == pytest.approx(
      -0.001 * np_agg_token_mean(data["entropy"], data["mask"]), rel=1e-5
  )
  assert float(aux["epo"]) == 0.0
  state = epo_state([0.1], [1])
  noisy = data["entropy"] + (1 - data["mask"]) * 100.0
  assert float(
      epo_loss(cfg(**{"epo.enabled": True, "epo.max_turns": 1}), data, state, noisy)[0]
  ) == pytest.approx(
      float(
          epo_loss(cfg(**{"epo.enabled": True, "epo.max_turns": 1}), data, state, data["entropy"])[
              0
          ]
      ),
      rel=1e-6,
  )


@pytest.mark.parametrize("includes_current", [True, False])
def test_epo_history_averages_per_turn_means_over_updates(includes_current):
  config = cfg(
      **{"epo.enabled": True, "epo.max_turns": 2, "epo.history_includes_current": includes_current}
  )
  state = interventions.init_states(config)
  per_update = []
  for seed in (7, 8, 9):
    data = make_rollout(seed)
    rollout = rollout_batch(data)
    state, before = interventions.before_update(config, state, rollout)
    assert bool(before) == includes_current
    state, after = interventions.after_update(config, state, rollout)
    slot = np.clip(data["step_ids"], 0, 1)
    m = data["mask"] > 0
    per_update.append([data["old_entropy"][m & (slot == j)].mean() for j in (0, 1)])
    assert float(after["epo/phase_weight"]) == 1.0
  reference, has = epo_lib.historical_mean(state["epo"])
  np.testing.assert_allclose(reference, np.mean(per_update, axis=0), rtol=1e-5)
  assert bool(has.all()) and int(state["epo"]["updates"]) == 3


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"epo.max_ratio": 0.4},
            r"loss.epo.max_ratio=0.4; allowed: a number >= loss.epo.min_ratio",
        ),
        ({"epo.max_turns": 0}, r"loss.epo.max_turns=0; allowed: an int >= 1"),
        ({"seed_grpo.scale_fn": "cubic"}, r"loss.seed_grpo.scale_fn='cubic'; allowed"),
        ({"seed_grpo.gamma": 0.0}, r"loss.seed_grpo.gamma=0.0; allowed"),
        ({"empg.zeta": -1.0}, r"loss.empg.zeta=-1.0; allowed"),
        ({"empg.k": -0.5}, r"loss.empg.k=-0.5; allowed"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    cfg(**overrides)


# ------------------------------------------------------- the formulas, with and without jit


def empg_fn(variant, **constants):
  """`empg_advantages` with its constants, wrapped by a chex variant."""
  return variant(functools.partial(empg_lib.empg_advantages, **constants))


class FormulaTest(chex.TestCase):
  """Step ids, EMPG, SEED-GRPO and EPO's phase weight, each with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_step_ids_count_the_delimiters_before_each_token(self):
    plus = 7
    step_ids = self.variant(step_ids_from_tokens, static_argnums=1)
    completion = np.array([[3, 4, plus, 5, plus, plus, 6], [plus, 3, 3, 3, 0, 0, 0]])
    np.testing.assert_array_equal(
        step_ids(completion, plus), [[0, 0, 0, 1, 1, 2, 3], [0, 1, 1, 1, 1, 1, 1]]
    )
    np.testing.assert_array_equal(step_ids(completion, -1), np.zeros((2, 7)))
    assert step_ids(completion, plus).dtype == jnp.int32

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("paper", 1.0, 1.0, 0.1), ("sharp", 3.0, 0.5, 0.4))
  def test_empg_matches_reference(self, k, k_future, zeta):
    data = make_rollout(1)
    config = cfg(
        **{"empg.enabled": True, "empg.k": k, "empg.k_future": k_future, "empg.zeta": zeta}
    )
    assert interventions.needs(config) >= {"old_entropy", "step_ids"}
    got = self.variant(lambda b, s: interventions.rollout_advantages(config, b, s))(
        rollout_batch(data), interventions.init_states(config)
    )
    want = np_empg(
        data["advantages"], data["old_entropy"], data["mask"], data["step_ids"], k, k_future, zeta
    )
    assert len(set(data["step_ids"][data["mask"] > 0].tolist())) > 2  # multi-step data
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_empg_single_step_is_a_response_confidence_weight(self):
    data = make_rollout(2)
    data["step_ids"] = np.zeros_like(data["step_ids"])
    empg = empg_fn(self.variant, k=1.0, k_future=1.0, zeta=0.1)
    got = np.asarray(empg(data["advantages"], data["old_entropy"], data["mask"], data["step_ids"]))
    valid = data["mask"].sum(1) > 0
    a = data["advantages"][:, 0]
    scale = got[valid, 0] / a[valid]  # no future bonus: A' = g·A
    np.testing.assert_allclose(
        got[valid], (scale[:, None] * data["advantages"][valid]), rtol=1e-5, atol=1e-6
    )
    assert scale.mean() == pytest.approx(1.0, rel=1e-5)  # g has batch mean 1
    seq_h = (data["old_entropy"] * data["mask"]).sum(1)[valid] / data["mask"].sum(1)[valid]
    assert np.all(np.diff(scale[np.argsort(seq_h)]) <= 1e-6)  # more entropy, less weight

  @chex.variants(with_jit=True, without_jit=True)
  def test_empg_masked_tokens_never_count_and_output_is_constant(self):
    data = make_rollout(3)
    empg = empg_fn(self.variant, k=1.0, k_future=1.0, zeta=0.1)
    base = empg(data["advantages"], data["old_entropy"], data["mask"], data["step_ids"])
    noisy = data["old_entropy"] + (1 - data["mask"]) * 50.0
    again = empg(
        data["advantages"] + (1 - data["mask"]) * 9.0, noisy, data["mask"], data["step_ids"]
    )
    np.testing.assert_array_equal(base, again)
    assert np.all(np.asarray(base)[data["mask"] == 0] == 0)
    grad = jax.grad(lambda h: empg(data["advantages"], h, data["mask"], data["step_ids"]).sum())(
        data["old_entropy"]
    )
    np.testing.assert_array_equal(grad, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_empg_renormalisation_and_equal_entropies(self):
    data = make_rollout(4)
    m = data["mask"] > 0
    renormalised = empg_fn(self.variant, k=1.0, k_future=1.0, zeta=0.1, renormalize=True)
    out = np.asarray(
        renormalised(data["advantages"], data["old_entropy"], data["mask"], data["step_ids"])
    )
    assert out[m].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[m].std() == pytest.approx(1.0, rel=1e-4)
    flat = np.asarray(
        empg_fn(self.variant, k=2.0, k_future=1.0, zeta=0.0)(
            data["advantages"],
            np.ones_like(data["old_entropy"]),
            data["mask"],
            data["step_ids"],
        )
    )
    np.testing.assert_allclose(flat, data["advantages"], rtol=1e-6)  # all Ĥ = 0: g = 1

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      (f"{fn}_{estimator}_{mass}", fn, estimator, mass)
      for fn in seed_lib.SCALE_FNS
      for estimator, mass in [
          ("entropy", "likelihood"),
          ("mean_log", "count"),
          ("entropy", "count"),
      ]
  )
  def test_seed_grpo_matches_reference(self, fn, estimator, mass):
    d = seed_data(1)
    config = cfg(
        **{
            "seed_grpo.enabled": True,
            "seed_grpo.scale_fn": fn,
            "seed_grpo.alpha": 0.7,
            "seed_grpo.gamma": 1.5,
            "seed_grpo.estimator": estimator,
            "seed_grpo.mass": mass,
        }
    )
    batch = TokenBatch(
        logp=d["old_logp"],
        old_logp=d["old_logp"],
        advantages=d["advantages"],
        mask=d["mask"],
        group_ids=d["group_ids"],
        cluster_ids=d["cluster_ids"],
    )
    got = self.variant(lambda b: interventions.rollout_advantages(config, b, {}))(batch)
    scale = np_seed_scale(
        d["old_logp"], d["mask"], d["group_ids"], d["cluster_ids"], 0.7, fn, 1.5, estimator, mass
    )
    assert len(np.unique(np.round(scale, 6))) > 2
    np.testing.assert_allclose(got, d["advantages"] * scale[:, None], rtol=1e-5, atol=1e-6)

  def seed_fns(self):
    """(`semantic_entropy`, `seed_grpo_scale`) as the current variant, constants static."""
    entropy = self.variant(seed_lib.semantic_entropy, static_argnames=("estimator", "mass"))
    scale = self.variant(
        seed_lib.seed_grpo_scale,
        static_argnames=("alpha", "scale_fn", "gamma", "estimator", "mass"),
    )
    return entropy, scale

  @chex.variants(with_jit=True, without_jit=True)
  def test_seed_grpo_identical_answers_give_zero_entropy_and_distinct_give_ln_g(self):
    semantic_entropy, seed_grpo_scale = self.seed_fns()
    d = seed_data(2, groups=2, size=6)
    seq = jnp.asarray(-np.random.default_rng(0).uniform(0.1, 2.0, 12), jnp.float32)
    same = np.zeros(12, np.int32)
    distinct = np.tile(np.arange(6), 2).astype(np.int32)
    no_answers = np.full(12, -1, np.int32)
    for mass in seed_lib.MASSES:
      for estimator in seed_lib.ESTIMATORS:
        se = semantic_entropy(seq, d["group_ids"], same, estimator=estimator, mass=mass)
        np.testing.assert_allclose(se, 0.0, atol=1e-6)
    equal = jnp.full(12, -0.7, jnp.float32)  # equal masses: the likelihood mass is the count
    for clusters in (distinct, no_answers):
      for mass in seed_lib.MASSES:
        for estimator in seed_lib.ESTIMATORS:
          se = semantic_entropy(equal, d["group_ids"], clusters, estimator=estimator, mass=mass)
          np.testing.assert_allclose(se, math.log(6), rtol=1e-6)
    for fn in seed_lib.SCALE_FNS:
      scale = seed_grpo_scale(
          d["old_logp"],
          d["mask"],
          d["group_ids"],
          same,
          alpha=1.0,
          scale_fn=fn,
          gamma=2.0,
          estimator="entropy",
          mass="likelihood",
      )
      np.testing.assert_allclose(scale, 1.0, atol=1e-6)
    scale = seed_grpo_scale(
        np.zeros_like(d["old_logp"]),
        d["mask"],
        d["group_ids"],
        distinct,
        alpha=1.0,
        scale_fn="linear",
        gamma=2.0,
        estimator="entropy",
        mass="likelihood",
    )
    np.testing.assert_allclose(scale, 0.0, atol=1e-6)  # SE = ln G, x = α = 1

  @chex.variants(with_jit=True, without_jit=True)
  def test_seed_grpo_masked_tokens_and_singleton_groups(self):
    _, seed_grpo_scale = self.seed_fns()
    d = seed_data(3)
    kwargs = dict(
        alpha=1.0, scale_fn="exponential", gamma=2.0, estimator="entropy", mass="likelihood"
    )
    base = seed_grpo_scale(d["old_logp"], d["mask"], d["group_ids"], d["cluster_ids"], **kwargs)
    noisy = d["old_logp"] - (1 - d["mask"]) * 40.0
    np.testing.assert_array_equal(
        base, seed_grpo_scale(noisy, d["mask"], d["group_ids"], d["cluster_ids"], **kwargs)
    )
    single = seed_grpo_scale(
        d["old_logp"], d["mask"], np.arange(20, dtype=np.int32), d["cluster_ids"], **kwargs
    )
    np.testing.assert_array_equal(single, 1.0)  # G = 1: ln G = 0, no scaling
    with pytest.raises(ValueError, match="reads 'cluster_ids'"):
      interventions.rollout_advantages(
          cfg(**{"seed_grpo.enabled": True}),
          TokenBatch(
              logp=d["old_logp"],
              old_logp=d["old_logp"],
              advantages=d["advantages"],
              mask=d["mask"],
              group_ids=d["group_ids"],
          ),
          {},
      )

  @chex.variants(with_jit=True, without_jit=True)
  def test_epo_phase_weight_follows_the_authors_schedule(self):
    weight = self.variant(epo_lib.phase_weight, static_argnums=1)
    assert float(weight(0, 150)) == pytest.approx(1.0)
    assert float(weight(75, 150)) == pytest.approx(1 - 0.2 * (1 - math.exp(-2)))
    assert float(weight(76, 150)) == pytest.approx(0.8 * math.exp(-3 / 75), rel=1e-6)
    assert float(weight(500, 150)) == pytest.approx(0.8 * math.exp(-3), rel=1e-6)
    assert float(weight(3, 0)) == 1.0


# ----------------------------------------------------------------------------- answer keys


def test_answer_keys_by_exact_string_and_by_value():
  dec = tasks.Decomposition()
  ex = Example(prompt="123=", answer="61+62", info={"n": 123})
  keys = {
      t: (dec.answer_key(ex, t, "exact_string"), dec.answer_key(ex, t, "value"))
      for t in (" 061+62 ", "61+62", "100+23", "100+24", "12x")
  }
  assert keys[" 061+62 "] == ("061+62", 123) and keys["61+62"] == ("61+62", 123)
  assert keys["100+23"][1] == 123 and keys["100+24"][1] == 124 and keys["12x"] == (None, None)
  ar = tasks.Arithmetic()
  ex = Example(prompt="1+2=", answer="3")
  assert ar.answer_key(ex, "03", "exact_string") == "03" and ar.answer_key(ex, "03", "value") == 3
  assert ar.answer_key(ex, "3+", "value") is None
  cd = tasks.Countdown()
  ex = Example(prompt="6:2,3=", answer="2*3", info={"numbers": (2, 3), "target": 6})
  assert cd.answer_key(ex, "2*3", "value") == cd.answer_key(ex, "3*2", "value") == 6
  assert cd.answer_key(ex, "2*3", "exact_string") != cd.answer_key(ex, "3*2", "exact_string")
  assert cd.answer_key(ex, "__import__('os')", "value") is None
  with pytest.raises(ValueError, match=r"rl.cluster_by='semantic'; allowed"):
    dec.answer_key(Example(prompt="", answer="", info={"n": 3}), "1+2", "semantic")


def test_math_answer_keys_use_math_verify_for_values():
  task = tasks.MathTask()
  ex = Example(prompt="", answer="1/2")
  half, point = "so \\boxed{\\frac{1}{2}}", "thus \\boxed{0.5 }"
  assert task.answer_key(ex, half, "exact_string") == "\\frac{1}{2}"
  assert task.answer_key(ex, point, "exact_string") == "0.5"
  assert task.answer_key(ex, half, "value") == task.answer_key(ex, point, "value")
  assert task.answer_key(ex, "no box", "value") is None
  assert task.answer_key(ex, "\\boxed{}", "exact_string") is None


def test_answer_clusters_number_keys_within_each_group():
  keys = ["a", "b", "a", None, "b", "b", None, "c"]
  groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(tasks.answer_clusters(keys, groups), [0, 1, 0, -1, 0, 0, -1, 1])


def test_step_delimiter_resolution_names_the_field():
  tok = CharTokenizer("0123456789+=")
  assert step_delimiter_id(tok, "") == -1
  assert step_delimiter_id(tok, "+") == tok.encode("+")[0]
  with pytest.raises(ValueError, match=r"rl.step_delimiter='\+\+' encodes to 2 tokens"):
    step_delimiter_id(tok, "++")
  with pytest.raises(ValueError, match=r"rl.step_delimiter='x' cannot be encoded"):
    step_delimiter_id(tok, "x")


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "cluster_by",
            "semantic",
            r"rl.cluster_by='semantic'; allowed: \('exact_string', 'value'\)",
        ),
        ("step_delimiter", "+=", r"rl.step_delimiter='\+=' encodes to 2 tokens"),
    ],
)
def test_resolve_checks_the_step_and_cluster_fields(field, value, message):
  config = quickstart.get_config()
  config.rl[field] = value
  with pytest.raises(ValueError, match=message):
    resolve(typed(config))
  config.rl.step_delimiter, config.rl.cluster_by = "+", "value"
  assert resolve(typed(config)).step_delimiter_id == 3 + "0123456789+=".index("+")


# ----------------------------------------------------------------------------- the RL update


def _update(loss_overrides, micro, delimiter, cluster_ids):
  loss_cfg = cfg(**loss_overrides)
  spec = dataclasses.replace(
      update_spec(
          loss_cfg,
          ppo_epochs=2,
          num_minibatches=2,
          measure_dynamics=False,
          micro_batch_size=micro,
          logprob_micro_batch_size=2 if micro else 0,
      ),
      step_delimiter_id=delimiter,
  )
  optimizer = optax.sgd(0.2)
  params = init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2)
  state = create_train_state(
      params, optimizer, jax.random.PRNGKey(1), interventions=interventions.init_states(loss_cfg)
  )
  batch = dict(_batch(), cluster_ids=cluster_ids)
  return jit_rl_update(spec, optimizer)(state, batch)


def test_rl_update_with_steps_and_clusters_is_exact_under_micro_batches():
  """All three at once, with a delimiter that splits the random completions into steps and
  answer clusters in the batch; EPO's history is the state compared across splits."""
  overrides = {
      "empg.enabled": True,
      "seed_grpo.enabled": True,
      "epo.enabled": True,
      "epo.coef": 0.05,
      "epo.min_ratio": 0.95,
      "epo.max_ratio": 1.05,
  }
  clusters = np.tile(np.array([0, 1, 0, -1], np.int32), GROUPS)
  ref_state, ref = _update(overrides, 0, 5, clusters)
  assert float(ref["loss/epo"]) > 0  # the band term is active
  assert int(jnp.sum(ref_state.interventions["epo"]["count"] > 0)) >= 2  # several turns seen
  for micro in (1, 4):
    state, got = _update(overrides, micro, 5, clusters)
    for key in ("loss/loss", "loss/pg_loss", "loss/epo", "loss/grad_norm", "advantage/mean_abs"):
      want = float(ref[key])
      assert abs(float(got[key]) - want) < TOL * max(1.0, abs(want)), (key, micro)
    assert max_abs_diff(state.params, ref_state.params) < PARAM_TOL
    assert max_abs_diff(state.interventions, ref_state.interventions) < TOL
  _, one_step = _update(overrides, 0, -1, clusters)
  assert float(one_step["advantage/mean_abs"]) != pytest.approx(float(ref["advantage/mean_abs"]))
