"""ARES, text-only parts: difficulty-aware high-window-entropy reward shaping and a dynamic KL
per difficulty bucket (arXiv 2510.08457, ICLR 2026; shawn0728/ARES @ 146620e:
`vllm_rollout_spmd.py`, `ray_trainer.py::update_difficulty_and_skip_gid_set` and `fit`,
`examples/reward_function/aepo.py::compute_score`, `dp_actor.py::_update_beta_per_bucket`).

Rollout (`ares`, on the host, no gradient), per response i with H_t the sampler's entropy:

    W_t   = (1/w) Σ_{τ=t+1}^{t+w} H_τ                    window mean after t (complete windows)
    n_i   = #{t : token t is a trigger, W_t ≥ τ_H}        the high-window-entropy (HWE) count
    p95_i = 95th percentile of W over the response (incomplete windows count as the mean of
            the complete ones, as the reference)
    d(q)  = easy if acc(q) ≥ 2/3, medium if ≥ 1/3, else hard   (acc: the group's mean reward)
    T_d   = ⌊min_i n_i + s_d (max_i n_i − min_i n_i)⌋, s = (.35, .5, .65)   (spread: as intended)
          | round(mean_{q ∈ d} mean_{i ∈ q} n_i)                   (bucket_mean: as released)
    α_d   ← clip(α_d + 0.05 δ_d, 0, 2),   δ_d = mean_d n − T_d (easy, medium), T_d − mean_d n (hard)
    R_i   = acc_i + s(acc_i, d, n_i, T_d, α_d)          the hierarchical entropy reward (below)

and, for the next step, τ_H ← 0.99 τ_H + 0.01 median_i(p95_i), seeded by the first batch
(1.5 before any batch). A trigger is a position whose token, stripped of "▁"/"Ġ" and spaces
and lower-cased, is in `triggers`; `triggers = ()` makes every position one.

Hierarchical entropy reward, with Δ = n − T, m = max(1, f_d · max(T, 1)),
hub(x) = x²/(2κ_d) if x ≤ κ_d else x − κ_d/2 (x ≥ 0), sig(x) = 1/(1 + e^{−x/τ_d}),
cap = α_d · (1, 1, 1.2)_d, f = (.15, .25, .35), κ = (2, 3, 4), τ = (2, 2.5, 3):

    easy, correct:     −min(cap, hub(max(Δ − m, 0)) / (m + κ) · cap)
    medium, correct:   −min(cap, hub(max(|Δ| − m, 0)) / (m + κ) · cap)
    easy, wrong:       sig(max(Δ − m, 0)) · cap · 0.6        medium, wrong: the same · 0.8
    hard, correct:     sig(Δ + m) · cap  if Δ ≥ −m,
                       else −min(cap, 0.5 · hub(−Δ − m) / (m + κ) · cap)
    hard, wrong:       sig(max(Δ − m, 0)) · cap

Dynamic KL (`ares_kl`, a regulariser): `L += κ_KL · Agg(β_{d(i)} · k3(ℓ, ℓʳᵉᶠ))`, with β_d per
bucket, updated once per RL step before the optimizer updates from the behaviour policy's
per-sequence mean KL: an EMA (0.97) of the bucket mean, e = KL / target − 1, no update when
|e| < 0.02, otherwise every `kl_update_every`-th call ē ← EMA(e) and
log β ← clip(log β + 0.05 · clip(ē, ±0.2), log 1e-4, log 100).
"""

from __future__ import annotations

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np

from entropix_rl.checks import check_bool, check_choice, check_number
from entropix_rl.interventions.aggregation import Aggregator
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.kl_ref import kl_estimate
from entropix_rl.interventions.registry import Intervention, RegulariserOutput
from entropix_rl.interventions.rollout_ops import window_mean

DIFFICULTIES = ("easy", "medium", "hard")
EASY, MEDIUM, HARD = range(3)
MARGIN_FRACTION = (0.15, 0.25, 0.35)
KAPPA = (2.0, 3.0, 4.0)
SIGMOID_TEMPERATURE = (2.0, 2.5, 3.0)
CAP_SCALE = (1.0, 1.0, 1.2)
WRONG_SCALE = (0.6, 0.8, 1.0)
TARGET_SPREAD = (0.35, 0.5, 0.65)
TARGET_RULES = ("spread", "bucket_mean")
DIFFICULTY = "ares_difficulty"
HWE_COUNT = "ares_hwe_count"
WINDOW_PERCENTILE = "ares_window_p95"


@dataclasses.dataclass(frozen=True)
class ARESConfig:
  """ARES constants (`experiments/AEPO/config.yaml` and the hard-coded values of the code).

  Attributes:
    enabled: use ARES's reward shaping (and, with `kl_coef > 0`, its dynamic KL).
    triggers: token strings that open an HWE window (the reference: a 174-word lexicon such
      as "wait", "but", "however"); () = every position.
    window: w ≥ 1, tokens in a window (4).
    percentile: the per-response percentile of window means that feeds τ_H (95).
    threshold_init: τ_H before any batch (1.5).
    threshold_ema: the EMA decay of τ_H (0.99).
    alpha_init: α_d at the start, every bucket (0.5).
    alpha_lr: the α controller's step (0.05); alpha_min, alpha_max: its clip (0, 2).
    target_rule: `spread` (as intended: the reference's validation formula, computed on each
      batch) or `bucket_mean` (as released: makes δ ≈ 0, so α barely moves).
    score_as_released: score every response as easy with T = 0 and α = `alpha_init`, as the
      released config does (online filtering scores before the difficulty exists).
    kl_coef: κ_KL ≥ 0 of the dynamic KL (0.01; 0 = off). Needs `rl.use_reference`.
    kl_target: the KL target of the β controller (0.01).
    kl_beta_init: β_d at the start (1).
    kl_ema: the EMA decay of the bucket KL and of the error (0.97).
    kl_lr: the log-β step (0.05); kl_clip: the error clip (0.2); kl_deadzone: (0.02).
    kl_beta_min, kl_beta_max: β's range (1e-4, 100).
    kl_update_every: β changes on every n-th RL step (the reference: every 100th
      micro-batch call, about once per step at its batch size).
  """

  enabled: bool = False
  triggers: tuple[str, ...] = ()
  window: int = 4
  percentile: float = 95.0
  threshold_init: float = 1.5
  threshold_ema: float = 0.99
  alpha_init: float = 0.5
  alpha_lr: float = 0.05
  alpha_min: float = 0.0
  alpha_max: float = 2.0
  target_rule: str = "spread"
  score_as_released: bool = False
  kl_coef: float = 0.01
  kl_target: float = 0.01
  kl_beta_init: float = 1.0
  kl_ema: float = 0.97
  kl_lr: float = 0.05
  kl_clip: float = 0.2
  kl_deadzone: float = 0.02
  kl_beta_min: float = 1e-4
  kl_beta_max: float = 100.0
  kl_update_every: int = 1

  def __post_init__(self):
    if isinstance(self.triggers, list):
      object.__setattr__(self, "triggers", tuple(self.triggers))

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    if not isinstance(self.triggers, tuple) or not all(isinstance(t, str) for t in self.triggers):
      raise ValueError(
          f"{path}.triggers={self.triggers!r}; allowed: a tuple of token strings, "
          "or () for every position"
      )
    check_number(f"{path}.window", self.window, low=1)
    check_number(f"{path}.percentile", self.percentile, low=0.0, high=100.0)
    check_number(f"{path}.threshold_init", self.threshold_init)
    for name in ("threshold_ema", "kl_ema"):
      check_number(f"{path}.{name}", getattr(self, name), low=0.0, high=1.0)
    check_number(f"{path}.alpha_min", self.alpha_min)
    check_number(
        f"{path}.alpha_max",
        self.alpha_max,
        low=self.alpha_min,
        allowed=f"a number >= {path}.alpha_min ({self.alpha_min})",
    )
    check_number(f"{path}.alpha_init", self.alpha_init, low=self.alpha_min, high=self.alpha_max)
    check_number(f"{path}.alpha_lr", self.alpha_lr, low=0.0)
    check_choice(f"{path}.target_rule", self.target_rule, TARGET_RULES)
    check_bool(f"{path}.score_as_released", self.score_as_released)
    check_number(f"{path}.kl_coef", self.kl_coef, low=0.0)
    for name in ("kl_target", "kl_beta_min"):
      check_number(f"{path}.{name}", getattr(self, name), low=0.0, low_open=True)
    check_number(
        f"{path}.kl_beta_max",
        self.kl_beta_max,
        low=self.kl_beta_min,
        allowed=f"a number >= {path}.kl_beta_min ({self.kl_beta_min})",
    )
    check_number(
        f"{path}.kl_beta_init", self.kl_beta_init, low=self.kl_beta_min, high=self.kl_beta_max
    )
    for name in ("kl_lr", "kl_clip", "kl_deadzone"):
      check_number(f"{path}.{name}", getattr(self, name), low=0.0)
    check_number(f"{path}.kl_update_every", self.kl_update_every, low=1)


# ------------------------------------------------------------------------- reward shaping


def _huber(x: np.ndarray, kappa: np.ndarray) -> np.ndarray:
  x = np.maximum(x, 0.0)
  return np.where(x <= kappa, 0.5 * x * x / kappa, x - 0.5 * kappa)


def _saturate(x: np.ndarray, temperature: np.ndarray) -> np.ndarray:
  with np.errstate(over="ignore"):
    return 1.0 / (1.0 + np.exp(-x / temperature))


def entropy_reward(
    accuracy: np.ndarray,
    difficulty: np.ndarray,
    count: np.ndarray,
    target: np.ndarray,
    alpha: np.ndarray,
) -> np.ndarray:
  """The hierarchical entropy reward s (module docstring), elementwise.

  Args:
    accuracy: `[N]` the verifier's score (correct iff exactly 1).
    difficulty: `[N]` int bucket (0 easy, 1 medium, 2 hard).
    count: `[N]` HWE counts n; target: `[N]` T of the response's bucket.
    alpha: `[N]` α of the response's bucket.

  Returns:
    `[N]` float64 shaping term (the reward is `accuracy + s`).
  """
  chex.assert_rank(accuracy, 1)
  chex.assert_equal_shape([accuracy, difficulty, count, target, alpha])
  d = np.asarray(difficulty, np.int64)
  delta = np.asarray(count, np.float64) - np.asarray(target, np.float64)
  margin = np.maximum(1.0, np.take(MARGIN_FRACTION, d) * np.maximum(target, 1.0))
  kappa, temperature = np.take(KAPPA, d), np.take(SIGMOID_TEMPERATURE, d)
  cap = np.asarray(alpha, np.float64) * np.take(CAP_SCALE, d)
  correct = np.asarray(accuracy) == 1.0
  over = np.maximum(delta - margin, 0.0)
  deviation = np.where(d == MEDIUM, np.maximum(np.abs(delta) - margin, 0.0), over)
  penalty = -np.minimum(cap, _huber(deviation, kappa) / (margin + kappa) * cap)
  gain = _saturate(over, temperature) * cap * np.take(WRONG_SCALE, d)
  hard_correct = np.where(
      delta >= -margin,
      _saturate(delta + margin, temperature) * cap,
      -np.minimum(cap, 0.5 * _huber(-delta - margin, kappa) / (margin + kappa) * cap),
  )
  return np.where(correct, np.where(d == HARD, hard_correct, penalty), gain)


def difficulty_of(accuracy: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
  """`[N]` int bucket of each row's prompt from its group's mean accuracy (≥ 2/3 easy,
  ≥ 1/3 medium, else hard), from the `[N]` accuracies and group ids."""
  group_ids = np.asarray(group_ids)
  chex.assert_rank(group_ids, 1)
  chex.assert_equal_shape([accuracy, group_ids])
  out = np.zeros(len(group_ids), np.int32)
  for group in np.unique(group_ids):
    rows = group_ids == group
    rate = float(np.mean(accuracy[rows]))
    out[rows] = EASY if rate >= 2 / 3 else MEDIUM if rate >= 1 / 3 else HARD
  return out


def normalize_token(text: str) -> str:
  """A token's text as the reference compares it: leading "▁"/"Ġ" and spaces stripped,
  lower-cased."""
  return re.sub(r"^[▁Ġ]+", "", text).strip().lower()


def trigger_mask(
    tokens: np.ndarray, mask: np.ndarray, triggers: tuple[str, ...], decode
) -> np.ndarray:
  """`[N, C]` bool: valid positions of the `[N, C]` tokens and mask whose token is a trigger
  (every valid one for `()`)."""
  chex.assert_rank(tokens, 2)
  chex.assert_equal_shape([tokens, mask])
  if not triggers:
    return np.asarray(mask, bool).copy()
  if decode is None:
    raise ValueError(
        "loss.ares.triggers needs a tokenizer to read token strings; none was "
        "given to the rollout (RolloutContext.decode)"
    )
  wanted = {normalize_token(t) for t in triggers}
  hits = {int(t) for t in np.unique(tokens) if normalize_token(decode([int(t)])) in wanted}
  return np.isin(tokens, list(hits)) & np.asarray(mask, bool)


def hwe_counts(
    entropy: np.ndarray, mask: np.ndarray, triggers: np.ndarray, window: int, threshold: float
) -> np.ndarray:
  """`[N]` n_i: trigger positions whose complete window mean after them is ≥ `threshold`, from
  the `[N, C]` entropies, mask and trigger mask."""
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask, triggers])
  means = window_mean(entropy, mask, window)
  with np.errstate(invalid="ignore"):
    return (triggers & (means >= threshold)).sum(axis=1).astype(np.float32)


def window_percentiles(
    entropy: np.ndarray, mask: np.ndarray, window: int, percentile: float
) -> np.ndarray:
  """`[N]` the `percentile` of each response's window means; positions without a complete
  window count as the mean of the complete ones (as the token's own entropy when there is
  none, i.e. H_0), as the reference; 0 for an empty response. `entropy`, `mask`: `[N, C]`."""
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask])
  means = window_mean(entropy, mask, window)
  lengths = np.asarray(mask, bool).sum(axis=1)
  out = np.zeros(len(lengths), np.float32)
  for i, n in enumerate(lengths):
    if not n:
      continue
    complete = means[i, :n][~np.isnan(means[i, :n])]
    fill = complete.mean() if complete.size else entropy[i, 0]
    values = np.concatenate([complete, np.full(n - complete.size, fill)])
    out[i] = np.percentile(values, percentile)
  return out


# ------------------------------------------------------------------------- the controllers


def bucket_statistics(
    counts: jax.Array, difficulty: jax.Array, group_ids: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """`(mean, present)`, `[3]` each: per bucket, the mean over its prompts of the prompts'
  mean HWE count, and whether the bucket has a prompt.

  Args:
    counts: `[N]` n_i; difficulty: `[N]` int bucket (equal within a prompt);
    group_ids: `[N]` int prompt ids < N.
  """
  chex.assert_rank(counts, 1)
  chex.assert_equal_shape([counts, difficulty, group_ids])
  num = counts.shape[0]
  ones = jnp.ones_like(counts, jnp.float32)
  rows = jax.ops.segment_sum(ones, group_ids, num_segments=num)
  prompt_mean = jax.ops.segment_sum(
      counts.astype(jnp.float32), group_ids, num_segments=num
  ) / jnp.maximum(rows, 1.0)
  prompt_bucket = jax.ops.segment_max(difficulty.astype(jnp.int32), group_ids, num_segments=num)
  member = (rows > 0)[:, None] & (prompt_bucket[:, None] == jnp.arange(3)[None, :])
  prompts = member.sum(axis=0)
  total = jnp.where(member, prompt_mean[:, None], 0.0).sum(axis=0)
  return total / jnp.maximum(prompts, 1), prompts > 0


def hwe_targets(counts: jax.Array, bucket_mean: jax.Array, rule: str) -> jax.Array:
  """`[3]` T_d: `⌊min n + s_d (max n − min n)⌋` (spread) or `round(bucket mean)`, from the
  `[N]` counts n and the `[3]` bucket means."""
  chex.assert_rank(counts, 1)
  chex.assert_shape(bucket_mean, (len(DIFFICULTIES),))
  if rule == "spread":
    low, high = counts.min(), counts.max()
    return jnp.floor(low + jnp.asarray(TARGET_SPREAD) * (high - low))
  check_choice("loss.ares.target_rule", rule, TARGET_RULES)
  return jnp.round(bucket_mean)


def alpha_update(
    cfg, alpha: jax.Array, counts: jax.Array, difficulty: jax.Array, group_ids: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(α', T, bucket mean)`, `[3]` each: `α_d ← clip(α_d + lr·δ_d, α_min, α_max)` on the
  buckets present in the batch (module docstring; `cfg` is the `ARESConfig`), from `alpha`
  `[3]` and the `[N]` counts, buckets and prompt ids."""
  chex.assert_shape(alpha, (len(DIFFICULTIES),))
  chex.assert_rank(counts, 1)
  chex.assert_equal_shape([counts, difficulty, group_ids])
  mean, present = bucket_statistics(counts, difficulty, group_ids)
  targets = hwe_targets(counts.astype(jnp.float32), mean, cfg.target_rule)
  delta = jnp.where(jnp.arange(3) == HARD, targets - mean, mean - targets)
  new = jnp.clip(alpha + cfg.alpha_lr * delta, cfg.alpha_min, cfg.alpha_max)
  return jnp.where(present, new, alpha), targets, mean


def ares_rollout(cfg: LossConfig, responses, ctx, state: dict):
  """Counts HWE triggers, buckets prompts by accuracy, shapes the rewards (module docstring)."""
  c = cfg.ares
  mask = responses.completion_mask
  triggers = trigger_mask(responses.completion_tokens, mask, c.triggers, ctx.decode)
  counts = hwe_counts(responses.entropy, mask, triggers, c.window, float(state["threshold"]))
  accuracy = np.asarray(responses.rewards, np.float64)
  difficulty = difficulty_of(accuracy, responses.group_ids)
  if c.score_as_released:
    shaping = entropy_reward(
        accuracy,
        np.zeros_like(difficulty),
        counts,
        np.zeros_like(counts),
        np.full(counts.shape, c.alpha_init),
    )
  else:
    alpha, targets, _ = jax.device_get(
        alpha_update(
            c,
            jnp.asarray(state["alpha"]),
            jnp.asarray(counts),
            jnp.asarray(difficulty),
            jnp.asarray(responses.group_ids),
        )
    )
    shaping = entropy_reward(accuracy, difficulty, counts, targets[difficulty], alpha[difficulty])
  info = dict(
      responses.info,
      **{
          DIFFICULTY: difficulty,
          HWE_COUNT: counts,
          WINDOW_PERCENTILE: window_percentiles(responses.entropy, mask, c.window, c.percentile),
      },
  )
  return dataclasses.replace(responses, rewards=(accuracy + shaping).astype(np.float32), info=info)


def _init_state(cfg: LossConfig) -> dict:
  c = cfg.ares
  return {
      "threshold": jnp.float32(c.threshold_init),
      "seeded": jnp.bool_(False),
      "alpha": jnp.full((3,), c.alpha_init, jnp.float32),
  }


def _before_update(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  c = cfg.ares
  counts = rollout.require(HWE_COUNT, "ares")
  difficulty = rollout.require(DIFFICULTY, "ares")
  alpha, targets, mean = alpha_update(
      c, state["alpha"], counts, difficulty, rollout.require("group_ids", "ares")
  )
  median = jnp.median(rollout.require(WINDOW_PERCENTILE, "ares"))
  threshold = jnp.where(
      state["seeded"], c.threshold_ema * state["threshold"] + (1 - c.threshold_ema) * median, median
  )
  metrics = {"hwe_count": counts.mean(), "threshold": threshold}
  for d, name in enumerate(DIFFICULTIES):
    metrics.update(
        {
            f"alpha_{name}": alpha[d],
            f"target_{name}": targets[d],
            f"hwe_mean_{name}": mean[d],
            f"prompts_{name}": (difficulty == d).mean(),
        }
    )
  return {"threshold": threshold, "seeded": jnp.bool_(True), "alpha": alpha}, metrics


# ------------------------------------------------------------------------------- dynamic KL


def _kl_init_state(cfg: LossConfig) -> dict:
  c = cfg.ares
  return {
      "beta": jnp.full((3,), c.kl_beta_init, jnp.float32),
      "kl": jnp.zeros((3,)),
      "seen": jnp.zeros((3,), bool),
      "error": jnp.zeros((3,)),
      "calls": jnp.int32(0),
  }


def beta_update(cfg, state: dict, sequence_kl: jax.Array, difficulty: jax.Array) -> dict:
  """One call of the reference's `_update_beta_per_bucket` (module docstring).

  Args:
    cfg: the `ARESConfig`.
    state: `{"beta", "kl", "seen", "error"}` `[3]` each and `"calls"`.
    sequence_kl: `[N]` per-sequence mean KL; difficulty: `[N]` int bucket.

  Returns:
    The new state.
  """
  chex.assert_shape([state["beta"], state["kl"], state["seen"], state["error"]], (3,))
  chex.assert_rank([state["calls"], sequence_kl], [0, 1])
  chex.assert_equal_shape([sequence_kl, difficulty])
  calls = state["calls"] + 1
  member = difficulty[:, None] == jnp.arange(3)[None, :]
  size = member.sum(axis=0)
  present = size > 0
  current = jnp.where(member, sequence_kl[:, None], 0.0).sum(axis=0) / jnp.maximum(size, 1)
  last = jnp.where(state["seen"], state["kl"], current)
  kl = jnp.where(present, (1 - cfg.kl_ema) * current + cfg.kl_ema * last, state["kl"])
  error = kl / cfg.kl_target - 1.0
  step = present & (jnp.abs(error) >= cfg.kl_deadzone) & (calls % cfg.kl_update_every == 0)
  smoothed = jnp.where(step, (1 - cfg.kl_ema) * error + cfg.kl_ema * state["error"], state["error"])
  log_beta = jnp.log(jnp.clip(state["beta"], cfg.kl_beta_min, cfg.kl_beta_max))
  log_beta = jnp.clip(
      log_beta + cfg.kl_lr * jnp.clip(smoothed, -cfg.kl_clip, cfg.kl_clip),
      jnp.log(cfg.kl_beta_min),
      jnp.log(cfg.kl_beta_max),
  )
  return {
      "beta": jnp.where(step, jnp.exp(log_beta), state["beta"]),
      "kl": kl,
      "seen": state["seen"] | present,
      "error": smoothed,
      "calls": calls,
  }


def _reference_logp(cfg: LossConfig, batch: TokenBatch) -> jax.Array:
  if batch.ref_logp is None:
    raise ValueError(
        f"loss.ares.kl_coef={cfg.ares.kl_coef} needs reference log-probs: set "
        "rl.use_reference=True (or loss.ares.kl_coef=0)"
    )
  return batch.ref_logp


def _kl_before_update(cfg: LossConfig, state: dict, rollout: TokenBatch) -> tuple[dict, dict]:
  kl = kl_estimate(rollout.logp, _reference_logp(cfg, rollout), "k3")
  mask = rollout.mask
  sequence_kl = (kl * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
  state = beta_update(cfg.ares, state, sequence_kl, rollout.require(DIFFICULTY, "ares_kl"))
  return state, {f"beta_{name}": state["beta"][d] for d, name in enumerate(DIFFICULTIES)}


def ares_kl(
    cfg: LossConfig, batch: TokenBatch, stats: None, state: dict, agg: Aggregator
) -> RegulariserOutput:
  """`κ_KL · Agg(β_{d(i)} · k3(ℓ, ℓʳᵉᶠ))`; metric: `Agg(β_{d(i)} · k3)`. Reads `logp`,
  `ref_logp`, `mask` `[B, T]`, the buckets `[B]` and `state["beta"]` `[3]`."""
  del stats
  difficulty = batch.require(DIFFICULTY, "ares_kl")
  ref_logp = _reference_logp(cfg, batch)
  chex.assert_rank([batch.logp, difficulty], [2, 1])
  chex.assert_equal_shape([batch.logp, ref_logp, batch.mask])
  chex.assert_equal_shape_prefix([batch.logp, difficulty], 1)
  chex.assert_shape(state["beta"], (len(DIFFICULTIES),))
  beta = state["beta"][difficulty.astype(jnp.int32)]
  kl = agg(beta[:, None] * kl_estimate(batch.logp, ref_logp, "k3"), batch.mask)
  return RegulariserOutput(loss=cfg.ares.kl_coef * kl, metric=jax.lax.stop_gradient(kl))


ROLLOUT = Intervention(
    name="ares",
    kind="rollout",
    apply=None,
    config=ARESConfig,
    active=lambda cfg: cfg.ares.enabled,
    needs=lambda cfg: frozenset({"group_ids"}),
    init_state=_init_state,
    before_update=_before_update,
    rollout=ares_rollout,
)
KL = Intervention(
    name="ares_kl",
    kind="regulariser",
    apply=ares_kl,
    active=lambda cfg: cfg.ares.enabled and cfg.ares.kl_coef > 0,
    needs=lambda cfg: frozenset({"ref_logp", DIFFICULTY}),
    init_state=_kl_init_state,
    before_update=_kl_before_update,
)
