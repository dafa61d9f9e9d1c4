"""The "Adding an intervention" example of docs/interventions.md, executed as written: it
registers, validates its config section, computes its loss and gradient, and keeps and updates
its state through real RL updates."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from entropix_rl import interventions
from entropix_rl.interventions import registry
from entropix_rl.models import init_params, tiny_config
from entropix_rl.train.state import create_train_state
from entropix_rl.train.update import jit_rl_update
from tests.test_update import update_spec

DOC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "interventions.md"
)


@pytest.fixture
def example():
  text = open(DOC).read()
  section = text[text.index("## Adding an intervention") :]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  namespace = {}
  exec(compile(blocks[0], "docs/interventions.md", "exec"), namespace)
  exec(compile(blocks[1], "docs/interventions.md", "exec"), namespace)
  yield namespace
  registry.unregister("entropy_floor")


def _config(**overrides):
  cfg = interventions.default_loss_config()
  for key, value in overrides.items():
    cfg.entropy_floor[key] = value
  return interventions.resolve_loss_config(cfg)


def test_example_validates_and_computes_its_loss(example):
  with pytest.raises(ValueError, match=re.escape("loss.entropy_floor.decay=1.0; allowed")):
    _config(decay=1.0)
  cfg = _config(coef=0.5, fraction=0.5)
  assert interventions.needs(cfg) >= {"entropy", "old_entropy"}
  rng = np.random.default_rng(0)
  mask = (rng.random((3, 6)) < 0.8).astype(np.float32)
  entropy = jnp.asarray(rng.uniform(0, 2, (3, 6)), jnp.float32)
  states = {"entropy_floor": {"mean_entropy": jnp.float32(2.0)}}
  args = dict(
      logp=jnp.full((3, 6), -1.0),
      old_logp=jnp.full((3, 6), -1.0),
      advantages=jnp.zeros((3, 6)),
      mask=mask,
      rng=None,
      states=states,
      old_entropy=entropy,
  )
  _, aux = interventions.policy_loss(cfg, entropy=entropy, **args)
  want = (np.maximum(1.0 - np.asarray(entropy), 0) * mask).sum() / mask.sum()
  assert float(aux["entropy_floor"]) == pytest.approx(want, rel=1e-5)
  grad = jax.grad(lambda h: interventions.policy_loss(cfg, entropy=h, **args)[0])(entropy)
  np.testing.assert_allclose(
      grad, -0.5 * (np.asarray(entropy) < 1.0) * mask / mask.sum(), rtol=1e-5, atol=1e-8
  )


def test_example_state_is_kept_and_updated_by_the_trainer(example):
  cfg = _config(coef=0.1)
  model = tiny_config(vocab_size=32)
  spec = update_spec(cfg, model, groups=2, group_size=2, measure_dynamics=False)
  optimizer = optax.sgd(0.1)
  state = create_train_state(
      init_params(model, jax.random.PRNGKey(0)),
      optimizer,
      jax.random.PRNGKey(1),
      interventions=interventions.init_states(cfg),
  )
  rng = np.random.default_rng(1)
  batch = {
      "tokens": rng.integers(1, 32, (4, 7)).astype(np.int32),
      "attention_mask": np.ones((4, 7), bool),
      "completion": rng.integers(1, 32, (4, 4)).astype(np.int32),
      "completion_mask": np.ones((4, 4), np.float32),
      "rewards": np.array([1, 0, 1, 0], np.float32),
      "group_ids": np.array([0, 0, 1, 1], np.int32),
  }
  update = jit_rl_update(spec, optimizer)
  means = []
  for _ in range(2):
    state, metrics = update(state, batch)
    means.append(float(state.interventions["entropy_floor"]["mean_entropy"]))
    assert float(metrics["entropy_floor/mean_entropy"]) == pytest.approx(means[-1])
    assert np.isfinite(float(metrics["loss/entropy_floor"]))
  # From 1.0 the moving average climbs toward the random policy's entropy (about ln 32).
  assert 1.0 < means[0] < means[1] < np.log(32)
