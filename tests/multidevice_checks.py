"""Checks run on 8 simulated CPU devices; `tests/test_sharding.py` runs this in a subprocess.

Prints one JSON object: for each check, the largest differences against the single-device
result (and facts about shardings), which the test module asserts on.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import dataclasses
import json
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/
import tempfile

import jax
import numpy as np
import optax

from entropix_rl import interventions, sampling, sharding
from entropix_rl.interventions import aggregation
from entropix_rl.models import init_params, tiny_config
from entropix_rl.train.checkpoint import Checkpointer
from entropix_rl.train.config import RLConfig
from entropix_rl.train.optim import OptimizerConfig, make_optimizer
from entropix_rl.train.state import create_train_state
from entropix_rl.train.update import UpdateSpec, jit_rl_update
from tests.mesh_cases import MESHES, MICRO_LOSSES, PACKED_LOSSES, SPLIT_MESHES
from tests.synthetic import UPDATE_MODEL, max_abs_diff, rl_rows

MODEL = UPDATE_MODEL.replace(vocab_size=64, qkv_bias=True)
# Qwen3: q/k norms, and a head_dim (16) that is not hidden_size / num_heads.
QWEN3 = tiny_config(
    model_type="qwen3",
    vocab_size=64,
    hidden_size=32,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=64,
    max_position_embeddings=64,
)
GROUPS, GROUP_SIZE, PROMPT, COMPLETION = 4, 4, 6, 10


def _mesh(shape):
  return sharding.make_mesh(dict(zip(sharding.AXES, shape)))


def _batch(seed=0, groups=GROUPS):
  return rl_rows(MODEL.vocab_size, groups, GROUP_SIZE, PROMPT, COMPLETION, seed=seed, min_length=3)


# Settings of the loss-side entropy interventions on top of `loss.name` (the tiny model's flat
# distributions need a large min-p κ for Lp-Reg's proxy to exceed ℓ, and every negative token
# considered).
EXTRA = {
    "lp_reg": {"lp_reg": {"ratio": 1.0, "kappa": 0.3}},
    "siren": {"name": "ppo", "siren": {"enabled": True, "coef": 0.5}},
}


def rl_step_equivalence(loss_name, groups=GROUPS, micro=0, tokens=0, meshes=tuple(MESHES)):
  """rl_update on `meshes` vs one device: metrics and updated params. With `micro`, the
  meshes accumulate micro-batches of `micro` sequences per data shard (and chunk the no-grad
  passes the same way); with `tokens`, micro-batches of `tokens` packed tokens per data shard
  (the no-grad passes too); the single-device reference runs unsplit, unpacked mini-batches.
  Split updates use SGD, since Adam's per-coordinate normalisation turns round-off in near-zero
  gradients into lr-sized steps."""
  loss_cfg = interventions.default_loss_config()
  loss_cfg.name = loss_name
  loss_cfg.clip_cov.ratio = 0.1
  loss_cfg.kl_cov.ratio = 0.1
  loss_cfg.update(EXTRA.get(loss_name, {}))
  loss_cfg = interventions.resolve_loss_config(loss_cfg)
  rl_cfg = RLConfig(
      prompts_per_step=groups,
      group_size=GROUP_SIZE,
      ppo_epochs=2,
      num_minibatches=2,
      advantage="grpo",
      token_chunk=64,
      remat=False,
  )
  split = micro or tokens
  # The entropy-change measurement: in every unsplit update, and in PPO's split ones.
  measured = not split or loss_name == "ppo"
  spec = UpdateSpec(model=MODEL, rl=rl_cfg, loss=loss_cfg, measure_dynamics=measured)
  mesh_spec = dataclasses.replace(
      spec,
      rl=dataclasses.replace(
          rl_cfg,
          micro_batch_size=micro,
          logprob_micro_batch_size=micro,
          micro_batch_tokens=tokens,
          logprob_micro_batch_tokens=tokens,
      ),
  )
  optimizer = optax.sgd(0.5) if split else make_optimizer(OptimizerConfig(learning_rate=1e-2))
  params = init_params(MODEL, jax.random.PRNGKey(0), init_std=0.2)

  def fresh_state():
    return create_train_state(
        jax.tree.map(np.array, params),
        optimizer,
        jax.random.PRNGKey(1),
        ref_params=jax.tree.map(np.array, params),
        interventions=interventions.init_states(loss_cfg),
    )

  batch = _batch(groups=groups)
  single_state, single_metrics = jit_rl_update(spec, optimizer)(fresh_state(), batch)
  out = {}
  for name in meshes:
    mesh = _mesh(MESHES[name])
    state = fresh_state()
    shardings = sharding.state_shardings(state, optimizer, mesh)
    update = jit_rl_update(mesh_spec, optimizer, mesh=mesh, state_sharding=shardings)
    new_state, metrics = update(jax.device_put(state, shardings), sharding.to_global(batch, mesh))
    out[name] = {
        "params": max_abs_diff(new_state.params, single_state.params),
        "opt_state": max_abs_diff(new_state.opt_state, single_state.opt_state),
        "loss": abs(float(metrics["loss/loss"]) - float(single_metrics["loss/loss"])),
        "grad_norm": abs(
            float(metrics["loss/grad_norm"]) - float(single_metrics["loss/grad_norm"])
        ),
        "n_selected": float(metrics["loss/n_selected_total"]),
        "n_selected_single": float(single_metrics["loss/n_selected_total"]),
        "param_delta": max_abs_diff(single_state.params, params),
        "interventions": max_abs_diff(new_state.interventions, single_state.interventions),
    }
  return out


def selection_equivalence():
  """policy_loss's picked tokens and gradients on row-sharded inputs vs one device."""
  rng = np.random.default_rng(3)
  n, t = 16, 64
  mask = (rng.random((n, t)) < 0.8).astype(np.float32)
  inputs = {
      "logp": -rng.exponential(1.0, (n, t)).astype(np.float32),
      "advantages": rng.normal(size=(n, t)).astype(np.float32) * mask,
  }
  inputs["old_logp"] = inputs["logp"] + rng.normal(0, 0.1, (n, t)).astype(np.float32)
  out = {}
  for loss_name in ("clip_cov", "kl_cov"):
    cfg = interventions.default_loss_config()
    cfg.name = loss_name
    cfg.clip_cov.ratio = 0.05
    cfg.kl_cov.ratio = 0.05
    cfg = interventions.resolve_loss_config(cfg)

    def fn(x, m, cfg=cfg):
      grad_fn = jax.grad(
          lambda lp: interventions.policy_loss(
              cfg,
              logp=lp,
              old_logp=x["old_logp"],
              advantages=x["advantages"],
              mask=m,
              rng=jax.random.PRNGKey(7),
          )[0]
      )
      _, aux = interventions.policy_loss(
          cfg,
          logp=x["logp"],
          old_logp=x["old_logp"],
          advantages=x["advantages"],
          mask=m,
          rng=jax.random.PRNGKey(7),
      )
      return aux["selected"], grad_fn(x["logp"])

    ref_sel, ref_grad = jax.jit(fn)(inputs, mask)
    for name, shape in MESHES.items():
      mesh = _mesh(shape)
      sel, grad = jax.jit(fn, out_shardings=sharding.batch_sharding(mesh))(
          sharding.to_global(inputs, mesh), sharding.to_global(mask, mesh)
      )
      out[f"{loss_name}/{name}"] = {
          "same_tokens": bool(np.array_equal(np.asarray(sel), np.asarray(ref_sel))),
          "n_selected": int(np.asarray(ref_sel).sum()),
          "grad": max_abs_diff(grad, ref_grad),
      }
  out.update(entropy_intervention_equivalence(inputs, mask, rng))
  return out


def entropy_intervention_equivalence(inputs, mask, rng):
  """STEER weights, Lp-Reg picks and SIREN picks on row-sharded inputs vs one device, with
  the gradients of the loss in ℓ and (SIREN) in its top-p entropy feature."""
  from entropix_rl.interventions import lp_reg, siren, steer

  n, t = mask.shape
  inputs = dict(
      inputs,
      old_entropy=rng.uniform(0.0, 3.0, (n, t)).astype(np.float32),
      proxy=(inputs["logp"] + rng.normal(0.5, 1.5, (n, t))).astype(np.float32),
      top_p_entropy=rng.uniform(0.0, 2.0, (n, t)).astype(np.float32),
  )
  settings = {
      "steer": {"name": "steer"},
      "steer_linear": {"name": "steer", "steer": {"mode": "linear", "lambda_max": 1.2}},
      "lp_reg": {"name": "lp_reg", "lp_reg": {"ratio": 0.1}},
      "siren": {"siren": {"enabled": True, "coef": 0.5}},
  }
  states = {"siren": {"anchor": np.float32(0.3), "anchor_set": np.bool_(True)}}
  out = {}
  for label, overrides in settings.items():
    cfg = interventions.default_loss_config()
    cfg.update(overrides)
    cfg = interventions.resolve_loss_config(cfg)

    def fn(x, m, cfg=cfg, label=label):
      def loss_fn(logp, feature):
        batch = interventions.TokenBatch(
            logp=logp,
            old_logp=x["old_logp"],
            advantages=x["advantages"],
            mask=m,
            old_entropy=x["old_entropy"],
            features={siren.FEATURE: feature},
            old_features={lp_reg.PROXY: x["proxy"]},
        )
        loss, aux, stats = interventions.compute_loss(
            cfg, batch, states=states, rng=None, agg=aggregation.Aggregator(cfg.agg)
        )
        if label.startswith("steer"):
          picks = steer.steer_weights(cfg, batch, stats["steer"])
        else:
          picks = stats["siren"] if label == "siren" else aux["selected"]
        return loss, picks.astype(np.float32)

      grads, picks = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(x["logp"], x["top_p_entropy"])
      return picks, grads[0], grads[1]

    ref_picks, ref_grad, ref_feature_grad = jax.jit(fn)(inputs, mask)
    for name, shape in MESHES.items():
      mesh = _mesh(shape)
      picks, grad, feature_grad = jax.jit(fn, out_shardings=sharding.batch_sharding(mesh))(
          sharding.to_global(inputs, mesh), sharding.to_global(mask, mesh)
      )
      out[f"{label}/{name}"] = {
          "same_picks": bool(np.array_equal(np.asarray(picks), np.asarray(ref_picks))),
          "weights": max_abs_diff(picks, ref_picks),
          "n_selected": int((np.asarray(ref_picks) > 0).sum()),
          "n_distinct": len(np.unique(np.asarray(ref_picks)[mask > 0])),
          "grad": max_abs_diff(grad, ref_grad),
          "feature_grad": max_abs_diff(feature_grad, ref_feature_grad),
          "feature_grad_max": float(np.abs(np.asarray(ref_feature_grad)).max()),
      }
  return out


def sampler_equivalence():
  params = init_params(MODEL, jax.random.PRNGKey(2), init_std=0.3)
  rng = np.random.default_rng(0)
  lengths = rng.integers(2, 7, 8)
  prompts = np.zeros((8, 6), np.int32)
  for i, n in enumerate(lengths):
    prompts[i, 6 - n :] = rng.integers(3, MODEL.vocab_size, n)
  cfg = sampling.SamplerConfig(greedy=True, max_new_tokens=8, num_samples=2)
  ref = sampling.sample(MODEL, params, prompts, lengths, jax.random.PRNGKey(0), cfg)
  out = {}
  for name, shape in MESHES.items():
    mesh = _mesh(shape)
    placed = jax.device_put(params, sharding.param_shardings(MODEL, mesh))
    got = sampling.sample(MODEL, placed, prompts, lengths, jax.random.PRNGKey(0), cfg, mesh=mesh)
    out[name] = {
        "same_tokens": bool(
            np.array_equal(np.asarray(got.completion_tokens), np.asarray(ref.completion_tokens))
        ),
        "logp": max_abs_diff(got.logp, ref.logp),
    }
  # Refilling on the 2x2x2 mesh (4 row shards): a batch of 4 prompts x 2 samples, the other 4
  # prompts' rows refill finished rows; sampled with a stop token, against one batch unmeshed.
  cfg = sampling.SamplerConfig(
      max_new_tokens=8, num_samples=2, stop_ids=(5, 9, 17), decode_segment=2
  )
  ref = sampling.sample(MODEL, params, prompts, lengths, jax.random.PRNGKey(1), cfg)
  mesh = _mesh(MESHES["2x2x2"])
  placed = jax.device_put(params, sharding.param_shardings(MODEL, mesh))
  got = sampling.sample(
      MODEL,
      placed,
      prompts,
      lengths,
      jax.random.PRNGKey(1),
      dataclasses.replace(cfg, max_decode_rows=4),
      mesh=mesh,
  )
  out["refill_2x2x2"] = {
      "same_tokens": bool(
          np.array_equal(np.asarray(got.completion_tokens), np.asarray(ref.completion_tokens))
      ),
      "lengths": np.asarray(ref.lengths).tolist(),
      "logp": max_abs_diff(got.logp, ref.logp),
  }
  return out


def param_placement():
  """Per-leaf shardings of a model placed on the 2x2x2 mesh."""
  mesh = _mesh((2, 2, 2))
  params = jax.device_put(
      init_params(MODEL, jax.random.PRNGKey(0)), sharding.param_shardings(MODEL, mesh)
  )
  rows = sharding.describe_param_sharding(params)
  full = {path: int(np.prod(shape)) * 4 for path, shape, _, _ in rows}
  return {
      path: {
          "spec": spec,
          "device_bytes": nbytes,
          "full_bytes": full[path],
          "num_devices": len(leaf.sharding.device_set),
      }
      for (path, _, spec, nbytes), leaf in zip(rows, jax.tree.leaves(params))
  }


def checkpoint_across_meshes():
  """Save a sharded train state on one mesh, restore it on another."""
  optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-3))
  state = create_train_state(
      init_params(MODEL, jax.random.PRNGKey(5)), optimizer, jax.random.PRNGKey(6)
  )
  mesh_a, mesh_b = _mesh((2, 4, 1)), _mesh((2, 2, 2))
  saved = jax.device_put(state, sharding.state_shardings(state, optimizer, mesh_a))
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = Checkpointer(tmp, save_every=1, keep=1)
    ckpt.maybe_save(3, saved, {"data_state": {"next_index": 12}})
    target_sh = sharding.state_shardings(state, optimizer, mesh_b)
    target = jax.device_put(jax.tree.map(np.zeros_like, state), target_sh)
    restored, extra, step = ckpt.restore(target)
    ckpt.close()
  specs_match = all(
      a.sharding == b for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(target_sh))
  )
  return {
      "max_diff": max_abs_diff(restored, state),
      "step": step,
      "extra": extra,
      "on_target_mesh": specs_match,
  }


def sharded_load(model):
  """hf.load with shardings: every param is built in its sharding from per-device reads."""
  from entropix_rl.models import hf

  params = init_params(model, jax.random.PRNGKey(9), init_std=0.3)
  mesh = _mesh((2, 2, 2))
  reads, whole_reads = [], []
  real_open = hf.safe_open

  class Spy:

    def __init__(self, *args, **kwargs):
      self.f = real_open(*args, **kwargs)

    def __enter__(self):
      self.f.__enter__()
      return self

    def __exit__(self, *exc):
      return self.f.__exit__(*exc)

    def keys(self):
      return self.f.keys()

    def get_tensor(self, name):
      whole_reads.append(name)
      return self.f.get_tensor(name)

    def get_slice(self, name):
      sl = self.f.get_slice(name)

      class Slice:

        def get_shape(self):
          return sl.get_shape()

        def __getitem__(self, idx):
          block = sl[idx]
          reads.append(block.size)
          return block

      return Slice()

  with tempfile.TemporaryDirectory() as tmp:
    hf.save(tmp, model, params, max_shard_bytes=20_000)
    _, ref = hf.load(tmp)
    hf.safe_open = Spy
    try:
      _, placed = hf.load(tmp, shardings=sharding.param_shardings(model, mesh))
    finally:
      hf.safe_open = real_open
    files = len([f for f in os.listdir(tmp) if f.endswith(".safetensors")])
  largest_tensor = max(
      int(np.prod(x.shape[1:] if x.ndim == 4 else x.shape)) for x in jax.tree.leaves(params)
  )
  return {
      "max_diff": max_abs_diff(placed, ref),
      "files": files,
      "whole_reads": len(whole_reads),
      "largest_read": max(reads),
      "largest_tensor": largest_tensor,
      "shardings_match": all(
          a.sharding == b
          for a, b in zip(
              jax.tree.leaves(placed), jax.tree.leaves(sharding.param_shardings(model, mesh))
          )
      ),
      "params": sorted(
          jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(placed)[0]
      ),
  }


def rollout_equivalence():
  """A step's rollout with prefix branching (CURE) and group-level rewards (TTRL) collected on
  each mesh vs one device: the same rows, tokens, masks and rewards (greedy decoding)."""
  from configs import interventions as presets
  from entropix_rl.train import loop
  from entropix_rl.train.config import resolve
  from entropix_rl.train.config_dict import typed

  out = {}
  for preset in ("cure", "ttrl"):
    config = presets.get_config(preset)
    config.sampler.greedy = True
    config.rl.prompts_per_step = 8
    config.rl.num_minibatches = 2
    config.sft.steps = 0
    config.logging.tensorboard = False
    exp = resolve(typed(config))
    batches = {}
    for name, devices in [("single", jax.devices()[:1])] + [(m, None) for m in MESHES]:
      mesh = (
          sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices)
          if devices
          else _mesh(MESHES[name])
      )
      params = init_params(exp.model, jax.random.PRNGKey(4), init_std=0.3)
      with tempfile.TemporaryDirectory() as tmp:
        run = loop.RLRun(exp, tmp, params, mesh)
        batch, _, _ = run.collect(jax.random.PRNGKey(5))
        run.close()
      batches[name] = batch
    ref = batches.pop("single")
    out[preset] = {
        name: {
            "same": all(np.array_equal(batch[k], ref[k]) for k in ref if k != "info"),
            "rows": int(ref["completion"].shape[0]),
            "prompt_width": int(ref["tokens"].shape[1] - ref["completion"].shape[1]),
        }
        for name, batch in batches.items()
    }
  return out


def main():
  assert jax.device_count() == 8, jax.devices()
  checks = {
      "rl_step": {name: rl_step_equivalence(name) for name in ("ppo", "clip_cov", "kl_cov")},
      # Split updates: PPO on every mesh, the interventions on the mesh with every axis.
      "rl_step_micro": {
          name: rl_step_equivalence(name, groups=8, micro=1, meshes=SPLIT_MESHES[name])
          for name in MICRO_LOSSES
      },
      # Rows of 16 slots (6 prompt, 3-10 completion tokens) in bins of 24 tokens.
      "rl_step_packed": {
          name: rl_step_equivalence(name, groups=8, tokens=24, meshes=SPLIT_MESHES[name])
          for name in PACKED_LOSSES
      },
      "selection": selection_equivalence(),
      "sampler": sampler_equivalence(),
      "params": param_placement(),
      "checkpoint": checkpoint_across_meshes(),
      "sharded_load": {"qwen2": sharded_load(MODEL), "qwen3": sharded_load(QWEN3)},
      "rollout": rollout_equivalence(),
  }
  json.dump(checks, sys.stdout)


if __name__ == "__main__":
  with jax.default_matmul_precision("highest"):
    main()
