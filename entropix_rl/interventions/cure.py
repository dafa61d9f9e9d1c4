"""CURE: critical-token-guided re-concatenation (Li et al. 2025, arXiv 2508.11016;
bytedance/CURE @ c904b38, `recipe/CURE_First_Stage/dapo_ray_trainer.py`).

A rollout intervention, no loss part. Stage 1, for each prompt:

1. sample `n1` responses y¹ .. y^n1;
2. for each, take the `top_k` positions with the highest entropy H_t (the sampler's, i.e. the
   behaviour policy's full-vocabulary entropy), excluding position 0 and stop tokens, and draw
   a critical position c_j uniformly among them (c_j = 0 when there is none);
3. regenerate from the prefix, q'_j = q ⊕ y^j_{<c_j} (the critical token is resampled), `n2`
   continuations each;
4. train on one group of n1 + n1·n2 responses per prompt (`rl.group_size` must equal it);
   a branched response carries its prefix in the prompt, so only the continuation is
   trained on; the verifier scores the whole response, prefix and continuation.

Stage 2 (from `stage1_steps` on) is plain GRPO/DAPO on `rl.group_size` fresh samples per
prompt, as the reference's second recipe, which starts from the stage-1 checkpoint.

Differences from the reference, on purpose: the candidate filter "stripped token text longer
than one character" is dropped (every token of the embedded task is one character, so it would
leave no candidate); a prefix that makes the prompt longer than its bucket widens the bucket
instead of moving the branch point.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from entropix_rl.checks import check_bool, check_number
from entropix_rl.interventions.config import LossConfig
from entropix_rl.interventions.registry import Intervention
from entropix_rl.interventions.rollout_ops import branch_prompts


@dataclasses.dataclass(frozen=True)
class CUREConfig:
  """CURE constants (reference stage-1 script: n1 4, n2 3, top-k 20).

  Attributes:
    enabled: use CURE.
    n1: responses sampled first per prompt.
    n2: continuations per critical token.
    top_k: highest-entropy positions a critical token is drawn from.
    stage1_steps: RL steps of stage 1 (afterwards plain sampling); 0 = stage 1 throughout.
  """

  enabled: bool = False
  n1: int = 2
  n2: int = 3
  top_k: int = 20
  stage1_steps: int = 0

  def validate(self, path: str) -> None:
    check_bool(f"{path}.enabled", self.enabled)
    for name in ("n1", "n2", "top_k"):
      check_number(f"{path}.{name}", getattr(self, name), low=1)
    check_number(f"{path}.stage1_steps", self.stage1_steps, low=0)


def critical_positions(
    entropy: np.ndarray,
    mask: np.ndarray,
    tokens: np.ndarray,
    stop_ids: tuple[int, ...],
    top_k: int,
    rng: np.random.Generator,
) -> np.ndarray:
  """`[N]` critical positions: uniform among each row's `top_k` highest-entropy candidates
  (valid, not position 0, not a stop token); 0 for a row without candidates.

  Args:
    entropy: `[N, C]` per-token entropies H.
    mask: `[N, C]` bool valid tokens.
    tokens: `[N, C]` int completion tokens.
    stop_ids: stop token ids.
    top_k: candidates a position is drawn from.
    rng: NumPy generator for the draw.

  Returns:
    `[N]` int64 positions.
  """
  chex.assert_rank(entropy, 2)
  chex.assert_equal_shape([entropy, mask, tokens])
  cuts = np.zeros(len(entropy), np.int64)
  for i in range(len(entropy)):
    eligible = mask[i] & ~np.isin(tokens[i], stop_ids)
    eligible[0] = False
    candidates = np.flatnonzero(eligible)
    if candidates.size:
      best = candidates[np.argsort(-entropy[i, candidates], kind="stable")[:top_k]]
      cuts[i] = rng.choice(best)
  return cuts


def _in_stage1(cfg: LossConfig, state: dict) -> bool:
  return cfg.cure.stage1_steps == 0 or int(state["step"]) < cfg.cure.stage1_steps


def cure_rollout(cfg: LossConfig, responses, ctx, state):
  """Stage 1: branches every response at a critical token (module docstring)."""
  c = cfg.cure
  if not _in_stage1(cfg, state):
    return responses
  if c.n1 + c.n1 * c.n2 != ctx.group_size:
    raise ValueError(
        f"loss.cure: n1 + n1·n2 = {c.n1 + c.n1 * c.n2} must equal "
        f"rl.group_size={ctx.group_size}"
    )
  rng = np.random.default_rng(np.asarray(jax.random.key_data(ctx.key)).ravel().tolist())
  cuts = critical_positions(
      responses.entropy,
      responses.completion_mask,
      responses.completion_tokens,
      ctx.stop_ids,
      c.top_k,
      rng,
  )
  rows = np.arange(responses.rows)
  prompts, lengths = branch_prompts(
      responses, rows, cuts, min_bucket=ctx.min_prompt_bucket, pad_id=ctx.pad_id
  )
  branches = ctx.sample(
      prompts,
      lengths,
      responses.examples,
      responses.group_ids,
      c.n2,
      jax.random.fold_in(ctx.key, 11),
      prefix_lengths=responses.prefix_lengths + cuts,
  )
  return type(responses).concat([responses, branches], ctx.pad_id).grouped()


INTERVENTION = Intervention(
    name="cure",
    kind="rollout",
    apply=None,
    config=CUREConfig,
    active=lambda cfg: cfg.cure.enabled,
    init_state=lambda cfg: {"step": jnp.int32(0)},
    after_update=lambda cfg, state, rollout: ({"step": state["step"] + 1}, {}),
    samples_per_prompt=lambda cfg, group_size, state: (
        cfg.cure.n1 if _in_stage1(cfg, state) else group_size
    ),
    rollout=cure_rollout,
)
