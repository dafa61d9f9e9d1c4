"""GPPO / CE-GPPO, GSPO, CISPO and HAPO (loss side and token-level advantage) against NumPy
references written from the formulas in docs/interventions.md (the formulas with and without
jit, chex variants); gradients on clipped tokens; masked tokens never contribute."""

import functools
import math

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import interventions as presets
from entropix_rl import advantages as advantages_lib
from entropix_rl import interventions
from entropix_rl.interventions import aggregation, compose
from entropix_rl.interventions import hapo as hapo_lib
from entropix_rl.interventions import hapo_token_advantage as token_adv_lib
from entropix_rl.train.config_dict import apply_overrides

F32 = lambda x: np.asarray(x, np.float32)


def cfg(**overrides):
  return interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), overrides)
  )


def make_batch(seed=0, rows=6, time=8, spread=0.6):
  """Random inputs with one all-padding row; rewards in {0, 1}."""
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.05, 4.0, (rows, time))
  old = logp + rng.normal(0.0, spread, (rows, time))
  adv = np.repeat(rng.normal(0.0, 1.0, (rows, 1)), time, axis=1)
  lengths = rng.integers(2, time + 1, (rows, 1))
  lengths[0] = 0
  mask = (np.arange(time)[None, :] < lengths).astype(np.float32)
  return dict(
      logp=F32(logp),
      old_logp=F32(old),
      advantages=F32(adv * mask),
      mask=mask,
      entropy=F32(rng.uniform(0.01, 3.0, (rows, time))),
      rewards=F32(np.arange(rows) % 2),
      group_ids=np.arange(rows, dtype=np.int32) // 3,
  )


def run(config, batch, logp=None, **extra):
  """`(loss, aux)` of `policy_loss` on `batch` (every field it holds is passed)."""
  args = dict(batch, rng=jax.random.PRNGKey(0), **extra)
  if logp is not None:
    args["logp"] = logp
  return interventions.policy_loss(config, **args)


def loss_and_grad(config, batch, variant=lambda fn: fn):
  """`(loss, aux, d loss / d logp)`, the gradient function wrapped by `variant` (chex)."""
  value_and_grad = jax.value_and_grad(lambda lp, b: run(config, b, lp), has_aux=True)
  (loss, aux), grad = variant(value_and_grad)(batch["logp"], batch)
  return float(loss), jax.tree.map(np.asarray, aux), np.asarray(grad)


def np_agg(loss, weights, mode="token-mean"):
  if mode == "token-mean":
    return (loss * weights).sum() / weights.sum()
  if mode == "seq-mean-token-mean":
    keep = weights.sum(1) > 0
    return np.mean((loss * weights).sum(1)[keep] / weights.sum(1)[keep])
  return (loss * weights).sum() / loss.size


# --------------------------------------------------------------------------- GPPO / CE-GPPO


def np_gppo(logp, old, adv, eps_low, eps_high, beta1, beta2, c=None):
  """GPPO token loss and d loss / d ℓ from the formula."""
  log_ratio = logp.astype(np.float64) - old
  ratio = np.exp(np.clip(log_ratio, -20, 20))
  low = (adv < 0) & (ratio < 1 - eps_low)
  high = (adv > 0) & (ratio > 1 + eps_high)
  loss = np.where(
      low, -beta1 * (1 - eps_low) * adv, np.where(high, -beta2 * (1 + eps_high) * adv, -ratio * adv)
  )
  grad = np.where(
      low,
      -beta1 * (1 - eps_low) * adv,
      np.where(high, -beta2 * (1 + eps_high) * adv, -ratio * adv * (np.abs(log_ratio) < 20)),
  )
  if c is not None:
    capped = (adv < 0) & (loss > -adv * c)
    loss = np.where(capped, -adv * c, loss)
    grad = np.where(capped, 0.0, grad)
  return loss, low | high, grad


GPPO_SETTINGS = [
    dict(beta1=1.0, beta2=1.0),
    dict(beta1=0.75, beta2=1.0),
    dict(beta1=0.25, beta2=0.5, clip_eps_high=0.28, dual_clip_c=1.5),
]


@pytest.mark.parametrize("setting", GPPO_SETTINGS)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_gppo_value_and_gradient_match_reference(setting, agg):
  batch = make_batch(1)
  setting = dict(setting)
  eps_high, c = setting.pop("clip_eps_high", 0.2), setting.pop("dual_clip_c", None)
  config = cfg(
      name="gppo",
      agg=agg,
      clip_eps_high=eps_high,
      dual_clip_c=c,
      **{f"gppo.{k}": v for k, v in setting.items()},
  )
  loss, aux, grad = loss_and_grad(config, batch)
  m = batch["mask"]
  ref, clipped, ref_grad = np_gppo(
      batch["logp"], batch["old_logp"], batch["advantages"], 0.2, eps_high, c=c, **setting
  )
  assert 0 < clipped[m > 0].mean() < 1
  assert loss == pytest.approx(np_agg(ref, m, agg), rel=1e-5)
  np.testing.assert_allclose(aux["per_token_loss"], ref * m, rtol=1e-5, atol=1e-6)
  assert aux["clip_frac"] == pytest.approx(clipped[m > 0].mean(), rel=1e-6)
  if agg == "token-mean":
    np.testing.assert_allclose(grad, ref_grad * m / m.sum(), rtol=1e-5, atol=1e-7)
  assert np.all(grad[(m > 0) & clipped] != 0)  # clipped tokens keep their gradient


def test_gppo_at_beta_one_has_the_ppo_value():
  batch = make_batch(2)
  ppo, _ = run(cfg(), batch)
  gppo, _ = run(cfg(name="gppo", **{"gppo.beta1": 1.0}), batch)
  assert float(gppo) == pytest.approx(float(ppo), rel=1e-6)


@pytest.mark.parametrize("log_ratio,adv", [(25.0, 1.0), (-25.0, -1.0), (0.5, 1.0), (-0.5, -1.0)])
def test_gppo_gradient_on_clipped_tokens_survives_any_log_ratio(log_ratio, adv):
  """−β·(1 ± ε)·A·∇ℓ on a clipped token, also where a clamped r/sg(r) would give 0."""
  beta1, beta2, eps_low, eps_high = 0.75, 0.5, 0.2, 0.28
  config = cfg(
      name="gppo",
      clip_eps_high=eps_high,
      dual_clip_c=3.0,
      **{"gppo.beta1": beta1, "gppo.beta2": beta2},
  )
  logp = F32([[-1.0, -2.0]])
  batch = dict(
      logp=logp,
      old_logp=F32([[-1.0 - log_ratio, -2.0]]),
      advantages=F32([[adv, adv]]),
      mask=F32([[1.0, 1.0]]),
  )
  _, aux, grad = loss_and_grad(config, batch)
  scale = beta2 * (1 + eps_high) if adv > 0 else beta1 * (1 - eps_low)
  assert grad[0, 0] == pytest.approx(-scale * adv / 2, rel=1e-6)
  assert aux["per_token_loss"][0, 0] == pytest.approx(-scale * adv, rel=1e-6)
  assert grad[0, 1] == pytest.approx(-adv / 2, rel=1e-6)  # on-policy token: −A·r·∇ℓ
  _, _, ppo_grad = loss_and_grad(cfg(clip_eps_high=eps_high), batch)
  assert ppo_grad[0, 0] == 0.0


@pytest.mark.parametrize("agg", aggregation.AGG_MODES)
def test_ce_gppo_positive_nll_term(agg):
  batch = make_batch(3)
  m, positive = batch["mask"], batch["rewards"][:, None] == 1.0
  weights = m * positive
  base = cfg(name="gppo", agg=agg)
  config = cfg(name="gppo", agg=agg, **{"gppo.positive_nll_coef": 0.1})
  assert interventions.needs(config) == {"rewards"} and interventions.needs(base) == frozenset()
  base_loss, base_aux, base_grad = loss_and_grad(base, batch)
  loss, aux, grad = loss_and_grad(config, batch)
  nll = np_agg(-batch["logp"].astype(np.float64), weights, agg)
  assert "positive_nll" not in base_aux  # off: not composed
  assert aux["positive_nll"] == pytest.approx(nll, rel=1e-5)
  assert loss == pytest.approx(base_loss + 0.1 * nll, rel=1e-5)
  if agg == "token-mean":
    np.testing.assert_allclose(grad - base_grad, -0.1 * weights / weights.sum(), atol=1e-7)
  # Only with the gppo surrogate.
  other = cfg(agg=agg, **{"gppo.positive_nll_coef": 0.1})
  assert "positive_nll" not in run(other, batch)[1] and interventions.needs(other) == frozenset()
  no_rewards = {k: v for k, v in batch.items() if k != "rewards"}
  with pytest.raises(ValueError, match="positive_nll reads 'rewards'"):
    run(config, no_rewards)


# ------------------------------------------------------------------------------------ GSPO


def np_gspo(logp, old, adv, mask, eps_low, eps_high):
  """Per-token GSPO loss, clipped flag, s_i."""
  valid = mask > 0
  n = np.maximum(valid.sum(1), 1)
  s = np.exp(np.where(valid, logp.astype(np.float64) - old, 0).sum(1) / n)[:, None]
  l1 = -adv * s
  l2 = -adv * np.clip(s, 1 - eps_low, 1 + eps_high)
  return np.maximum(l1, l2), l2 > l1, s[:, 0]


@pytest.mark.parametrize("agg", aggregation.AGG_MODES)
def test_gspo_value_matches_reference(agg):
  batch = make_batch(4, spread=0.1)
  config = cfg(name="gspo", agg=agg, **{"gspo.clip_eps_low": 0.02, "gspo.clip_eps_high": 0.03})
  loss, aux = run(config, batch)
  m = batch["mask"]
  ref, clipped, _ = np_gspo(batch["logp"], batch["old_logp"], batch["advantages"], m, 0.02, 0.03)
  assert 0 < clipped[m > 0].mean() < 1
  assert float(loss) == pytest.approx(np_agg(ref, m, agg), rel=1e-5)
  np.testing.assert_allclose(aux["per_token_loss"], ref * m, rtol=1e-5, atol=1e-6)


class GSPOTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_gspo_token_gradient_is_the_sequence_objective_gradient(self):
    """With seq-mean-token-mean and sequence advantages, GSPO-token has the value and gradient of
    (1/G) Σ_i max(−A_i s_i, −A_i clip(s_i)) with s_i differentiable; token gradient −A s_i/(G|y_i|)
    on unclipped responses, 0 on clipped ones."""
    batch = make_batch(5, spread=0.1)
    m = batch["mask"]
    eps_low, eps_high = 0.02, 0.03
    config = cfg(
        name="gspo",
        agg="seq-mean-token-mean",
        **{"gspo.clip_eps_low": eps_low, "gspo.clip_eps_high": eps_high},
    )
    loss, _, grad = loss_and_grad(config, batch, self.variant)

    def sequence_objective(logp):
      n = jnp.maximum(m.sum(1), 1)
      s = jnp.exp((m * (logp - batch["old_logp"])).sum(1) / n)
      a = batch["advantages"].sum(1) / n  # the row's advantage
      per_seq = jnp.maximum(-a * s, -a * jnp.clip(s, 1 - eps_low, 1 + eps_high))
      rows = m.sum(1) > 0
      return (per_seq * rows).sum() / rows.sum()

    want, want_grad = jax.value_and_grad(sequence_objective)(batch["logp"])
    assert loss == pytest.approx(float(want), rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    _, clipped, s = np_gspo(
        batch["logp"], batch["old_logp"], batch["advantages"], m, eps_low, eps_high
    )
    rows = (m.sum(1) > 0).sum()
    expected = (
        np.where(clipped, 0.0, -batch["advantages"] * s[:, None])
        * m
        / (np.maximum(m.sum(1, keepdims=True), 1) * rows)
    )
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
    assert clipped[m > 0].any() and (grad[(m > 0) & ~clipped] != 0).all()


# ----------------------------------------------------------------------------------- CISPO


class CISPOTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("no_lower_bound", (1.0, 0.2)), ("tight", (0.1, 0.05)))
  def test_cispo_value_and_gradient_keep_every_token(self, eps):
    batch = make_batch(6)
    config = cfg(name="cispo", **{"cispo.clip_eps_low": eps[0], "cispo.clip_eps_high": eps[1]})
    loss, aux, grad = loss_and_grad(config, batch, self.variant)
    m, a = batch["mask"], batch["advantages"]
    ratio = np.exp(batch["logp"].astype(np.float64) - batch["old_logp"])
    weight = np.clip(ratio, 1 - eps[0], 1 + eps[1])
    clipped = weight != ratio
    assert 0 < clipped[m > 0].mean() < 1
    assert loss == pytest.approx(np_agg(-weight * a * batch["logp"], m), rel=1e-5)
    assert aux["clip_frac"] == pytest.approx(clipped[m > 0].mean(), rel=1e-6)
    np.testing.assert_allclose(grad, -weight * a * m / m.sum(), rtol=1e-5, atol=1e-8)
    assert (grad[(m > 0) & (a != 0)] != 0).all()  # no token is dropped


# ------------------------------------------------------------------------------ HAPO score


def np_score(entropy, mask, pivot, form="symmetric"):
  valid = mask > 0
  u = np.log(np.maximum(entropy.astype(np.float64), 1e-8))
  vals = np.sort(u[valid])
  centre = vals[round(pivot * (len(vals) - 1))]
  h = u - centre
  h = h / math.sqrt(max((h[valid] ** 2).mean(), 1e-8))
  top = max(h[valid & (h > 0)].max(initial=0.0), 1e-8)
  bottom = max(-h[valid & (h < 0)].min(initial=0.0), 1e-8)
  neg = np.abs(h) if form == "absolute" else h
  return np.where(valid, np.where(h > 0, h / top, neg / bottom), 0.0)


class HAPOScoreTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hapo_score_on_the_authors_example(self):
    """H = exp([−2, −1, 0, 1, 2]), pivot 0.8: the paper's ĥ and the authors' code's |ĥ|."""
    entropy = F32(np.exp([[-2.0, -1.0, 0.0, 1.0, 2.0]]))
    mask = np.ones_like(entropy)
    score = functools.partial(hapo_lib.entropy_score, pivot=0.8)
    symmetric = self.variant(score)(entropy, mask)
    absolute = self.variant(functools.partial(score, form="absolute"))(entropy, mask)
    np.testing.assert_allclose(symmetric, [[-1, -2 / 3, -1 / 3, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(absolute, [[1, 2 / 3, 1 / 3, 0, 1]], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((str(p), p) for p in (0.0, 0.1, 0.25, 0.5, 0.8, 0.875, 1.0))
  def test_nearest_rank_is_round_half_even(self, pivot):
    rank = self.variant(hapo_lib.nearest_rank, static_argnums=0)
    for n in range(0, 40):
      want = round(pivot * (n - 1)) if n else 0
      assert int(rank(pivot, jnp.int32(n))) == want, (pivot, n)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((form, form) for form in hapo_lib.SCORE_FORMS)
  def test_hapo_score_matches_reference_over_valid_tokens(self, form):
    batch = make_batch(7)
    m = batch["mask"]
    entropy = np.where(m > 0, batch["entropy"], 1e4).astype(np.float32)  # padding never counts
    score = self.variant(functools.partial(hapo_lib.entropy_score, pivot=0.8, form=form))
    got = np.asarray(score(entropy, m))
    want = np_score(entropy, m, 0.8, form)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got[m > 0].max() == pytest.approx(1.0)
    assert got[m > 0].min() == pytest.approx(-1.0 if form == "symmetric" else 0.0, abs=1e-6)


# -------------------------------------------------------------------------- HAPO surrogate


def np_hapo(
    batch,
    score,
    *,
    eps_low=0.2,
    eps_high=0.2,
    alpha=1.0,
    beta=1.0,
    c=None,
    adaptive_clip=True,
    adaptive_advantage=True,
):
  """HAPO token loss and d loss / d ℓ from the formulas."""
  logp, old, adv = batch["logp"].astype(np.float64), batch["old_logp"], batch["advantages"]
  ratio = np.exp(logp - old)
  el = np.full(score.shape, eps_low)
  eh = np.full(score.shape, eps_high)
  if adaptive_clip:
    el = np.where(score <= 0, eps_low * (1 - alpha * score), eps_low)
    eh = np.where(score > 0, eps_high * (1 + alpha * score), eps_high)
  if adaptive_advantage:
    scaled = adv * (1 + beta * score)
    inside = (ratio > 1 - el / 2) & (ratio < 1 + eh / 2)
    adv = np.where(score > 0, np.where(inside, adv, scaled), np.where(inside, scaled, adv))
  l1 = -adv * ratio
  l2 = -adv * np.clip(ratio, 1 - el, 1 + eh)
  loss = np.maximum(l1, l2)
  grad = np.where(l1 >= l2, -adv * ratio, 0.0)
  if c is not None:
    capped = (adv < 0) & (loss > -adv * c)
    loss = np.where(capped, -adv * c, loss)
    grad = np.where(capped, 0.0, grad)
  return loss, grad


HAPO_SETTINGS = [
    {},
    {"hapo.score_form": "absolute"},
    {"hapo.adaptive_clip": False},
    {"hapo.adaptive_advantage": False, "hapo.clip_alpha": 0.5},
    {"hapo.adv_beta": 0.5, "hapo.entropy_pivot": 0.5, "dual_clip_c": 1.5},
]


class HAPOSurrogateTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((f"setting{i}", s) for i, s in enumerate(HAPO_SETTINGS))
  def test_hapo_value_and_gradient_match_reference(self, setting):
    batch = make_batch(8, spread=0.3)
    config = cfg(name="hapo", **setting)
    c = config.hapo
    loss, aux, grad = loss_and_grad(config, batch, self.variant)
    m = batch["mask"]
    score = np_score(batch["entropy"], m, c.entropy_pivot, c.score_form)
    ref, ref_grad = np_hapo(
        batch,
        score,
        alpha=c.clip_alpha,
        beta=c.adv_beta,
        c=setting.get("dual_clip_c"),
        adaptive_clip=c.adaptive_clip,
        adaptive_advantage=c.adaptive_advantage,
    )
    assert loss == pytest.approx(np_agg(ref, m), rel=1e-5)
    np.testing.assert_allclose(aux["per_token_loss"], ref * m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad * m / m.sum(), rtol=1e-5, atol=1e-7)
    assert 0 < aux["clip_frac"] < 1


def test_hapo_differs_from_ppo_and_never_differentiates_the_entropy():
  batch = make_batch(9, spread=0.3)
  config = cfg(name="hapo")
  assert interventions.needs(config) == {"entropy"} and "entropy" not in compose.grad_needs(config)
  assert interventions.needs_planning_pass(config)
  assert float(run(config, batch)[0]) != pytest.approx(float(run(cfg(), batch)[0]), rel=1e-3)
  grad_h = jax.grad(lambda h: run(config, batch, entropy=h)[0])(batch["entropy"])
  np.testing.assert_array_equal(grad_h, 0.0)


def test_hapo_microbatch_scope_scores_each_chunk():
  batch = make_batch(10, spread=0.3)
  config = cfg(name="hapo", selection_scope="microbatch", microbatch_size=3)
  _, aux = run(config, batch)
  m = batch["mask"]
  score = np.concatenate(
      [np_score(batch["entropy"][r], m[r], 0.8) for r in (slice(0, 3), slice(3, 6))]
  )
  ref, _ = np_hapo(batch, score)
  np.testing.assert_allclose(aux["per_token_loss"], ref * m, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- HAPO token-level advantage


def np_token_advantages(rewards, group_ids, mask, threshold=5.0, eps=1e-6):
  out = np.zeros(mask.shape)
  valid = mask > 0
  for g in np.unique(group_ids):
    rows = np.flatnonzero(group_ids == g)
    tokens = np.concatenate([np.full(valid[i].sum(), rewards[i], np.float64) for i in rows])
    z = (rewards[rows] - tokens.mean()) / (tokens.std() + eps)
    if np.any(np.abs(z[valid[rows].any(1)]) >= threshold):
      r = rewards[rows].astype(np.float64)
      z = (r - r.mean()) / (r.std(ddof=1) + eps) if len(rows) > 1 else r / (1 + eps)
    out[rows] = z[:, None] * valid[rows]
  return out


class TokenAdvantageTest(chex.TestCase):

  def token_advantages(self):
    """`token_group_advantages` as the current variant (the threshold and ε traced)."""
    return self.variant(token_adv_lib.token_group_advantages)

  @chex.variants(with_jit=True, without_jit=True)
  def test_token_advantage_on_the_authors_example(self):
    """Rewards [1.0, 0.9], lengths [2, 1]: valid tokens only (the code, with padding, falls back)."""
    got = self.token_advantages()(
        F32([1.0, 0.9]), np.zeros(2, np.int32), F32([[1, 1], [1, 0]]), threshold=5.0, eps=1e-6
    )
    np.testing.assert_allclose(got, [[0.7071, 0.7071], [-1.4142, 0.0]], atol=2e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_token_advantage_falls_back_to_grpo(self):
    """One 1-token success among 40 tokens of failures: |z| = sqrt(40) ≥ 5, so GRPO."""
    mask = np.zeros((3, 20), np.float32)
    mask[0, 0], mask[1:] = 1.0, 1.0
    rewards, groups = F32([1.0, 0.0, 0.0]), np.zeros(3, np.int32)
    advantages = self.token_advantages()
    got = advantages(rewards, groups, mask, threshold=5.0, eps=1e-6)
    grpo = np.asarray(advantages_lib.grpo(rewards, groups, 1))
    np.testing.assert_allclose(got, grpo[:, None] * mask, rtol=1e-6)
    no_fallback = advantages(rewards, groups, mask, threshold=7.0, eps=1e-6)
    assert no_fallback[0, 0] == pytest.approx(math.sqrt(40), rel=1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_token_advantage_matches_reference_and_runs_on_the_rollout(self):
    rng = np.random.default_rng(11)
    rows, time = 12, 7
    lengths = rng.integers(0, time + 1, rows)
    mask = (np.arange(time)[None] < lengths[:, None]).astype(np.float32)
    rewards = F32(rng.integers(0, 3, rows) / 2)
    groups = np.repeat(np.arange(3), 4).astype(np.int32)
    want = np_token_advantages(rewards, groups, mask)
    got = self.token_advantages()(rewards, groups, mask, threshold=5.0, eps=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    rollout = interventions.TokenBatch(
        logp=F32(np.zeros(mask.shape)),
        old_logp=F32(np.zeros(mask.shape)),
        advantages=F32(np.ones(mask.shape)),
        mask=mask,
        rewards=rewards,
        group_ids=groups,
    )
    off = interventions.rollout_advantages(cfg(), rollout, {})
    np.testing.assert_array_equal(off, rollout.advantages)
    config = cfg(**{"hapo_token_advantage.enabled": True})
    np.testing.assert_allclose(
        interventions.rollout_advantages(config, rollout, {}), want, rtol=1e-5, atol=1e-6
    )
    assert interventions.needs(config) == {"rewards", "group_ids"}


# --------------------------------------------------------------------------- every method


MASKED_SETTINGS = {
    "gppo": {"name": "gppo", "gppo.positive_nll_coef": 0.1, "dual_clip_c": 3.0},
    "gspo": {
        "name": "gspo",
        "agg": "seq-mean-token-mean",
        "gspo.clip_eps_low": 0.02,
        "gspo.clip_eps_high": 0.03,
    },
    "cispo": {"name": "cispo"},
    "hapo": {"name": "hapo", "dual_clip_c": 3.0},
}


@pytest.mark.parametrize("name", sorted(MASKED_SETTINGS))
def test_masked_tokens_never_contribute_even_when_not_finite(name):
  batch = make_batch(12, spread=0.3)
  invalid = batch["mask"] == 0
  config = cfg(**MASKED_SETTINGS[name])
  loss, aux, grad = loss_and_grad(config, batch)
  assert np.isfinite(loss) and (grad[~invalid] != 0).any()
  for pad in (np.nan, np.inf, -np.inf, 40.0):
    other = dict(
        batch,
        **{
            k: F32(np.where(invalid, pad, batch[k]))
            for k in ("logp", "old_logp", "advantages", "entropy")
        },
    )
    loss2, aux2, grad2 = loss_and_grad(config, other)
    assert loss2 == pytest.approx(loss, rel=1e-6), pad
    np.testing.assert_array_equal(grad2[invalid], 0.0)
    np.testing.assert_allclose(grad2, grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(aux2["per_token_loss"], aux["per_token_loss"], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(MASKED_SETTINGS))
def test_aux_keys_are_the_common_diagnostics_plus_active_regularisers(name):
  config = cfg(**MASKED_SETTINGS[name])
  _, aux = run(config, make_batch(13))
  common = set(run(cfg(), make_batch(13))[1])
  regularisers = {"positive_nll"} if config.gppo.positive_nll_coef and name == "gppo" else set()
  assert set(aux) == common | regularisers
  for key in common - {"per_token_loss", "selected"}:
    assert aux[key].shape == () and np.isfinite(aux[key]), key
  assert not np.asarray(aux["selected"]).any()


@pytest.mark.parametrize(
    "override,message",
    [
        ({"gppo.beta1": -0.1}, r"loss.gppo.beta1=-0.1; allowed: a number in \[0.0, inf\]"),
        ({"gppo.positive_nll_coef": -1.0}, "loss.gppo.positive_nll_coef=-1.0"),
        (
            {"gspo.clip_eps_low": 1.5},
            r"loss.gspo.clip_eps_low=1.5; allowed: a number in \[0.0, 1.0\]",
        ),
        ({"cispo.clip_eps_high": -0.2}, "loss.cispo.clip_eps_high=-0.2"),
        ({"hapo.entropy_pivot": 1.2}, "loss.hapo.entropy_pivot=1.2"),
        ({"hapo.score_form": "code"}, r"loss.hapo.score_form='code'; allowed: \('symmetric', "),
        ({"hapo.adaptive_clip": 1}, "loss.hapo.adaptive_clip=1; allowed: True or False"),
        ({"hapo_token_advantage.threshold": 0.0}, "loss.hapo_token_advantage.threshold=0.0"),
    ],
)
def test_bad_values_name_the_field(override, message):
  ((path, value),) = override.items()
  section, field = path.split(".")
  with pytest.raises(ValueError, match=message):
    interventions.resolve_loss_config({section: {field: value}})


EXPECTED_PRESETS = {
    "gppo": {"name": "gppo", "gppo.beta1": 1.0, "gppo.beta2": 1.0, "gppo.positive_nll_coef": 0.0},
    "ce_gppo": {
        "name": "gppo",
        "gppo.beta1": 0.75,
        "gppo.beta2": 1.0,
        "gppo.positive_nll_coef": 0.1,
    },
    "gspo": {
        "name": "gspo",
        "agg": "seq-mean-token-mean",
        "gspo.clip_eps_low": 3e-4,
        "gspo.clip_eps_high": 4e-4,
    },
    "cispo": {"name": "cispo", "cispo.clip_eps_high": 0.2},
    "hapo": {"name": "hapo", "hapo.score_form": "symmetric", "hapo_token_advantage.enabled": False},
    "hapo_token_advantage": {"name": "hapo", "hapo_token_advantage.enabled": True},
}


@pytest.mark.parametrize("preset", sorted(EXPECTED_PRESETS))
def test_presets_resolve_to_the_recipes(preset):
  config = interventions.resolve_loss_config(presets.get_config(preset).loss)
  for path, want in EXPECTED_PRESETS[preset].items():
    value = config
    for part in path.split("."):
      value = getattr(value, part)
    assert value == want, (preset, path)
