r"""Step time of the Clip-Cov and KL-Cov policy losses relative to plain PPO.

  python benchmarks/interventions.py [--batch 32 --time 512 --hidden 256 --vocab 4096]

Two steps per loss name (`ppo`, `clip_cov`, `kl_cov`; `default_loss_config()` with `.name`
set, resolved once to a static `LossConfig`), each `jax.jit(jax.value_and_grad(...))`:

  * `policy_loss_step`: `policy_loss` alone, differentiated w.r.t. `logp`, on `--batch` x
    `--time` tokens (16384 by default) with a random response mask (each row a random-length
    prefix), group-style per-sequence advantages and `old_logp = logp + noise` (a later
    mini-batch, so KL-Cov's penalty is active).
  * `full_loss_step`: the loss step of training, as `train/update.py` builds it: per-token
    log-prob (and entropy when the loss reads it) from `[batch, time, --hidden]` hidden states
    and a `[--hidden, --vocab]` unembedding with the chunked `token_stats.token_logp_entropy`,
    then `policy_loss`; differentiated w.r.t. hidden states and unembedding.

Each figure is the median over `--repeats` timings after a warm-up (compiling) call; a
timing is the mean of `--inner` calls (the bare loss takes well under a millisecond). Names are
timed interleaved (ppo, clip_cov, kl_cov, ppo, ...) so drift hits all alike. One JSON line per
figure; `ratio` is ours (clip_cov or kl_cov) / baseline (ppo) from the same run; target <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from entropix_rl import interventions, token_stats
from entropix_rl.interventions import compose

NAMES = ("ppo", "clip_cov", "kl_cov")


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=32, help="Sequences.")
  p.add_argument("--time", type=int, default=512, help="Response tokens per sequence.")
  p.add_argument("--hidden", type=int, default=256, help="Full step: hidden size.")
  p.add_argument("--vocab", type=int, default=4096, help="Full step: vocabulary size.")
  p.add_argument("--token_chunk", type=int, default=1024, help="Full step: tokens per chunk.")
  p.add_argument("--repeats", type=int, default=7, help="Timings per loss name.")
  p.add_argument(
      "--inner", type=int, default=50, help="policy_loss_step: calls per timing (full step: 1)."
  )
  return p.parse_args()


def emit(**record) -> None:
  print(json.dumps(record), flush=True)


def loss_config(name: str) -> interventions.LossConfig:
  cfg = interventions.default_loss_config()
  cfg.name = name
  return interventions.resolve_loss_config(cfg)


def make_inputs(args: argparse.Namespace) -> dict[str, jax.Array]:
  """Random `[B, T]` loss inputs plus hidden states, unembedding and targets for the full step."""
  rng = np.random.default_rng(0)
  b, t = args.batch, args.time
  lengths = rng.integers(t // 4, t + 1, size=b)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
  logp = np.log(rng.uniform(0.05, 1.0, size=(b, t))).astype(np.float32)
  old_logp = (logp + 0.05 * rng.standard_normal((b, t))).astype(np.float32)
  rewards = rng.integers(0, 2, size=b).astype(np.float32)
  adv = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
  advantages = (adv[:, None] * mask).astype(np.float32)
  hidden = rng.standard_normal((b, t, args.hidden)).astype(np.float32)
  unembed = (rng.standard_normal((args.hidden, args.vocab)) / args.hidden**0.5).astype(np.float32)
  targets = rng.integers(0, args.vocab, size=(b, t)).astype(np.int32)
  arrays = dict(
      logp=logp,
      old_logp=old_logp,
      advantages=advantages,
      mask=mask,
      hidden=hidden,
      unembed=unembed,
      targets=targets,
  )
  return {k: jnp.asarray(v) for k, v in arrays.items()}


def loss_step(cfg: interventions.LossConfig):
  """jit(value_and_grad) of `policy_loss` w.r.t. `logp`."""

  def fn(logp, old_logp, advantages, mask, rng):
    loss, _ = interventions.policy_loss(
        cfg, logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, rng=rng
    )
    return loss

  return jax.jit(jax.value_and_grad(fn))


def full_step(cfg: interventions.LossConfig, token_chunk: int):
  """jit(value_and_grad) of token stats from hidden states + `policy_loss`, as `rl_step`."""
  needs_entropy = "entropy" in interventions.needs(cfg)
  needs_entropy_grad = "entropy" in compose.grad_needs(cfg)

  def fn(hidden, unembed, targets, old_logp, advantages, mask, rng):
    logp, entropy = token_stats.token_logp_entropy(
        hidden, unembed, targets, token_chunk=token_chunk, with_entropy=needs_entropy
    )
    if not needs_entropy_grad:
      entropy = jax.lax.stop_gradient(entropy)
    loss, _ = interventions.policy_loss(
        cfg,
        logp=logp,
        old_logp=old_logp,
        advantages=advantages,
        mask=mask,
        rng=rng,
        entropy=entropy if needs_entropy else None,
    )
    return loss

  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))


def time_interleaved(calls: dict[str, callable], repeats: int, inner: int) -> dict[str, float]:
  """Median seconds per call of each entry, timed round-robin after one warm-up call each."""
  for call in calls.values():
    jax.block_until_ready(call())
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      for _ in range(inner):
        out = call()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / inner)
  return {name: statistics.median(ts) for name, ts in times.items()}


def report(figure: str, seconds: dict[str, float], **shape) -> None:
  for name in NAMES[1:]:
    emit(
        benchmark="losses",
        figure=figure,
        loss=name,
        ours=seconds[name],
        baseline=seconds["ppo"],
        ratio=seconds[name] / seconds["ppo"],
        unit="s",
        baseline_name="ppo",
        target="<= 1.05",
        **shape,
    )


def main() -> None:
  args = parse_args()
  x = make_inputs(args)
  key = jax.random.key(0)
  shape = dict(
      tokens=args.batch * args.time,
      batch=args.batch,
      time=args.time,
      valid_tokens=int(x["mask"].sum()),
      repeats=args.repeats,
      backend=jax.default_backend(),
  )
  configs = {name: loss_config(name) for name in NAMES}

  steps = {name: loss_step(cfg) for name, cfg in configs.items()}
  calls = {
      name: (lambda s=s: s(x["logp"], x["old_logp"], x["advantages"], x["mask"], key))
      for name, s in steps.items()
  }
  report(
      "policy_loss_step_seconds_median",
      time_interleaved(calls, args.repeats, args.inner),
      inner=args.inner,
      **shape,
  )

  steps = {name: full_step(cfg, args.token_chunk) for name, cfg in configs.items()}
  calls = {
      name: (
          lambda s=s: s(
              x["hidden"],
              x["unembed"],
              x["targets"],
              x["old_logp"],
              x["advantages"],
              x["mask"],
              key,
          )
      )
      for name, s in steps.items()
  }
  report(
      "full_loss_step_seconds_median",
      time_interleaved(calls, args.repeats, 1),
      hidden=args.hidden,
      vocab=args.vocab,
      token_chunk=args.token_chunk,
      **shape,
  )


if __name__ == "__main__":
  main()
