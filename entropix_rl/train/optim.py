"""The optimizer: AdamW with global-norm gradient clipping and a warm-up schedule (optax)."""

from __future__ import annotations

import dataclasses

import optax

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW settings.

  Attributes:
    learning_rate: peak learning rate.
    warmup_steps: linear warm-up from 0 over this many optimizer updates.
    schedule: "constant" after warm-up, or "cosine" decay to `final_lr_fraction`·peak.
    decay_steps: length of the cosine decay (updates); required for "cosine".
    final_lr_fraction: end of the cosine decay, as a fraction of the peak.
    weight_decay: decoupled weight decay.
    b1, b2, eps: Adam moments.
    grad_clip_norm: global-norm clipping threshold (None = off).
  """

  learning_rate: float = 1e-6
  warmup_steps: int = 0
  schedule: str = "constant"
  decay_steps: int = 0
  final_lr_fraction: float = 0.0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip_norm: float | None = 1.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"optimizer.schedule={self.schedule!r}; allowed: {SCHEDULES}")
    if not self.learning_rate > 0:
      raise ValueError(f"optimizer.learning_rate={self.learning_rate} must be > 0")
    if self.schedule == "cosine" and self.decay_steps <= 0:
      raise ValueError("optimizer.decay_steps must be > 0 with schedule='cosine'")
    if self.warmup_steps < 0:
      raise ValueError(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.learning_rate)
  else:
    after = optax.cosine_decay_schedule(cfg.learning_rate, cfg.decay_steps, cfg.final_lr_fraction)
  if cfg.warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW under the schedule."""
  adamw = optax.adamw(
      learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
  )
  if cfg.grad_clip_norm is None:
    return adamw
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)
