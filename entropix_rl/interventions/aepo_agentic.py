"""AEPO-agentic: agentic entropy-balanced policy optimisation (Dong et al. 2025, arXiv
2510.14545; RUC-NLPIR/ARPO @ 30efc15, `AEPO/verl_aepo_entropy`: `core_algos.py::
compute_policy_loss_entropy_balanced_clipping`, `vllm_rollout_with_tools.py::
generate_sequences`). Not the arbitrary-entropy AEPO of Wang et al. 2025 (`aepo.py`).

Loss side (`loss.name = 'aepo_agentic'`), per token, with H the current policy's entropy:

    Ĥ_t = (H_t − μ) / σ              μ, σ over the valid tokens of the selection scope
                                     (unbiased std; σ := 1 if it is 0 or undefined)
    Ã_t = A_t · (1 + c · sg(Ĥ_t))    entropy-aware advantage (`entropy_advantage`, c = 0.2)
    r_t = exp(clip(ℓ_t − ℓᵒˡᵈ_t, −20, 20)),  g_t = exp(ℓ_t − sg(ℓ_t))
    Ã > 0 and r > 1 + ε_h:   L = −(1 + ε_h) · g · Ã      (gradient −Ã(1 + ε_h)∇ℓ, not 0)
    otherwise:               L = max(−Ã r, −Ã clip(r, 1 − ε_l, 1 + ε_h))   (PPO)
    dual-clip (`loss.dual_clip_c`), Ã < 0:   L = min(L, −Ã c)

The forward value is PPO's everywhere; only the upper clipped side keeps its gradient (GPPO
with β2 = 1 on that side, `gppo.preserving_factor`), the lower side keeps PPO's zero gradient.

Rollout side (`branching`, a single-turn reduction: the step delimiter `rl.step_delimiter`
stands in for a tool call). Per prompt q, `initial_rollouts` samples first; then round by
round, each trajectory's next segment (the tokens through its next delimiter) counts as
generated in that round. After round r, with Ĥ_seg the mean full-vocabulary entropy of a
segment's first ≤ 20 tokens, Ĥ_now a trajectory's round-r segment, Ĥ_init its first segment:

    for each trajectory j of q that goes on past a delimiter, while q has free slots
    (≤ beam_size − 1 attempts per trajectory):
      p = clip((U(0,1) + w · (Ĥ_now(j) − Ĥ_init(j))) · max(0, 1 − 0.05 · c_q), 0, 1)
      branch iff p ≥ P_b: a new trajectory continues from j's prefix through the delimiter
    a prompt with no trajectory going on and fewer than k rows gets one fresh sample
    c_q ← c_q + 1 if q got a new row this round, else 0   (left alone in a round in which
                                                          no prompt got one, as the reference)

until every prompt has k = `rl.group_size` rows (once it has, nothing more can happen to it).
Ĥ_init is reset on every call (the reference keeps it across steps). A branch carries its
prefix in the prompt: the update trains on its continuation, the verifier scores the whole
response.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.gppo import preserving_factor
from entropix_rl.interventions.ppo import ppo_terms
from entropix_rl.interventions.registry import Intervention, SurrogateOutput
from entropix_rl.interventions.rollout_ops import branch_prompts, sample_in_buckets


@dataclasses.dataclass(frozen=True)
class AEPOAgenticConfig:
  """AEPO-agentic constants (the authors' 7B script: k 16, 8 initial rollouts, beam 2, P_b 0.5,
  w 0.2; c = 0.2 and the 0.05 branch penalty are hard-coded there).

  Attributes:
    entropy_advantage: Ã = A(1 + c·sg(Ĥ)) with `loss.name = 'aepo_agentic'` (the released
      scripts leave it off by accident: `entropy_coeff: 0` skips the entropy computation).
    advantage_coef: c.
    branching: the entropy-guided branching rollout (needs `rl.step_delimiter`).
    initial_rollouts: samples per prompt before branching (≤ `rl.group_size`).
    beam_size: a trajectory branches at most `beam_size − 1` times per round.
    branch_probability: P_b, the threshold on p.
    entropy_weight: w, the weight of Ĥ_now − Ĥ_init in p.
    branch_penalty: the per-consecutive-branch reduction of p (0.05).
    segment_tokens: the first tokens of a segment whose entropies Ĥ_seg averages (20).
  """

  entropy_advantage: bool = True
  advantage_coef: float = 0.2
  branching: bool = False
  initial_rollouts: int = 4
  beam_size: int = 2
  branch_probability: float = 0.5
  entropy_weight: float = 0.2
  branch_penalty: float = 0.05
  segment_tokens: int = 20

  def validate(self, path: str) -> None:
    check_bool(f"{path}.entropy_advantage", self.entropy_advantage)
    check_number(f"{path}.advantage_coef", self.advantage_coef)
    check_bool(f"{path}.branching", self.branching)
    for name in ("initial_rollouts", "beam_size", "segment_tokens"):
      check_number(f"{path}.{name}", getattr(self, name), low=1)
    check_number(f"{path}.branch_probability", self.branch_probability, low=0.0, high=1.0)
    check_number(f"{path}.entropy_weight", self.entropy_weight)
    check_number(f"{path}.branch_penalty", self.branch_penalty, low=0.0)


# ------------------------------------------------------------------------------- loss side


def entropy_statistics(entropy: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """μ and the unbiased σ of `entropy` over the valid tokens (σ := 1 if it is 0, or with
  fewer than two valid tokens), each broadcast to `[rows]` (a scope statistic).

  Args:
    entropy: `[rows, T]` per-token entropy H.
    mask: `[rows, T]` response mask.

  Returns:
    `{"mean": [rows], "std": [rows]}`.
  """
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask])
  valid = mask > 0
  n = valid.sum()
  entropy = jax.lax.stop_gradient(entropy)
  pivot = entropy.ravel()[jnp.argmax(valid.ravel())]  # shifted sums: equal values give σ = 0
  shifted = jnp.where(valid, entropy - pivot, 0.0)
  mean = pivot + shifted.sum() / jnp.maximum(n, 1)
  var = jnp.where(valid, jnp.square(entropy - mean), 0.0).sum() / jnp.maximum(n - 1, 1)
  std = jnp.where((n > 1) & (var > 0), jnp.sqrt(var), 1.0)
  rows = entropy.shape[0]
  return {"mean": jnp.full((rows,), mean), "std": jnp.full((rows,), std)}


def entropy_aware_advantages(
    advantages: jax.Array, entropy: jax.Array, mean: jax.Array, std: jax.Array, coef: float
) -> jax.Array:
  """`Ã = A · (1 + c · sg((H − μ) / σ))`.

  Args:
    advantages, entropy: `[B, T]`; mean, std: `[B]` the scope's μ and σ per row.
    coef: c.

  Returns:
    `[B, T]` (no sign clamp: Ĥ < −1/c flips the advantage, as in the reference).
  """
  chex.assert_rank([advantages, entropy, mean, std], [2, 2, 1, 1])
  chex.assert_equal_shape([advantages, entropy])
  chex.assert_equal_shape([mean, std])
  chex.assert_equal_shape_prefix([advantages, mean], 1)
  score = (jax.lax.stop_gradient(entropy) - mean[:, None]) / std[:, None]
  return advantages * (1.0 + coef * score)


def _advantage_stats(
    cfg: LossConfig, batch: TokenBatch, state: None, key: jax.Array | None
) -> dict[str, jax.Array]:
  del cfg, state, key
  entropy = batch.require("entropy", "aepo_agentic_advantage")
  chex.assert_rank(batch.mask, 2)
  chex.assert_equal_shape([entropy, batch.mask])
  return entropy_statistics(entropy, batch.mask)


def _shape_advantages(
    cfg: LossConfig, batch: TokenBatch, stats: dict[str, jax.Array], state: None
) -> jax.Array:
  del state
  chex.assert_rank([batch.advantages, stats["mean"]], [2, 1])
  chex.assert_equal_shape([batch.advantages, batch.entropy, batch.mask])
  chex.assert_equal_shape([stats["mean"], stats["std"]])
  chex.assert_equal_shape_prefix([batch.advantages, stats["mean"]], 1)
  shaped = entropy_aware_advantages(
      batch.advantages, batch.entropy, stats["mean"], stats["std"], cfg.aepo_agentic.advantage_coef
  )
  return jnp.where(batch.mask > 0, shaped, 0.0)


def entropy_balanced_clip_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip_c: float | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The entropy-balanced clipped token loss (module docstring).

  Args:
    logp: `[B, T]` current log-probs ℓ (differentiable).
    old_logp: `[B, T]` behaviour log-probs ℓᵒˡᵈ.
    advantages: `[B, T]` advantages Ã (constants).
    clip_eps_low, clip_eps_high: ε_l, ε_h.
    dual_clip_c: c > 1 or None.

  Returns:
    `(loss [B, T], clipped [B, T] bool)`: `clipped` marks PPO's active clip bounds, the
    gradient-preserving upper side included.
  """
  chex.assert_rank(logp, 2)
  chex.assert_equal_shape([logp, old_logp, advantages])
  terms = ppo_terms(
      logp,
      old_logp,
      advantages,
      clip_eps_low=clip_eps_low,
      clip_eps_high=clip_eps_high,
      dual_clip_c=dual_clip_c,
  )
  advantages = jax.lax.stop_gradient(advantages)
  upper = (advantages > 0) & (terms.ratio > 1.0 + clip_eps_high)
  loss = jnp.where(upper, -(1.0 + clip_eps_high) * preserving_factor(logp) * advantages, terms.loss)
  return loss, terms.clipped | upper


def aepo_agentic(cfg: LossConfig, batch: TokenBatch, stats: None, state: None) -> SurrogateOutput:
  """The entropy-balanced clipping surrogate over all valid tokens (`[B, T]` batch fields);
  picks nothing."""
  del stats, state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  valid = batch.mask > 0
  loss, clipped = entropy_balanced_clip_loss(
      jnp.where(valid, batch.logp, 0.0),
      jnp.where(valid, batch.old_logp, 0.0),
      jnp.where(valid, batch.advantages, 0.0),
      clip_eps_low=cfg.clip_eps_low,
      clip_eps_high=cfg.clip_eps_high,
      dual_clip_c=cfg.dual_clip_c,
  )
  return SurrogateOutput.unpicked(loss, batch.mask, clipped & valid)


# ---------------------------------------------------------------------------- rollout side


def segment_entropy(entropy: np.ndarray, start: int, end: int, tokens: int) -> float:
  """Ĥ_seg: the mean of one row's `entropy [T]` over `[start, end)`, its first ≤ `tokens`
  entries (0 if empty)."""
  chex.assert_rank(entropy, 1)
  values = entropy[start : min(end, start + tokens)]
  return float(values.mean()) if values.size else 0.0


def branch_probability(
    uniform: float,
    entropy_now: float,
    entropy_init: float,
    consecutive: int,
    *,
    weight: float,
    penalty: float,
) -> float:
  """`clip((u + w · (Ĥ_now − Ĥ_init)) · max(0, 1 − penalty · c_q), 0, 1)`."""
  p = (uniform + weight * (entropy_now - entropy_init)) * max(0.0, 1.0 - penalty * consecutive)
  return min(1.0, max(0.0, p))


class _Trajectory:
  """A row's segments: boundaries after each delimiter, and the round it started in."""

  def __init__(self, row: int, born: int, tokens: np.ndarray, length: int, delimiter: int):
    self.row, self.born, self.length = row, born, length
    self.delimiters = np.flatnonzero(tokens[:length] == delimiter)

  def segment(self, round_: int) -> tuple[int, int] | None:
    """`(start, end)` of the segment it generates in `round_`, or None if it has ended."""
    step = round_ - self.born
    if step < 1 or (step > 1 and not self.goes_on(round_ - 1)):
      return None
    start = 0 if step == 1 else int(self.delimiters[step - 2]) + 1
    end = int(self.delimiters[step - 1]) + 1 if step <= self.delimiters.size else self.length
    return start, end

  def goes_on(self, round_: int) -> bool:
    """Whether its round-`round_` segment ends at a delimiter with more tokens after it."""
    step = round_ - self.born
    return (
        1 <= step <= self.delimiters.size
        and int(self.delimiters[step - 1]) + 1 < self.length
        and (step == 1 or self.goes_on(round_ - 1))
    )


def aepo_agentic_rollout(cfg: LossConfig, responses, ctx, state):
  """Entropy-guided branching at step delimiters until every prompt has `rl.group_size` rows
  (module docstring)."""
  del state
  c = cfg.aepo_agentic
  k = ctx.group_size
  if c.initial_rollouts > k:
    raise ValueError(
        f"loss.aepo_agentic.initial_rollouts={c.initial_rollouts} must be <= " f"rl.group_size={k}"
    )
  if jax.process_count() > 1:
    raise ValueError(
        "loss.aepo_agentic.branching=True samples a data-dependent number of rows "
        "per round; it runs on one process only"
    )
  if ctx.step_delimiter_id < 0:
    raise ValueError(
        "loss.aepo_agentic.branching=True needs a step boundary: set "
        "rl.step_delimiter to a one-token string (e.g. '+')"
    )
  rng = np.random.default_rng(np.asarray(jax.random.key_data(ctx.key)).ravel().tolist())
  pool = responses
  groups = list(dict.fromkeys(pool.group_ids.tolist()))
  lengths = pool.completion_mask.sum(axis=1)
  paths = [
      _Trajectory(i, 0, pool.completion_tokens[i], int(lengths[i]), ctx.step_delimiter_id)
      for i in range(pool.rows)
  ]
  count = {q: int((pool.group_ids == q).sum()) for q in groups}
  streak = {q: 0 for q in groups}
  initial: dict[int, float] = {}
  round_ = 0
  while any(n < k for n in count.values()):
    round_ += 1
    now: dict[int, float] = {}
    for path in paths:
      span = path.segment(round_)
      if span is not None:
        now[path.row] = segment_entropy(pool.entropy[path.row], *span, c.segment_tokens)
        initial.setdefault(path.row, now[path.row])
    going_on = [p for p in paths if p.goes_on(round_)]
    sources, cuts = [], []
    for q in groups:
      mine = [p for p in going_on if pool.group_ids[p.row] == q]
      if not mine:
        if count[q] < k:
          sources.append(next(p.row for p in paths if pool.group_ids[p.row] == q))
          cuts.append(0)
        continue
      free = k - count[q]
      created = 0
      for path in mine:
        for _ in range(min(c.beam_size - 1, free - created)):
          p = branch_probability(
              rng.random(),
              now[path.row],
              initial[path.row],
              streak[q],
              weight=c.entropy_weight,
              penalty=c.branch_penalty,
          )
          if p >= c.branch_probability:
            sources.append(path.row)
            cuts.append(int(path.delimiters[round_ - path.born - 1]) + 1)
            created += 1
        if created >= free:
          break
    if not sources:
      continue
    origins = {int(pool.group_ids[r]) for r in sources}
    for q in groups:
      streak[q] = streak[q] + 1 if q in origins else 0
      count[q] += sum(int(pool.group_ids[r]) == q for r in sources)
    rows, cuts = np.asarray(sources, np.int64), np.asarray(cuts, np.int64)
    prompts, prompt_lengths = branch_prompts(
        pool, rows, cuts, min_bucket=ctx.min_prompt_bucket, pad_id=ctx.pad_id
    )
    new = sample_in_buckets(
        ctx.sample,
        prompts,
        prompt_lengths,
        [pool.examples[i] for i in rows],
        pool.group_ids[rows],
        1,
        jax.random.fold_in(ctx.key, 1000 + round_),
        prefix_lengths=pool.prefix_lengths[rows] + cuts,
    )
    start = pool.rows
    pool = type(pool).concat([pool, new], ctx.pad_id)
    new_lengths = new.completion_mask.sum(axis=1)
    paths += [
        _Trajectory(
            start + i, round_, new.completion_tokens[i], int(new_lengths[i]), ctx.step_delimiter_id
        )
        for i in range(new.rows)
    ]
  return pool.grouped()


_loss_active = lambda cfg: cfg.name == "aepo_agentic"

SURROGATE = Intervention(
    name="aepo_agentic", kind="surrogate", apply=aepo_agentic, config=AEPOAgenticConfig
)
ADVANTAGE = Intervention(
    name="aepo_agentic_advantage",
    kind="advantage_shaper",
    apply=_shape_advantages,
    active=lambda cfg: _loss_active(cfg) and cfg.aepo_agentic.entropy_advantage,
    needs=lambda cfg: frozenset({"entropy"}),
    scope_stats=_advantage_stats,
)
ROLLOUT = Intervention(
    name="aepo_agentic_rollout",
    kind="rollout",
    apply=None,
    active=lambda cfg: cfg.aepo_agentic.branching,
    samples_per_prompt=lambda cfg, group_size, state: cfg.aepo_agentic.initial_rollouts,
    rollout=aepo_agentic_rollout,
)
