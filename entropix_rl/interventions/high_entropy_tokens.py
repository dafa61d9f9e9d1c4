"""Train on the high-entropy minority only: the "80/20" rule (Wang et al. 2025,
arXiv 2506.01939; reference `get_global_entropy_top_mask`).

    s_t = 1 for the ceil(ρ·N) valid tokens of the scope with the largest H_t (sg, ranking only)
    L   = Agg(L^ppo, m ⊙ s)

The surrogate is the configured PPO loss (the reference runs ε_l 0.2, ε_h 0.28, dual-clip
c = 10: set `clip_eps_high` and `dual_clip_c` for that). The aggregation mask is `m ⊙ s`, so
with `token-mean` the denominator is the selected count (each kept token weighs ~1/ρ times
more than under plain PPO) and the other tokens carry no gradient.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from entropix_rl.checks import check_ratio
from entropix_rl.interventions import selection
from entropix_rl.interventions.batch import TokenBatch
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.ppo import ppo_terms_from_config
from entropix_rl.interventions.registry import Intervention, SurrogateOutput


@dataclasses.dataclass(frozen=True)
class HighEntropyTokensConfig:
  """Constants of the 80/20 selector.

  Attributes:
    ratio: ρ, fraction of the scope's valid tokens kept, by entropy (`entropy_top_ratio` 0.2).
  """

  ratio: float = 0.2

  def validate(self, path: str) -> None:
    check_ratio(f"{path}.ratio", self.ratio)


def high_entropy_pick(entropy: jax.Array, mask: jax.Array, *, ratio: float) -> jax.Array:
  """Top `ceil(ρ·N)` valid tokens by entropy within one scope chunk (`[rows, T]` in, bool
  `[rows, T]` out)."""
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask])
  valid = mask > 0
  k = selection.count_ceil(ratio, valid.sum())
  k_max = selection.count_ceil(ratio, mask.size)
  score = jax.lax.stop_gradient(entropy)
  return selection.top_k_mask(score.ravel(), valid.ravel(), k, k_max).reshape(mask.shape)


def high_entropy_stats(
    cfg: LossConfig, batch: TokenBatch, state: None, key: jax.Array | None
) -> jax.Array:
  """The scope's kept set s (`[rows, T]` bool), by the current entropy (`[rows, T]`)."""
  del state, key
  entropy = batch.require("entropy", "high_entropy_tokens")
  chex.assert_rank(batch.mask, 2)
  chex.assert_equal_shape([entropy, batch.mask])
  return high_entropy_pick(entropy, batch.mask, ratio=cfg.high_entropy_tokens.ratio)


def high_entropy_tokens(
    cfg: LossConfig, batch: TokenBatch, selected: jax.Array, state: None
) -> SurrogateOutput:
  """80/20 surrogate (module docstring); `selected` is the kept set s, `[B, T]` bool as the
  batch fields."""
  del state
  chex.assert_rank(batch.logp, 2)
  chex.assert_equal_shape([batch.logp, batch.old_logp, batch.advantages, batch.mask])
  chex.assert_equal_shape([batch.logp, selected])
  chex.assert_type(selected, bool)
  terms = ppo_terms_from_config(cfg, batch)
  return SurrogateOutput(
      per_token_loss=terms.loss,
      loss_mask=batch.mask * selected.astype(jnp.float32),
      selected=selected,
      clipped=terms.clipped,
  )


INTERVENTION = Intervention(
    name="high_entropy_tokens",
    kind="surrogate",
    apply=high_entropy_tokens,
    config=HighEntropyTokensConfig,
    needs=lambda cfg: frozenset({"entropy"}),
    scope_stats=high_entropy_stats,
)
