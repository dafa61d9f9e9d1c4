"""The typed experiment config: every shipped config resolves and every field can be set from
the command line; unknown keys, missing keys and invalid values (alone or in combination) fail
at start-up with an error naming the field, never inside jit."""

import ast
import dataclasses
import json
import os
import subprocess
import sys

import hypothesis
from hypothesis import strategies as st
import ml_collections
import pytest

from configs import clip_bounds, interventions, law, quickstart, qwen25_7b, qwen25_32b
from entropix_rl import sharding
from entropix_rl.train.config import ExperimentConfig, check_inputs, check_layout, resolve
from entropix_rl.train.config_dict import apply_overrides, as_config_dict, default_config, typed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shipped_configs() -> dict[str, ml_collections.ConfigDict]:
  configs = {
      "quickstart": quickstart.get_config(),
      "quickstart_local": quickstart.get_config("runlocal"),
  }
  configs.update({f"interventions:{p}": interventions.get_config(p) for p in interventions.PRESETS})
  configs.update(
      {
          f"clip_bounds:{s['_name']}": apply_overrides(
              clip_bounds.get_config(), {k: v for k, v in s.items() if k != "_name"}
          )
          for s in clip_bounds.get_sweep()
      }
  )
  configs["law"] = law.get_config()
  for sweep in (law.get_sweep, law.get_size_lr_sweep, law.get_size_sweep, law.get_kl_cov_sweep):
    configs.update(
        {
            f"law:{s['_name']}": apply_overrides(
                law.get_config(), {k: v for k, v in s.items() if k != "_name"}
            )
            for s in sweep()
            if s["seed"] == 0  # the seeds differ in `seed` and `sft.shared_dir` only
        }
    )
  for module in (qwen25_7b, qwen25_32b):
    configs.update({f"{module.__name__}:{m}": module.get_config(m) for m in module.METHODS})
  return configs


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
  out = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and key != "kwargs":
      out.update(leaves(value, path + "."))
    else:
      out[path] = value
  return out


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_is_complete_and_valid(name):
  config = shipped_configs()[name]
  spec = typed(config)
  for section in ("data", "checkpoint", "logging", "mesh", "distributed", "optimizer", "rl"):
    fields = {f.name for f in dataclasses.fields(getattr(spec, section))}
    assert set(config[section].keys()) == fields, section
  assert typed(as_config_dict(spec)) == spec  # the typed config is the whole config
  if spec.model.init == "random":  # the recipes need their checkpoint (test_recipe_configs)
    resolve(spec)
  locked = config.copy_and_resolve_references()
  locked.lock()
  for path, value in leaves(locked).items():  # every field can be set (config_flags sets them so)
    apply_overrides(locked, {path: value})


def test_fields_the_issue_named_are_settable_from_the_command_line(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          "experiments/train.py",
          "--config=configs/quickstart.py",
          f"--workdir={tmp_path}/w",
          "--config.optimizer.warmup_steps=10",
          "--config.data.eval_path=held_out.jsonl",
          "--config.data.eval_fraction=0.1",
          "--config.distributed.coordinator_address=127.0.0.1:1234",
          "--config.checkpoint.keep=0",
      ],  # the one invalid value: start-up fails on it
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0
  assert "checkpoint.keep=0; allowed: an int >= 1" in proc.stderr
  assert "AttributeError" not in proc.stderr
  assert not os.path.exists(os.path.join(tmp_path, "w", "sft"))  # no SFT ran first


def _set(path, value):
  def mutate(config):
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value

  return mutate


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            _set("model.hidden_sizee", 64),
            r"unknown key\(s\) \['model.hidden_sizee'\]; known keys of model: \[.*'hidden_size'",
        ),
        (
            _set("checkpoint.every", 5),
            r"'checkpoint.every'.*known keys of checkpoint: \['keep', 'save_every'\]",
        ),
        (
            lambda config: config.data.__delitem__("eval_fraction"),
            r"the config lacks \['data.eval_fraction'\]",
        ),
        (_set("extra_section", 1), r"unknown key\(s\) \['extra_section'\]"),
    ],
)
def test_unknown_and_missing_keys_are_named_with_the_known_ones(mutate, message):
  config = quickstart.get_config()
  with config.unlocked():
    mutate(config)
  with pytest.raises(ValueError, match=message):
    typed(config)


# Values of the wrong type, per annotated type; each is invalid for every field of that type.
WRONG_TYPE = {
    int: ["x", 1.5, True, None],
    float: ["x", True, None],
    bool: [1, "yes", None],
    str: [3, None],
    tuple: ["x", (1.5,)],
}
# Values of the right type but out of range, per field.
OUT_OF_RANGE = {
    "seed": [],
    "rl.steps": [-1],
    "rl.prompts_per_step": [0],
    "rl.group_size": [0, 1],
    "rl.ppo_epochs": [0],
    "rl.num_minibatches": [0, 3, 7],
    "rl.advantage": ["ppo_gae"],
    "rl.max_gen_batches": [0],
    "rl.token_chunk": [0],
    "rl.micro_batch_size": [-1, 3],
    "rl.logprob_micro_batch_size": [-2, 5],
    "rl.feature_chunk": [0],
    "rl.completion_buckets": [0],
    "rl.max_skipped_updates": [0],
    "rl.cluster_by": ["meaning"],
    "rl.step_delimiter": ["++", "é"],
    "sft.steps": [-1],
    "sft.batch_size": [0],
    "sft.log_every": [0],
    "sft.micro_batch_size": [-1],
    "sft.optimizer.learning_rate": [0.0, -1e-3],
    "sft.optimizer.warmup_steps": [-1],
    "sft.optimizer.schedule": ["linear"],
    "optimizer.learning_rate": [0.0],
    "optimizer.warmup_steps": [-5],
    "optimizer.schedule": ["step"],
    "sampler.temperature": [0.0, -1.0],
    "sampler.top_p": [0.0, 1.5],
    "sampler.top_k": [-1],
    "sampler.max_new_tokens": [0, 60],
    "sampler.max_decode_rows": [-1],
    "sampler.decode_segment": [-1],
    "data.source": ["hub"],
    "data.max_prompt_len": [0, 60],
    "data.eval_fraction": [0.0, 1.0],
    "data.bad_records": ["ignore"],
    "model.init": ["pretrained"],
    "model.param_dtype": ["float16"],
    "model.compute_dtype": ["int8"],
    "model.attention_impl": ["flash"],
    "model.attention_block_q": [0],
    "model.model_type": ["gpt_neox"],
    "model.attention_block_k": [-1],
    "eval.every": [-1],
    "eval.num_prompts": [0],
    "eval.num_samples": [0],
    "eval.pass_k": [(0,), (1, 9)],
    "checkpoint.save_every": [0],
    "checkpoint.keep": [0],
    "logging.console_every": [0],
    "logging.samples_every": [-1],
    "logging.num_samples": [0],
    "logging.wandb.mode": ["cloud"],
    "mesh.data": [0, -2],
    "mesh.fsdp": [0],
    "mesh.tensor": [-3],
    "distributed.num_processes": [-1],
    "distributed.process_id": [-2],
    "task.name": ["chess"],
    "tokenizer.kind": ["sentencepiece"],
    "loss.name": ["grpo_plus"],
    "loss.agg": ["mean"],
    "loss.clip_eps_low": [-0.1, 1.5],
    "loss.clip_cov.ratio": [0.0, 2.0],
    "loss.kl_cov.ratio": [0.0],
    "loss.kl_cov.coef": ["x"],
}
# Combinations of values that are each valid: (overrides, the field the error must name).
COMBINATIONS = [
    ({"sampler.max_new_tokens": 40, "data.max_prompt_len": 30}, "data.max_prompt_len"),
    ({"loss.selection_scope": "microbatch"}, "loss.selection_scope"),
    (
        {
            "rl.old_logp_from_rollout": True,
            "loss.name": "ppo",
            "loss.hapo_temperature.enabled": True,
        },
        "rl.old_logp_from_rollout",
    ),
    ({"rl.prompts_per_step": 3, "rl.group_size": 3, "rl.num_minibatches": 2}, "rl.num_minibatches"),
    ({"eval.num_samples": 2, "eval.pass_k": (1, 4)}, "eval.pass_k"),
    ({"model.init": "checkpoint", "model.checkpoint": ""}, "model.checkpoint"),
    ({"model.model_type": "llama", "model.qkv_bias": True}, "model.qkv_bias"),  # Qwen2's flag
    ({"tokenizer.kind": "hf", "tokenizer.path": ""}, "tokenizer.path"),
    ({"data.source": "file", "data.path": ""}, "data.path"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "mesh"),
    ({"data.path": "prompts.jsonl"}, "data.path"),  # read only with data.source='file'
    ({"data.eval_path": "held_out.jsonl"}, "data.eval_path"),
    ({"model.init": "checkpoint", "model.checkpoint": "/ckpt"}, "model.hidden_size"),
    ({"tokenizer.kind": "hf", "tokenizer.path": "/no/such/tokenizer"}, "/no/such/tokenizer"),
    ({"task.name": "math", "task.kwargs": {}}, "tokenizer.kind='hf'"),
]
# None turns clipping off; an architecture field left None takes ModelConfig's default (a
# decoder flag: the model family's value; the vocabulary: the character tokenizer's).
OPTIONAL = {"optimizer.grad_clip_norm", "sft.optimizer.grad_clip_norm"} | {
    f"model.{name}"
    for name in (
        "qkv_bias",
        "qk_norm",
        "sliding_window",
        "bos_token_id",
        "eos_token_id",
        "vocab_size",
        "model_type",
        "rope_theta",
        "rms_norm_eps",
        "tie_embeddings",
        "max_position_embeddings",
    )
}
_BASE = quickstart.get_config()


def _leaf_type(path: str) -> type:
  """A leaf's type; an unset placeholder's is its declared one."""
  *parents, leaf = path.split(".")
  node = _BASE
  for part in parents:
    node = node[part]
  return node.get_ref(leaf).get_type()


_TYPES = {path: _leaf_type(path) for path in leaves(_BASE)}


def _invalid_values():
  cases = []
  for path, kind in _TYPES.items():
    if path.startswith("loss.") or path == "task.kwargs" or path == "method":
      continue
    cases += [(path, v) for v in WRONG_TYPE.get(kind, []) if v is not None or path not in OPTIONAL]
  cases += [(path, v) for path, values in OUT_OF_RANGE.items() for v in values]
  return cases


def _start_up_error(overrides: dict) -> str:
  """The start-up error of the quickstart config with `overrides` (set without ConfigDict's own
  type check, as a config file may), or "" when it starts."""
  config = quickstart.get_config()
  with config.unlocked():
    for path, value in overrides.items():
      *parents, leaf = path.split(".")
      node = config
      for part in parents:
        node = node[part]
      node._fields[leaf] = value
  try:
    exp = resolve(typed(config))
    check_layout(exp.config, sharding.make_mesh(exp.config.mesh))
    check_inputs(exp)
  except ValueError as err:
    return str(err)
  return ""


def _check_fails_naming(overrides: dict, field: str) -> None:
  message = _start_up_error(overrides)
  assert field in message, (overrides, message)


def test_every_invalid_value_fails_at_start_up_naming_its_field():
  cases = _invalid_values()
  assert len(cases) > 200
  for path, value in cases:
    _check_fails_naming({path: value}, path)


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None)
@hypothesis.given(
    st.lists(
        st.sampled_from(_invalid_values()), min_size=2, max_size=4, unique_by=lambda case: case[0]
    )
)
def test_several_invalid_values_fail_naming_one_of_them(cases):
  message = _start_up_error(dict(cases))
  assert any(path in message for path, _ in cases), (cases, message)


@pytest.mark.parametrize("overrides,field", COMBINATIONS)
def test_invalid_combinations_fail_at_start_up_naming_a_field(overrides, field):
  _check_fails_naming(overrides, field)


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None)
@hypothesis.given(st.lists(st.sampled_from(COMBINATIONS), min_size=2, max_size=3, unique_by=str))
def test_several_invalid_combinations_fail_naming_a_field_of_one_of_them(combinations):
  overrides = {}
  for combination, _ in combinations:
    overrides.update(combination)
  message = _start_up_error(overrides)
  fields = [field for combination, field in combinations]
  assert message and (any(f in message for f in fields) or any(k in message for k in overrides)), (
      combinations,
      message,
  )


def _prompt_file(path, records):
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return str(path)


def test_a_prompt_file_without_the_fields_the_task_reads_fails_at_start_up(tmp_path):
  """Decomposition's verifier reads `n`: a prompt/answer file fails before any work, naming
  the missing field, the task and the record (it used to crash at the first reward)."""
  path = _prompt_file(
      tmp_path / "p.jsonl", [{"prompt": f"{n}=", "answer": "1+1"} for n in range(40)]
  )
  message = _start_up_error({"data.source": "file", "data.path": path})
  assert "task 'decomposition' reads the fields ['n']" in message and "record 0" in message
  with_n = [{"prompt": f"{n}=", "answer": f"1+{n - 1}", "n": n} for n in range(100, 700)]
  path = _prompt_file(tmp_path / "q.jsonl", with_n)
  assert _start_up_error({"data.source": "file", "data.path": path, "eval.num_prompts": 16}) == ""
  few = _prompt_file(tmp_path / "few.jsonl", with_n[:200])
  assert "eval.num_prompts=128 is more than the" in _start_up_error(
      {"data.source": "file", "data.path": few}
  )


@pytest.mark.parametrize(
    "model_type,flags",
    [("qwen3", {}), ("mistral", {"sliding_window": 4}), ("llama", {"sliding_window": None})],
)
def test_model_section_takes_every_family_and_its_decoder_flags(model_type, flags):
  """Architecture fields are ModelConfig's: a family's decoder flags, set or left to it."""
  config = quickstart.get_config()
  with config.unlocked():
    config.model.model_type = model_type
    del config.model["qkv_bias"]
    config.model.update(flags)
  model = resolve(typed(config)).model
  assert model.family.model_type == model_type
  assert model.qk_norm == (model_type == "qwen3") and not model.qkv_bias
  assert model.sliding_window == flags.get("sliding_window")


def test_model_type_error_lists_the_families():
  message = _start_up_error({"model.model_type": "gpt_neox"})
  assert "model.model_type='gpt_neox'; allowed: ('qwen2', 'llama', 'qwen3', 'mistral')" in message


def test_every_field_has_an_invalid_case():
  tested = {path for path, _ in _invalid_values()}
  untested = {p for p in _TYPES if not p.startswith("loss.")} - tested - {"task.kwargs", "method"}
  assert not untested, untested


def test_default_config_holds_every_field_at_the_dataclass_defaults():
  assert typed(default_config()) == ExperimentConfig()
  config = default_config()
  config.rl.steps = 7
  config.loss.clip_cov.ratio = 0.01
  spec = typed(config)
  assert spec.rl.steps == 7 and spec.loss.clip_cov.ratio == 0.01
  assert spec == dataclasses.replace(
      ExperimentConfig(),
      rl=dataclasses.replace(ExperimentConfig().rl, steps=7),
      loss=spec.loss,
  )


def _assignments(path: str) -> list[tuple[int, str, object]]:
  """`(line, dotted key, value)` of every `config.<key> = <literal>` statement in a file."""
  out = []
  for node in ast.walk(ast.parse(open(os.path.join(REPO, path)).read())):
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
      target = ast.unparse(node.targets[0])
      if target.startswith("config."):
        try:
          out.append((node.lineno, target.removeprefix("config."), ast.literal_eval(node.value)))
        except ValueError:
          continue  # not a literal (a size constant, a field reference)
  return out


@pytest.mark.parametrize("path", ["configs/quickstart.py", "entropix_rl/recipes.py"])
def test_config_files_state_only_what_differs_from_the_defaults(path):
  """A config built on `default_config()` sets a field only to a value other than its default
  (outside the `runlocal` smoke settings, which override the file's own values)."""
  defaults = leaves(default_config())
  source = open(os.path.join(REPO, path)).read().splitlines()
  smoke = next((i for i, line in enumerate(source, 1) if "if runlocal:" in line), len(source) + 1)
  restated = [
      (line, key, value)
      for line, key, value in _assignments(path)
      if line < smoke and key in defaults and defaults[key] == value
  ]
  assert not restated, restated
