"""The trainer's plumbing: metric files, checkpoints, optimizer config, batching, rollout metrics."""

import json
import math
import os
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from entropix_rl import console, padding, run_logs
from entropix_rl.train import rollout, rollout_metrics, sft
from entropix_rl.train.checkpoint import Checkpointer
from entropix_rl.train.metrics import MetricWriter, Table
from entropix_rl.train.optim import OptimizerConfig, learning_rate_schedule, make_optimizer
from entropix_rl.train.state import create_train_state


def test_metric_writer_jsonl_and_truncate_on_resume(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=True)
  for step in range(1, 6):
    writer.write(step, {"a/b": jnp.float32(step) / 2, "text": "skipped", "nan": float("nan")})
  writer.close()
  with open(os.path.join(tmp_path, "metrics.jsonl"), "a") as f:
    f.write('{"step": 6, "a/b"')  # a torn line from a killed process
  records = [
      json.loads(line)
      for line in open(os.path.join(tmp_path, "metrics.jsonl"))
      if line.endswith("}\n")
  ]
  assert [r["a/b"] for r in records] == [0.5, 1.0, 1.5, 2.0, 2.5]
  assert records[0]["nan"] is None and "text" not in records[0]
  MetricWriter(str(tmp_path), tensorboard=False).truncate_after(3)
  lines = open(os.path.join(tmp_path, "metrics.jsonl")).read().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
  assert any(name.startswith("events") for name in os.listdir(tmp_path / "tensorboard"))


def test_tables_are_trimmed_on_resume_and_rendered_for_tensorboard(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=False)
  for step in (2, 4, 6):
    writer.write_table(step, "samples", Table(("prompt", "reward"), (("a|b\nc", 1.0),)))
  MetricWriter(str(tmp_path), tensorboard=False).truncate_after(4)
  lines = open(tmp_path / "tables" / "samples.jsonl").read().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [2, 4]
  assert json.loads(lines[0])["rows"] == [{"prompt": "a|b\nc", "reward": 1.0}]
  markdown = Table(("prompt", "reward"), (("a|b\nc", 0.25),)).markdown().splitlines()
  assert markdown == ["| prompt | reward |", "|---|---|", "| a\\|b⏎c | 0.25 |"]
  with pytest.raises(ValueError, match="rows \\[0\\] do not have 2 cells"):
    Table(("prompt", "reward"), (("only one",),))


def test_progress_logs_eta(caplog):
  progress = console.Progress(10, every=5, keys=("entropy/paper",), label="grpo")
  with caplog.at_level("INFO"):
    progress.update(5, {"entropy/paper": 0.25})
  out = caplog.text
  assert "[grpo] step 5/10" in out and "ETA" in out and "paper=0.25" in out


def test_checkpointer_keeps_last_k_and_restores_exactly(tmp_path):
  optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2))
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  state = create_train_state(
      params,
      optimizer,
      jax.random.PRNGKey(0),
      interventions={"entropy_bonus": {"coef": jnp.float32(0.1)}},
  )
  ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=2, keep=2)
  for step in range(1, 8):
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        rng=jax.random.split(state.rng)[0],
    )
    ckpt.maybe_save(step, state, {"data_state": {"index": step}}, force=step == 7)
  assert ckpt.all_steps() == [6, 7]
  template = create_train_state(
      jax.tree.map(jnp.zeros_like, params),
      optimizer,
      jax.random.PRNGKey(5),
      interventions={"entropy_bonus": {"coef": jnp.float32(0)}},
  )
  restored, extra, step = ckpt.restore(template)
  ckpt.close()
  assert step == 7 and extra == {"data_state": {"index": 7}}
  jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_checkpointer_validates_fields(tmp_path):
  with pytest.raises(ValueError, match="checkpoint.save_every=0"):
    Checkpointer(str(tmp_path), save_every=0, keep=1)
  with pytest.raises(ValueError, match="checkpoint.keep=0"):
    Checkpointer(str(tmp_path), save_every=1, keep=0)


def test_optimizer_config_and_schedule():
  cfg = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, schedule="cosine", decay_steps=100)
  lr = learning_rate_schedule(cfg)
  assert float(lr(0)) == 0.0 and math.isclose(float(lr(10)), 1e-3, rel_tol=1e-6)
  assert float(lr(110)) < 1e-5
  with pytest.raises(ValueError, match="optimizer.learning_rate=-1"):
    OptimizerConfig(learning_rate=-1)


def test_left_pad_and_batches():
  tokens, mask = padding.left_pad([[5, 6], [7], []], 3, pad_id=0)
  np.testing.assert_array_equal(tokens, [[0, 5, 6], [0, 0, 7], [0, 0, 0]])
  np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 1], [0, 0, 0]])
  with pytest.raises(ValueError, match="sequence 0 has 4 tokens"):
    padding.left_pad([[1, 2, 3, 4]], 3, 0)
  demos = sft.sft_batch([[1, 4]], [[5, 2]], 5, 0)
  np.testing.assert_array_equal(demos["tokens"], [[0, 1, 4, 5, 2]])
  np.testing.assert_array_equal(demos["loss_mask"], [[0, 0, 0, 1, 1]])


def test_entropy_metrics_paper_vs_token_mean():
  entropy = np.array([[1.0, 1.0, 0.0], [4.0, 0.0, 0.0]])
  mask = np.array([[1, 1, 0], [1, 0, 0]])
  out = rollout_metrics.entropy_metrics(entropy, mask)
  assert out["entropy/paper"] == pytest.approx((1.0 + 4.0) / 2)
  assert out["entropy/token_mean"] == pytest.approx(6.0 / 3)


def test_pass_at_k_unbiased_estimator():
  assert rollout_metrics.pass_at_k(4, np.array([0, 4]), 1) == pytest.approx(0.5)
  assert rollout_metrics.pass_at_k(4, np.array([1]), 2) == pytest.approx(1 - 3 / 6)
  with pytest.raises(ValueError, match="pass_k=5"):
    rollout_metrics.pass_at_k(4, np.array([1]), 5)


def test_dynamic_sampling_keeps_groups_whose_rewards_differ():
  rewards = np.array([1, 1, 0, 1, 0, 0], float)
  np.testing.assert_array_equal(rollout.informative_groups(rewards, 2), [False, True, False])


def test_tensorboard_purges_the_steps_a_resume_replaces(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=True)
  for step in range(1, 6):
    writer.write(step, {"x": float(step)})
  writer.close()
  time.sleep(1.1)  # event file names carry the second they were opened
  resumed = MetricWriter(str(tmp_path), tensorboard=True)
  resumed.truncate_after(3)
  for step in (4, 5):
    resumed.write(step, {"x": 10.0 * step})
  resumed.close()
  files = run_logs.event_files(str(tmp_path))
  assert len(files) == 2
  assert run_logs.read_event_file(files[0])[5] == {"x": 5.0}  # the old file still holds step 5
  merged = run_logs.read_event_files(files)
  assert {s: v["x"] for s, v in merged.items()} == {1: 1.0, 2: 2.0, 3: 3.0, 4: 40.0, 5: 50.0}
  resumed_only = run_logs.read_event_files(files[1:])
  assert sorted(resumed_only) == [4, 5]
  assert run_logs.read_event_files([files[0], files[1]]) == merged


def test_event_reader_reads_scalars_stored_as_tensors(tmp_path):
  from tensorboardX.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2

  events = [
      event_pb2.Event(
          step=7,
          summary=summary_pb2.Summary(
              value=[
                  summary_pb2.Summary.Value(
                      tag="a",
                      tensor=tensor_pb2.TensorProto(
                          dtype=1,
                          tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                          float_val=[0.25],
                      ),
                  ),
                  summary_pb2.Summary.Value(
                      tag="b",
                      tensor=tensor_pb2.TensorProto(
                          dtype=2,
                          tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                          tensor_content=np.float64(1.5).tobytes(),
                      ),
                  ),
                  summary_pb2.Summary.Value(
                      tag="vector",
                      tensor=tensor_pb2.TensorProto(
                          dtype=1,
                          tensor_shape=tensor_shape_pb2.TensorShapeProto(
                              dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]
                          ),
                          float_val=[1.0, 2.0],
                      ),
                  ),
              ]
          ),
      )
  ]
  path = tmp_path / "events.out.tfevents.1.host"
  with open(path, "wb") as f:
    for event in events:
      payload = event.SerializeToString()
      header = struct.pack("<Q", len(payload))
      f.write(
          header
          + struct.pack("<I", run_logs._masked_crc32c(header))
          + payload
          + struct.pack("<I", run_logs._masked_crc32c(payload))
      )
  assert run_logs.read_event_file(str(path)) == {7: {"a": 0.25, "b": 1.5}}
