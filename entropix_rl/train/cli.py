"""What every binary does at its edge: config-file flags whose errors fit on one line, the
resolved config on request, and a config file's presets.

`cli.define_config` defines `--config` and `app.run(main, flags_parser=cli.parse_flags)`
parses absl's flags. A `--config.*` override that
names no field (`--config.rl.stepz=3`) ends in one line naming the key and the nearest known
keys instead of a chained traceback; a wrong type or value already fails in one line (absl's
own message, or `ConfigError` from `config_dict.typed`, which `config_errors` prints). Two flags
answer without running anything:

  --print_config   the whole typed config (every field, as a config file holds it), then what
                   the run derives from it (model size, tokenizer, sampler and loss constants)
  --list_presets   the presets of the `--config` file (the text after `:`), e.g.
                   `configs/interventions.py:clip_cov`
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import contextlib
import difflib
import importlib.util
import os
import re
import sys
from typing import Any

from absl import flags
import ml_collections
from ml_collections import config_flags

from entropix_rl.train import config_dict
from entropix_rl.train.config import ConfigError, resolve

PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved, typed config and exit without running."
)
LIST_PRESETS = flags.DEFINE_bool(
    "list_presets", False, "List the presets of the --config file (CONFIG:PRESET) and exit."
)
_OVERRIDE = re.compile(r"^--?config\.([\w.]+)(=.*)?$")


def define_config(default: str | None, help_text: str) -> flags.FlagHolder:
  """`--config=PATH[:PRESET]`, a locked config file flag. With a `default` path, ml_collections
  applies `--config.*` overrides while defining the flag (at import): a key the file lacks then
  ends in the same one line as `parse_flags` reports."""
  try:
    return config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
  except (AttributeError, KeyError) as err:
    sys.stderr.write(f"error: {_unknown_key_message([*sys.argv, f'--config={default}'], err)}\n")
    sys.exit(2)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`flags.FLAGS(argv)` for `app.run(main, flags_parser=cli.parse_flags)`: a bad flag value or a
  `--config.*` key that the config file lacks is one line on stderr (exit code 2), not a
  traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    sys.stderr.write(f"error: {' '.join(str(err).split())}\n")
    sys.exit(2)
  except (AttributeError, KeyError) as err:
    sys.stderr.write(f"error: {_unknown_key_message(argv, err)}\n")
    sys.exit(2)


def config_file(argv: Sequence[str]) -> tuple[str, str]:
  """The `--config=PATH[:PRESET]` of `argv`: `(path, preset)`; ("", "") without one."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value is not None:
      path, _, preset = value.partition(":")
      return path, preset
  return "", ""


def load_config_module(path: str) -> Any:
  """The config file at `path` as a module (what `--config=PATH` loads)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def presets(module: Any) -> tuple[str, ...]:
  """A config file's presets: its `PRESETS` (the names `get_config(arg)` takes), or none."""
  return tuple(getattr(module, "PRESETS", ()))


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted key of `config` (a task's `kwargs` counts as one section of free keys)."""
  keys = []
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and key != "kwargs":
      keys += leaf_keys(value, path + ".")
    else:
      keys.append(path)
  return keys


def nearest_keys(key: str, known: Sequence[str], n: int = 3) -> list[str]:
  """The known keys closest to `key`: same section first, then by spelling."""
  section = key.rpartition(".")[0]
  same = [k for k in known if k.rpartition(".")[0] == section]
  close = difflib.get_close_matches(key, same, n=n, cutoff=0.6)
  return close or difflib.get_close_matches(key, known, n=n, cutoff=0.5)


def _unknown_key_message(argv: Sequence[str], err: Exception) -> str:
  path, preset = config_file(argv)
  detail = " ".join(str(err).replace("\\n", " ").split())
  try:
    module = load_config_module(path)
    config = module.get_config(preset) if preset else module.get_config()
  except Exception:  # the config file itself fails: absl's message is all there is
    return f"--config={path}: {detail}"
  known = leaf_keys(config)
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if match and match.group(1) not in known:
      key = match.group(1)
      nearest = nearest_keys(key, known)
      hint = f"; nearest known keys: {', '.join(nearest)}" if nearest else ""
      return (
          f"--config.{key}: {path} has no key {key!r}{hint} (every key: --print_config, "
          "or the config's sections in docs/design.md)"
      )
  return f"--config: {detail}"


def answer_and_exit(config: ml_collections.ConfigDict, argv: Sequence[str]) -> None:
  """Answers `--list_presets` or `--print_config` on stdout (the command's output, for a pipe;
  not a log line), then exits 0; otherwise returns."""
  if LIST_PRESETS.value:
    path, _ = config_file(argv)
    names = presets(load_config_module(path))
    answer = (
        f"{path}: presets " + ", ".join(f"{path}:{name}" for name in names)
        if names
        else f"{path}: no presets (its get_config takes no argument)"
    )
    sys.stdout.write(answer + "\n")
    sys.exit(0)
  if PRINT_CONFIG.value:
    spec = config_dict.typed(config)
    sys.stdout.write(f"{config_dict.as_config_dict(spec)}\n")
    try:
      exp = resolve(spec)
    except ConfigError as err:
      sys.stdout.write(f"# not resolved: {err}\n")
    else:
      model = exp.model
      sys.stdout.write(
          f"# resolved: {model.model_type} model, {model.num_params():,} params "
          f"({model.num_params(include_embeddings=False):,} non-embedding), vocab "
          f"{model.vocab_size}; sampler stop ids {exp.sampler.stop_ids}, pad id "
          f"{exp.sampler.pad_id}, prompt bucket >= {exp.sampler.min_prompt_bucket}; loss "
          f"micro-batch {exp.loss.microbatch_size}, length constant {exp.loss.loss_scale_factor}; "
          f"step delimiter id {exp.step_delimiter_id}\n"
      )
    sys.exit(0)


@contextlib.contextmanager
def one_line_errors(*errors: type[Exception]) -> Iterator[None]:
  """Turns the given errors (default: `ConfigError`, a bad value or combination or a re-run of
  another config, raised before any work) into one line on stderr and exit code 2."""
  caught = errors or (ConfigError,)
  try:
    yield
  except caught as err:
    sys.stderr.write(f"error: {err}\n")
    sys.exit(2)
