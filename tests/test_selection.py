"""Clip-Cov, KL-Cov, the 80/20 selector and the selection scope against NumPy references
written from the formulas in docs/interventions.md (Clip-Cov, KL-Cov, 80/20, selection scope);
representative ones with and without jit (chex variants)."""

import fractions
import math

from absl.testing import parameterized
import chex
import jax
import numpy as np
import pytest

from entropix_rl import interventions
from entropix_rl.train.config_dict import apply_overrides

WIDE_BAND = {"clip_cov.lb": -1e6, "clip_cov.ub": 1e6}  # every valid token has cov in the band


def cfg(**overrides):
  """A LossConfig from dotted overrides on the default ConfigDict."""
  return interventions.resolve_loss_config(
      apply_overrides(interventions.default_loss_config(), overrides)
  )


def np_ppo(logp, old, adv, eps_low, eps_high):
  """PPO token loss, clipped flag and d loss / d logp (no dual-clip)."""
  ratio = np.exp(np.clip(logp.astype(np.float64) - old, -20, 20))
  l1 = -adv * ratio
  l2 = -adv * np.clip(ratio, 1 - eps_low, 1 + eps_high)
  loss = np.maximum(l1, l2)
  grad = np.where(l1 >= l2, -adv * ratio, 0.0) * (np.abs(logp - old) < 20)
  return loss, l2 > l1, grad


def np_floor(ratio, n):
  """`floor(ratio · n)` with the ratio read as the decimal fraction it was written as."""
  return math.floor(fractions.Fraction(repr(ratio)) * n)


def np_ceil(ratio, n):
  return math.ceil(fractions.Fraction(repr(ratio)) * n)


def np_token_cov(logp, adv, mask):
  """`c_t = (A_t − Ā)(ℓ_t − ℓ̄)`, means over the valid tokens, 0 at masked tokens."""
  valid = mask > 0
  logp, adv = logp.astype(np.float64), adv.astype(np.float64)
  n = max(valid.sum(), 1)
  return np.where(valid, (adv - adv[valid].sum() / n) * (logp - logp[valid].sum() / n), 0.0)


def np_top_k(score, valid, k):
  """Bool mask of the k largest valid scores; asserts the k-th and (k+1)-th are well apart."""
  flat, ok = score.ravel(), valid.ravel()
  order = np.argsort(-np.where(ok, flat, -np.inf), kind="stable")
  k = min(k, ok.sum())
  out = np.zeros(flat.shape, bool)
  out[order[:k]] = True
  if k < ok.sum():
    assert flat[order[k - 1]] - flat[order[k]] > 1e-4, "near-tie: pick another seed"
  return out.reshape(score.shape)


def make_batch(seed, n_valid, rows=4, time=16, spread=0.0):
  """A batch with exactly `n_valid` valid tokens at random positions.

  Padding holds extreme values (log-prob −50, advantage 30, entropy 100) that would dominate
  any statistic or pick they leaked into. `spread` is the std of `logp − old_logp`.
  """
  rng = np.random.default_rng(seed)
  flat = np.zeros(rows * time, np.float32)
  flat[rng.permutation(rows * time)[:n_valid]] = 1.0
  mask = flat.reshape(rows, time)
  valid = mask > 0
  logp = -rng.uniform(0.05, 4.0, (rows, time))
  old = logp + rng.normal(0.0, spread, (rows, time))
  adv = rng.normal(0.0, 1.0, (rows, time))
  entropy = rng.uniform(0.0, 3.0, (rows, time))
  f32 = lambda x: np.asarray(x, np.float32)
  return dict(
      logp=f32(np.where(valid, logp, -50.0)),
      old_logp=f32(np.where(valid, old, -50.0)),
      advantages=f32(np.where(valid, adv, 30.0)),
      mask=mask,
      entropy=f32(np.where(valid, entropy, 100.0)),
  )


def loss_and_aux(config, batch, key=0, logp=None, variant=lambda fn: fn):
  """`policy_loss` on `batch`, wrapped by `variant` (a chex variant: jit or not)."""
  logp = batch["logp"] if logp is None else logp

  def loss(logp, batch, rng):
    return interventions.policy_loss(
        config,
        logp=logp,
        old_logp=batch["old_logp"],
        advantages=batch["advantages"],
        mask=batch["mask"],
        rng=rng,
        entropy=batch["entropy"],
    )

  return variant(loss)(logp, batch, jax.random.PRNGKey(key))


def selected_and_grad(config, batch, key=0, variant=lambda fn: fn):
  """(`selected` as NumPy bool, d loss / d logp as NumPy, loss as float); the gradient function
  wrapped by `variant`."""
  value_and_grad = jax.value_and_grad(lambda lp, b: loss_and_aux(config, b, key, lp), has_aux=True)
  (loss, aux), grad = variant(value_and_grad)(batch["logp"], batch)
  return np.asarray(aux["selected"]), np.asarray(grad), float(loss)


# ---------------------------------------------------------------------------- Clip-Cov ------


@pytest.mark.parametrize("ratio", [2e-4, 0.2, 0.3])
@pytest.mark.parametrize("n_valid", [3, 7, 50])
def test_clip_cov_count_at_tiny_n(n_valid, ratio):
  batch = make_batch(n_valid, n_valid)  # on-policy: nothing clipped, every valid token eligible
  _, aux = loss_and_aux(cfg(name="clip_cov", **{"clip_cov.ratio": ratio, **WIDE_BAND}), batch)
  selected = np.asarray(aux["selected"])
  expected = max(1, np_floor(ratio, n_valid))  # n_clip = max(1, floor(r·N)) <= N = |E|
  assert selected.sum() == expected == float(aux["n_selected"])
  assert not (selected & (batch["mask"] == 0)).any()


def test_clip_cov_count_is_capped_by_the_eligible_set():
  batch = make_batch(11, 50)
  cov = np_token_cov(batch["logp"], batch["advantages"], batch["mask"])
  valid = batch["mask"] > 0
  lb = np.sort(cov[valid])[-4] - 1e-3  # exactly three valid tokens have c_t > lb
  _, aux = loss_and_aux(
      cfg(name="clip_cov", **{"clip_cov.ratio": 0.3, "clip_cov.lb": lb, "clip_cov.ub": 1e6}), batch
  )
  np.testing.assert_array_equal(aux["selected"], valid & (cov > lb))  # min(15, |E| = 3)


def _band_config(batch, ratio, eps):
  """Clip-Cov config whose band (lb, ub) sits between covariance values, and the NumPy E."""
  valid = batch["mask"] > 0
  cov = np_token_cov(batch["logp"], batch["advantages"], batch["mask"])
  values = np.sort(cov[valid])
  i, j = int(0.3 * len(values)), int(0.9 * len(values))
  lb, ub = (values[i] + values[i + 1]) / 2, (values[j] + values[j + 1]) / 2
  assert min(values[i + 1] - values[i], values[j + 1] - values[j]) > 1e-4
  _, clipped, _ = np_ppo(batch["logp"], batch["old_logp"], batch["advantages"], eps, eps)
  eligible = valid & ~clipped & (cov > lb) & (cov < ub)
  config = cfg(
      name="clip_cov",
      clip_eps_low=eps,
      clip_eps_high=eps,
      **{"clip_cov.ratio": ratio, "clip_cov.lb": float(lb), "clip_cov.ub": float(ub)},
  )
  return config, eligible, clipped & valid


def test_clip_cov_picks_lie_in_the_band_unclipped_and_valid():
  batch = make_batch(12, 50, spread=0.3)
  config, eligible, clipped = _band_config(batch, 1.0, 0.2)
  assert clipped.any() and eligible.sum() >= 10  # the data exercises the clipped exclusion
  # ratio 1: n_clip = N >= |E|, so the pick is exactly E.
  _, aux = loss_and_aux(config, batch)
  np.testing.assert_array_equal(aux["selected"], eligible)

  # ratio 0.1: 5 random tokens of E per key; over many keys every eligible token shows up.
  config, eligible, _ = _band_config(batch, 0.1, 0.2)
  pick = jax.jit(
      jax.vmap(
          lambda key: interventions.policy_loss(
              config,
              logp=batch["logp"],
              old_logp=batch["old_logp"],
              advantages=batch["advantages"],
              mask=batch["mask"],
              rng=key,
          )[1]["selected"]
      )
  )
  picks = np.asarray(pick(jax.random.split(jax.random.PRNGKey(3), 64)))
  assert (picks.sum(axis=(1, 2)) == min(np_floor(0.1, 50), eligible.sum())).all()
  assert not (picks & ~eligible).any()
  np.testing.assert_array_equal(picks.any(axis=0), eligible)
  assert len({p.tobytes() for p in picks}) > 1  # the subset depends on the key
  again = np.asarray(pick(jax.random.split(jax.random.PRNGKey(3), 64)))
  np.testing.assert_array_equal(again, picks)  # reproducible for a fixed key


class ClipCovTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_clip_cov_gradient_is_zero_exactly_at_picked_tokens(self):
    batch = make_batch(13, 50, spread=0.3)
    m = batch["mask"]
    config = cfg(name="clip_cov", **{"clip_cov.ratio": 0.2, **WIDE_BAND})
    selected, grad, loss = selected_and_grad(config, batch, variant=self.variant)
    ref_loss, clipped, ref_grad = np_ppo(
        batch["logp"], batch["old_logp"], batch["advantages"], 0.2, 0.2
    )
    assert selected.sum() == 10
    assert (grad[selected] == 0.0).all()
    live = (m > 0) & ~selected & ~clipped & (batch["advantages"] != 0)
    assert live.sum() > 20 and (grad[live] != 0.0).all()
    # Picked tokens stay in the token-mean denominator N.
    np.testing.assert_allclose(
        grad, np.where(selected, 0.0, ref_grad) * m / m.sum(), rtol=1e-5, atol=1e-8
    )
    assert loss == pytest.approx((np.where(selected, 0.0, ref_loss) * m).sum() / m.sum(), rel=1e-5)


# ------------------------------------------------------------------------------ KL-Cov -----


@pytest.mark.parametrize("ratio", [2e-3, 0.2])
@pytest.mark.parametrize("n_valid", [3, 7, 50])
def test_kl_cov_picks_the_top_k_covariance_tokens(n_valid, ratio):
  batch = make_batch(20 + n_valid, n_valid, spread=0.3)
  _, aux = loss_and_aux(cfg(name="kl_cov", **{"kl_cov.ratio": ratio}), batch)
  cov = np_token_cov(batch["logp"], batch["advantages"], batch["mask"])
  k = max(1, np_floor(ratio, n_valid))
  np.testing.assert_array_equal(aux["selected"], np_top_k(cov, batch["mask"] > 0, k))


class KLCovTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_cov_loss_and_penalty_gradient_sign(self):
    batch = make_batch(30, 50, spread=0.5)
    m, adv = batch["mask"], batch["advantages"]
    log_ratio = batch["logp"].astype(np.float64) - batch["old_logp"]
    assert np.abs(log_ratio[m > 0]).min() > 1e-4  # away from |x|'s kink
    coef = 0.7
    config = cfg(name="kl_cov", **{"kl_cov.ratio": 0.2, "kl_cov.coef": coef})
    loss, aux = loss_and_aux(config, batch, variant=self.variant)
    selected = np.asarray(aux["selected"])
    assert selected.sum() == 10
    ratio = np.exp(log_ratio)
    # L_t = −A_t r_t + β |ℓ_t − ℓ^old_t| 1[t ∈ I_KL], no clipping; token-mean.
    ref = -adv * ratio + coef * np.abs(log_ratio) * selected
    np.testing.assert_allclose(aux["per_token_loss"], ref * m, rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx((ref * m).sum() / m.sum(), rel=1e-5)
    # The drift the penalty acts on: Σ |ℓ − ℓ^old| over the picked tokens.
    assert aux["selected_abs_log_ratio_sum"] == pytest.approx(
        (np.abs(log_ratio) * selected).sum(), rel=1e-5
    )

    _, grad, _ = selected_and_grad(config, batch, variant=self.variant)
    _, grad_no_penalty, _ = selected_and_grad(
        cfg(name="kl_cov", **{"kl_cov.ratio": 0.2, "kl_cov.coef": 0.0}), batch, variant=self.variant
    )
    np.testing.assert_allclose(grad_no_penalty, -adv * ratio * m / m.sum(), rtol=1e-5, atol=1e-8)
    penalty_grad = (grad - grad_no_penalty) * m.sum()
    up, down = selected & (log_ratio > 0), selected & (log_ratio < 0)
    assert up.any() and down.any()
    assert (penalty_grad[up] > 0).all() and (penalty_grad[down] < 0).all()  # back toward ℓ^old
    np.testing.assert_allclose(penalty_grad, coef * np.sign(log_ratio) * selected, atol=1e-5)


def test_kl_cov_is_plain_reinforce_on_policy():
  batch = make_batch(31, 50)  # old_logp == logp
  m = batch["mask"]
  selected, grad, loss = selected_and_grad(cfg(name="kl_cov", **{"kl_cov.ratio": 0.2}), batch)
  assert selected.sum() == 10
  np.testing.assert_allclose(grad, -batch["advantages"] * m / m.sum(), rtol=1e-6, atol=1e-9)
  assert loss == pytest.approx(-(batch["advantages"] * m).sum() / m.sum(), rel=1e-5)


# ------------------------------------------------------------------ masked tokens, all rules

SELECTORS = {
    "clip_cov": {"clip_cov.ratio": 0.5, **WIDE_BAND},  # ratio 1 would zero every gradient
    "kl_cov": {"kl_cov.ratio": 1.0},
    "high_entropy_tokens": {"high_entropy_tokens.ratio": 1.0},
}


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_masked_tokens_are_never_picked_and_carry_no_gradient(name):
  batch = make_batch(40, 30, spread=0.3)
  invalid = batch["mask"] == 0
  config = cfg(name=name, **SELECTORS[name])
  selected, grad, loss = selected_and_grad(config, batch)
  assert selected.any() and not selected[invalid].any()
  assert (grad[invalid] == 0.0).all() and (grad[~invalid] != 0.0).any()
  # Other padding values change nothing.
  other = dict(
      batch,
      logp=np.where(invalid, 3.0, batch["logp"]).astype(np.float32),
      advantages=np.where(invalid, -7.0, batch["advantages"]).astype(np.float32),
      entropy=np.where(invalid, -5.0, batch["entropy"]).astype(np.float32),
  )
  selected2, grad2, loss2 = selected_and_grad(config, other)
  np.testing.assert_array_equal(selected2, selected)
  np.testing.assert_array_equal(grad2, grad)
  assert loss2 == loss


# -------------------------------------------------------- selection_scope batch / microbatch


def _chunked_batch(seed):
  """8 sequences × 8 tokens; chunks of 2 sequences hold 7, 12, 3 and 16 valid tokens."""
  batch = make_batch(seed, 64, rows=8, time=8, spread=0.0)
  lengths = [4, 3, 6, 6, 2, 1, 8, 8]
  mask = (np.arange(8)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)
  valid = mask > 0
  return dict(
      batch,
      mask=mask,
      logp=np.where(valid, batch["logp"], -50.0).astype(np.float32),
      old_logp=np.where(valid, batch["old_logp"], -50.0).astype(np.float32),
      advantages=np.where(valid, batch["advantages"], 30.0).astype(np.float32),
      entropy=np.where(valid, batch["entropy"], 100.0).astype(np.float32),
  )


def _chunks(rows, size):
  return [slice(start, start + size) for start in range(0, rows, size)]


class SelectionScopeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_microbatch_scope_counts_and_sets_kl_cov(self):
    batch = _chunked_batch(50)
    m = batch["mask"]
    ratio = 0.1
    per_chunk = [int(m[c].sum()) for c in _chunks(8, 2)]
    assert per_chunk == [7, 12, 3, 16]

    expected = np.zeros(m.shape, bool)
    for c in _chunks(8, 2):  # means, k and top-k all within the chunk
      cov = np_token_cov(batch["logp"][c], batch["advantages"][c], m[c])
      expected[c] = np_top_k(cov, m[c] > 0, max(1, np_floor(ratio, int(m[c].sum()))))
    micro = cfg(
        name="kl_cov", selection_scope="microbatch", microbatch_size=2, **{"kl_cov.ratio": ratio}
    )
    _, aux = loss_and_aux(micro, batch, variant=self.variant)
    np.testing.assert_array_equal(aux["selected"], expected)
    assert expected.sum() == 1 + 1 + 1 + 1

    cov = np_token_cov(batch["logp"], batch["advantages"], m)
    whole = cfg(name="kl_cov", **{"kl_cov.ratio": ratio})
    _, aux = loss_and_aux(whole, batch, variant=self.variant)
    np.testing.assert_array_equal(aux["selected"], np_top_k(cov, m > 0, np_floor(ratio, 38)))
    assert aux["selected"].sum() == 3


def test_microbatch_scope_counts_clip_cov_and_high_entropy():
  batch = _chunked_batch(51)
  m = batch["mask"]
  micro = dict(selection_scope="microbatch", microbatch_size=2)
  _, aux = loss_and_aux(
      cfg(name="clip_cov", **micro, **{"clip_cov.ratio": 0.2, **WIDE_BAND}), batch
  )
  counts = [int(np.asarray(aux["selected"])[c].sum()) for c in _chunks(8, 2)]
  assert counts == [max(1, np_floor(0.2, n)) for n in (7, 12, 3, 16)] == [1, 2, 1, 3]
  _, aux = loss_and_aux(cfg(name="clip_cov", **{"clip_cov.ratio": 0.2, **WIDE_BAND}), batch)
  assert np.asarray(aux["selected"]).sum() == np_floor(0.2, 38) == 7

  _, aux = loss_and_aux(
      cfg(name="high_entropy_tokens", **micro, **{"high_entropy_tokens.ratio": 0.2}), batch
  )
  expected = np.zeros(m.shape, bool)
  for c in _chunks(8, 2):
    expected[c] = np_top_k(batch["entropy"][c], m[c] > 0, np_ceil(0.2, int(m[c].sum())))
  np.testing.assert_array_equal(aux["selected"], expected)
  assert expected.sum() == 2 + 3 + 1 + 4


def test_microbatch_as_large_as_the_batch_is_the_batch_scope():
  batch = _chunked_batch(52)
  base = {"clip_cov.ratio": 0.3, **WIDE_BAND}
  _, whole = loss_and_aux(cfg(name="clip_cov", **base), batch, key=5)
  _, micro = loss_and_aux(
      cfg(name="clip_cov", selection_scope="microbatch", microbatch_size=8, **base), batch, key=5
  )
  np.testing.assert_array_equal(micro["selected"], whole["selected"])
  with pytest.raises(ValueError, match="must divide"):
    loss_and_aux(
        cfg(name="clip_cov", selection_scope="microbatch", microbatch_size=3, **base), batch
    )


# -------------------------------------------------------------------- high-entropy 80/20 -----


class HighEntropyTokensTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((f"n{n}", n) for n in (3, 5, 7, 50))
  def test_high_entropy_tokens_top_ratio_gets_the_gradient(self, n_valid):
    batch = make_batch(60 + n_valid, n_valid, spread=0.3)
    m, h = batch["mask"], batch["entropy"]
    config = cfg(name="high_entropy_tokens", **{"high_entropy_tokens.ratio": 0.2})
    selected, grad, loss = selected_and_grad(config, batch, variant=self.variant)
    k = np_ceil(0.2, n_valid)  # ceil(ρ·N): 1, 1, 2, 10
    np.testing.assert_array_equal(selected, np_top_k(h, m > 0, k))
    ref_loss, clipped, ref_grad = np_ppo(
        batch["logp"], batch["old_logp"], batch["advantages"], 0.2, 0.2
    )
    # token-mean over the selected tokens only: denominator k, the rest carry no gradient.
    np.testing.assert_allclose(grad, ref_grad * selected / k, rtol=1e-5, atol=1e-8)
    assert (grad[~selected] == 0.0).all()
    live = selected & ~clipped
    assert (grad[live] != 0.0).all()
    assert loss == pytest.approx((ref_loss * selected).sum() / k, rel=1e-5)
