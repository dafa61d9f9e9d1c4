"""Sharded steps on 8 simulated CPU devices against one device (run in a subprocess, see
tests/multidevice_checks.py, so the XLA device-count flag never leaks into other tests).

Tolerances: the loss and gradient norm agree to 1e-4 (float32 reductions run in another order
on a mesh); updated params to 1e-4 after 4 Adam updates of size ~1e-2 (Adam divides by the
root second moment, so it amplifies round-off of tiny gradients); selections and greedy tokens
exactly.
"""

import json
import os
import subprocess
import sys

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from entropix_rl import sharding
from entropix_rl.models import families, init_params, tiny_config
from tests import mesh_cases

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = tuple(mesh_cases.MESHES)
MICRO_LOSSES, PACKED_LOSSES = mesh_cases.MICRO_LOSSES, mesh_cases.PACKED_LOSSES
SPLIT_MESHES = mesh_cases.SPLIT_MESHES
TOL = 1e-4


@pytest.fixture(scope="module")
def checks():
  # The checkout this test lives in, even where another copy of the package is installed.
  path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
  env = dict(
      os.environ,
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
      JAX_PLATFORMS="cpu",
      PYTHONPATH=path,
  )
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tests", "multidevice_checks.py")],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=1200,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout)


@pytest.mark.parametrize("loss_name", ["ppo", "clip_cov", "kl_cov"])
@pytest.mark.parametrize("mesh", MESHES)
def test_rl_step_on_mesh_matches_one_device(checks, loss_name, mesh):
  got = checks["rl_step"][loss_name][mesh]
  assert got["param_delta"] > 1e-2  # the step really moved the params
  assert got["loss"] < TOL and got["grad_norm"] < TOL * 10
  assert got["params"] < TOL and got["opt_state"] < TOL
  assert got["n_selected"] == got["n_selected_single"]
  if loss_name != "ppo":
    assert got["n_selected"] > 0


@pytest.mark.parametrize(
    "loss_name,mesh", [(loss, m) for loss in MICRO_LOSSES for m in SPLIT_MESHES[loss]]
)
def test_micro_batched_rl_step_on_mesh_matches_one_device(checks, loss_name, mesh):
  """Gradient accumulation over device-local micro-batches, chunked no-grad passes and picks
  from a planning pass reproduce the unsplit single-device update (STEER: old entropy and scope
  statistics; Lp-Reg: an old logit feature; SIREN: a differentiable current logit feature, a
  non-linear aggregate and the anchor state)."""
  got = checks["rl_step_micro"][loss_name][mesh]
  assert got["param_delta"] > 1e-2
  assert got["loss"] < TOL and got["grad_norm"] < TOL * 10
  assert got["params"] < TOL and got["opt_state"] < TOL
  assert got["interventions"] < TOL
  assert got["n_selected"] == got["n_selected_single"]
  if loss_name not in ("ppo", "steer", "siren"):  # the selectors
    assert got["n_selected"] > 0


@pytest.mark.parametrize(
    "loss_name,mesh", [(loss, m) for loss in PACKED_LOSSES for m in SPLIT_MESHES[loss]]
)
def test_packed_rl_step_on_mesh_matches_one_device(checks, loss_name, mesh):
  """Each data shard packs its balanced share of the rows into bins of 24 tokens; the update
  equals the unpacked single-device one (the no-grad passes are packed too)."""
  got = checks["rl_step_packed"][loss_name][mesh]
  assert got["param_delta"] > 1e-2
  assert got["loss"] < TOL and got["grad_norm"] < TOL * 10
  assert got["params"] < TOL and got["opt_state"] < TOL
  assert got["interventions"] < TOL
  assert got["n_selected"] == got["n_selected_single"]
  if loss_name in ("clip_cov", "kl_cov"):
    assert got["n_selected"] > 0


@pytest.mark.parametrize("key", [f"{loss}/{m}" for loss in ("clip_cov", "kl_cov") for m in MESHES])
def test_covariance_selection_is_exact_on_every_mesh(checks, key):
  got = checks["selection"][key]
  assert got["n_selected"] > 1
  assert got["same_tokens"]
  assert got["grad"] < 1e-6


@pytest.mark.parametrize(
    "key", [f"{loss}/{m}" for loss in ("steer", "steer_linear", "lp_reg", "siren") for m in MESHES]
)
def test_entropy_intervention_picks_weights_and_gradients_on_every_mesh(checks, key):
  """STEER's weights, Lp-Reg's and SIREN's picks are the same on every mesh as on one device,
  and so are the gradients in ℓ and in SIREN's top-p entropy feature."""
  got = checks["selection"][key]
  assert got["same_picks"] and got["weights"] == 0.0
  assert got["grad"] < 1e-6 and got["feature_grad"] < 1e-6
  if key.startswith("steer"):
    assert got["n_distinct"] > 10  # the weights really vary
  else:
    assert got["n_selected"] > 1
  if key.startswith("siren"):
    assert got["feature_grad_max"] > 1e-4  # the regulariser really has a gradient


@pytest.mark.parametrize("mesh", MESHES)
def test_sampler_greedy_tokens_match_on_every_mesh(checks, mesh):
  assert checks["sampler"][mesh]["same_tokens"]
  assert checks["sampler"][mesh]["logp"] < TOL


def test_sampler_refill_on_a_mesh_matches_one_batch(checks):
  """Finished rows refilled on the 2x2x2 mesh give the samples of one unmeshed batch."""
  refill = checks["sampler"]["refill_2x2x2"]
  assert min(refill["lengths"]) < 8  # rows did finish early, so slots were refilled
  assert refill["same_tokens"] and refill["logp"] < TOL


def test_params_are_really_distributed(checks):
  params = checks["params"]
  for path, leaf in params.items():
    assert leaf["num_devices"] == 8, path
    if "norm" in path:
      assert leaf["device_bytes"] == leaf["full_bytes"], path  # norms replicated
  for name in ("'embed'", "'q'", "'k'", "'v'", "'o'", "'gate'", "'up'", "'down'", "'lm_head'"):
    leaf = next(v for p, v in params.items() if p.endswith(f"[{name}]"))
    assert leaf["device_bytes"] * 4 == leaf["full_bytes"], (name, leaf)  # fsdp 2 x tensor 2
  assert (
      "tensor" in params["['layers']['q']"]["spec"] and "fsdp" in params["['layers']['q']"]["spec"]
  )


def test_checkpoint_saved_on_one_mesh_restores_on_another(checks):
  got = checks["checkpoint"]
  assert got["max_diff"] == 0.0 and got["step"] == 3 and got["on_target_mesh"]
  assert got["extra"] == {"data_state": {"next_index": 12}}


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_sharded_load_builds_each_param_in_place_from_block_reads(checks, model_type):
  got = checks["sharded_load"][model_type]
  assert got["files"] > 1 and got["max_diff"] == 0.0 and got["shardings_match"]
  if model_type == "qwen3":
    assert "['layers']['q_norm']" in got["params"] and "['layers']['k_norm']" in got["params"]
  assert got["whole_reads"] == 0  # no tensor is read whole ...
  assert got["largest_read"] < got["largest_tensor"]  # ... and no read spans a whole tensor


@pytest.mark.parametrize("preset", ["cure", "ttrl"])
@pytest.mark.parametrize("mesh", MESHES)
def test_branching_and_group_rewards_are_the_same_on_every_mesh(checks, preset, mesh):
  """CURE's prefix branching and TTRL's majority-vote rewards give the single-device rows."""
  got = checks["rollout"][preset][mesh]
  assert got["same"] and got["rows"] == 8 * 8
  if preset == "cure":
    assert got["prompt_width"] > 8  # branched rows carry their prefix in the prompt


def _one_device_mesh():
  return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


@pytest.mark.parametrize("model_type", families.MODEL_TYPES)
def test_every_param_of_every_family_has_a_rule(model_type):
  config = tiny_config(model_type=model_type)
  abstract = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  specs = sharding.param_specs(abstract, _one_device_mesh())
  layers = specs["layers"]
  replicated = lambda spec: all(axis is None for axis in spec)
  if config.qk_norm:  # [L, Dh], replicated like the other norms
    assert replicated(layers["q_norm"]) and replicated(layers["k_norm"])
  if config.qkv_bias:  # [L, heads, Dh], heads over tensor
    assert layers["q_bias"] == P(None, "tensor", None)
  assert replicated(layers["attn_norm"]) and replicated(specs["final_norm"])
  assert layers["q"] == P(None, "fsdp", "tensor", None)


def test_a_param_without_a_rule_fails_naming_it():
  params = {
      "embed": np.zeros((8, 4)),
      "layers": {"q": np.zeros((1, 4, 2, 2)), "mystery_gate": np.zeros((1, 4))},
  }
  with pytest.raises(
      ValueError,
      match=r"param \['layers'\]\['mystery_gate'\] has no partition "
      r"rule; params with rules: \[.*'q_norm'",
  ):
    sharding.param_specs(params, _one_device_mesh())
