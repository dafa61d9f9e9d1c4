"""Reading the logs of training runs: `metrics.jsonl`, TensorBoard event files, `run_info.json`.

A run's workdir holds (docs/design.md, "Metrics files"): `metrics.jsonl` with one
`{"step": int, "<name>": float | null, ...}` object per line, TensorBoard event files under
`tensorboard/` with the same scalar names, and `run_info.json` (resolved config, method name,
`non_embedding_params`). JSONL is read when present; the event files are the fallback.

Metrics are logged on different steps (`eval/*` only every `eval.every` steps), so a `Run`
holds one column per name over the union of logged steps, NaN where a name was not logged
(or was logged as non-finite, which the writer stores as null).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import glob
import json
import math
import os
import struct
from typing import Any

from absl import logging
from etils import epath
import numpy as np

METRICS_FILE = "metrics.jsonl"
RUN_INFO_FILE = "run_info.json"
EVENTS_GLOB = "events.out.tfevents.*"


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
  """One run's scalar metrics, indexed by step.

  Attributes:
    workdir: the run directory.
    steps: `[S]` int64, ascending: every step at which any metric was logged.
    columns: name -> `[S]` float64 values at `steps`, NaN where not logged.
    info: the parsed `run_info.json` (empty if the run has none).
    source: the file(s) the metrics were read from.
  """

  workdir: str
  steps: np.ndarray
  columns: Mapping[str, np.ndarray]
  info: Mapping[str, Any]
  source: str

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))

  @property
  def method(self) -> str:
    """`run_info.json`'s method name, else the directory name."""
    return str(self.info.get("method") or self.name)

  @property
  def non_embedding_params(self) -> int | None:
    value = self.info.get("non_embedding_params")
    return int(value) if value is not None else None

  def keys(self) -> list[str]:
    """Metric names, sorted."""
    return sorted(self.columns)

  def _column(self, key: str) -> np.ndarray:
    if key not in self.columns:
      raise ValueError(
          f"metric {key!r} is not in run {self.workdir} ({self.source}); it has: "
          f"{', '.join(self.keys()) or 'no metrics'}"
      )
    return self.columns[key]

  def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps `[k]` int64, values `[k]` float64) at the steps where `key` has a finite value."""
    values = self._column(key)
    keep = np.isfinite(values)
    return self.steps[keep], values[keep]

  def aligned(self, *keys: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Steps at which every one of `keys` is finite, and each key's values there.

    Returns:
      (steps `[k]` int64, [values `[k]` float64 per key]).
    """
    columns = [self._column(k) for k in keys]
    keep = np.logical_and.reduce([np.isfinite(c) for c in columns])
    return self.steps[keep], [c[keep] for c in columns]


def _number(value: Any, where: str) -> float:
  if value is None:
    return math.nan
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{where}: expected a number or null, got {value!r}")
  return float(value)


def read_jsonl(path: epath.PathLike) -> dict[int, dict[str, float]]:
  """Reads `metrics.jsonl` into {step: {name: value}}.

  A malformed last line (a write torn by a killed process) is skipped with a warning; a
  malformed line elsewhere raises ValueError naming the file and line. A step logged on
  several lines is merged, later lines winning per name.
  """
  lines = epath.Path(path).read_text().splitlines(keepends=True)
  records: dict[int, dict[str, float]] = {}
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        logging.warning("%s: skipping a truncated last line (%d characters)", path, len(line))
        break
      raise ValueError(f"{path}:{i + 1}: not valid JSON ({e}): {line[:80]!r}") from e
    step = record.get("step") if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):
      raise ValueError(
          f"{path}:{i + 1}: each line must be an object with an integer 'step', "
          f"got {line[:80]!r}"
      )
    values = records.setdefault(step, {})
    for name, value in record.items():
      if name != "step":
        values[name] = _number(value, f"{path}:{i + 1}: {name!r}")
  return records


def _masked_crc32c(data: bytes) -> int:
  from tensorboardX.record_writer import masked_crc32c

  return masked_crc32c(data)


def read_event_file(path: epath.PathLike) -> dict[int, dict[str, float]]:
  """Scalar summaries of one TensorBoard event file as {step: {tag: value}}.

  Reads the TFRecord framing (uint64 length, masked CRC-32C of the length, payload, masked
  CRC-32C of the payload; little-endian) and parses each payload as an `Event` protobuf with
  tensorboardX's compiled protos, so neither TensorFlow nor TensorBoard is needed. Scalars are
  `simple_value`s or scalar float tensors (how TF2's `tf.summary.scalar` stores them). A record
  cut off at the end of the file (a killed writer) ends the read; a CRC mismatch raises
  ValueError. tensorboardX replaces characters outside `[-/\\w.]` in tags with `_`
  (`eval/pass@1` is stored as `eval/pass_1`).
  """
  return _parse_event_file(path)[0]


def read_event_files(paths: Sequence[epath.PathLike]) -> dict[int, dict[str, float]]:
  """The scalars of a run's event files, oldest first, as TensorBoard shows them: a file that
  starts with a purge (a `SessionLog.START` at step s, written by a resumed writer) drops
  the earlier files' steps >= s; later files win per step and tag."""
  records: dict[int, dict[str, float]] = {}
  for path in paths:
    new, purges = _parse_event_file(path)
    for purge in purges:
      records = {step: values for step, values in records.items() if step < purge}
    for step, values in new.items():
      records.setdefault(step, {}).update(values)
  return records


def _scalar(value: Any) -> float | None:
  """A summary value's scalar: `simple_value`, or a 0-d float32/float64 tensor."""
  if value.HasField("simple_value"):
    return float(value.simple_value)
  tensor = value.tensor if value.HasField("tensor") else None
  if tensor is None or len(tensor.tensor_shape.dim):
    return None
  if tensor.float_val:
    return float(tensor.float_val[0])
  if tensor.double_val:
    return float(tensor.double_val[0])
  dtype = {1: np.float32, 2: np.float64}.get(tensor.dtype)  # DT_FLOAT, DT_DOUBLE
  if dtype is not None and tensor.tensor_content:
    return float(np.frombuffer(tensor.tensor_content, dtype)[0])
  return None


def _parse_event_file(path: epath.PathLike) -> tuple[dict[int, dict[str, float]], list[int]]:
  """(scalars by step, purge steps) of one event file (`read_event_file`)."""
  from tensorboardX.proto import event_pb2

  data = epath.Path(path).read_bytes()
  records: dict[int, dict[str, float]] = {}
  purges: list[int] = []
  offset = 0
  while offset + 12 <= len(data):
    header = data[offset : offset + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
    if _masked_crc32c(header) != length_crc:
      raise ValueError(f"{path}: corrupt TFRecord length at byte {offset}")
    start, end = offset + 12, offset + 12 + length
    if end + 4 > len(data):
      logging.warning("%s: skipping a truncated last record at byte %d", path, offset)
      break
    payload = data[start:end]
    (payload_crc,) = struct.unpack("<I", data[end : end + 4])
    if _masked_crc32c(payload) != payload_crc:
      raise ValueError(f"{path}: corrupt TFRecord payload at byte {offset}")
    event = event_pb2.Event.FromString(payload)
    if event.HasField("session_log") and event.session_log.status == event.session_log.START:
      purges.append(int(event.step))
    if event.HasField("summary"):
      for value in event.summary.value:
        scalar = _scalar(value)
        if scalar is not None:
          records.setdefault(int(event.step), {})[value.tag] = scalar
    offset = end + 4
  return records, purges


def event_files(workdir: epath.PathLike) -> list[str]:
  """TensorBoard event files of a run (in `workdir/tensorboard/` or `workdir/`), oldest first."""
  root = epath.Path(workdir)
  files = [
      os.fspath(f) for f in [*(root / "tensorboard").glob(EVENTS_GLOB), *root.glob(EVENTS_GLOB)]
  ]
  return sorted(files, key=lambda p: (os.path.basename(p), p))


def is_run(path: epath.PathLike) -> bool:
  """Whether `path` is a directory holding `metrics.jsonl` or TensorBoard event files."""
  root = epath.Path(path)
  return root.is_dir() and ((root / METRICS_FILE).exists() or bool(event_files(path)))


def _columns(
    records: Mapping[int, Mapping[str, float]],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  steps = np.asarray(sorted(records), dtype=np.int64)
  index = {int(s): i for i, s in enumerate(steps)}
  columns: dict[str, np.ndarray] = {}
  for step, values in records.items():
    for name, value in values.items():
      if name not in columns:
        columns[name] = np.full(steps.size, np.nan)
      columns[name][index[step]] = value
  return steps, columns


def load_run(workdir: epath.PathLike) -> Run:
  """Loads a run's metrics (JSONL first, else TensorBoard event files) and `run_info.json`.

  Raises:
    ValueError: `workdir` is not a directory or has neither metrics file.
  """
  root = epath.Path(workdir)
  if not root.is_dir():
    raise ValueError(f"run directory {os.fspath(workdir)!r} does not exist")
  jsonl = root / METRICS_FILE
  if jsonl.exists():
    records, source = read_jsonl(jsonl), os.fspath(jsonl)
  else:
    files = event_files(workdir)
    if not files:
      raise ValueError(
          f"{workdir!r} has no {METRICS_FILE} and no TensorBoard event files "
          f"({EVENTS_GLOB} in it or in its tensorboard/ folder)"
      )
    records = read_event_files(files)  # oldest first: a resumed run's later files win
    source = ", ".join(files)
  info_path = root / RUN_INFO_FILE
  info: dict[str, Any] = json.loads(info_path.read_text()) if info_path.exists() else {}
  steps, columns = _columns(records)
  return Run(workdir=workdir, steps=steps, columns=columns, info=info, source=source)


def find_runs(paths_or_globs: str | Sequence[str]) -> list[str]:
  """Run directories named by paths or glob patterns.

  Args:
    paths_or_globs: a comma-separated string or a list of paths/globs (`~` is expanded). A
      match that is a run (`is_run`) is taken; a match that is not, such as a sweep's root, is
      replaced by its immediate subdirectories that are runs and have a `run_info.json` (so
      the `sft_logs/` of a shared warm start is not mistaken for an RL run).

  Returns:
    Run directories, each once, in the order given (sorted within each glob).

  Raises:
    ValueError: a pattern matches nothing, or no run is found at all.
  """
  patterns = paths_or_globs.split(",") if isinstance(paths_or_globs, str) else list(paths_or_globs)
  patterns = [os.path.expanduser(p.strip()) for p in patterns if p.strip()]
  if not patterns:
    raise ValueError("no run directories given (empty path list)")
  found: list[str] = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise ValueError(f"{pattern!r} matches no file or directory")
    for match in matches:
      if is_run(match):
        found.append(match)
      elif os.path.isdir(match):
        found.extend(
            sub
            for sub in sorted(glob.glob(os.path.join(match, "*")))
            if is_run(sub) and os.path.exists(os.path.join(sub, RUN_INFO_FILE))
        )
  runs = list(dict.fromkeys(os.path.normpath(p) for p in found))
  if not runs:
    raise ValueError(
        f"no runs (directories with {METRICS_FILE} or TensorBoard event files) " f"under {patterns}"
    )
  return runs


def labels(workdirs: Sequence[str]) -> list[str]:
  """Short unique names: each workdir's shortest trailing path that no other workdir shares."""
  parts = [os.path.normpath(os.path.abspath(w)).split(os.sep) for w in workdirs]
  out = []
  for i, p in enumerate(parts):
    for depth in range(1, len(p) + 1):
      label = "/".join(p[-depth:])
      if all("/".join(q[-depth:]) != label for j, q in enumerate(parts) if j != i):
        break
    out.append(label)
  return out


def summarize_run(run: Run, *, last_evals: int = 3, last_steps: int = 10) -> dict[str, float]:
  """Entropy, accuracy and diversity at the start and the end of an RL run.

  "End" accuracies are means over the last `last_evals` evaluations (an eval of 128 prompts x 8
  samples is noisy); "end" entropy (the paper's definition) and distinct correct answers per
  group are means over the last `last_steps` steps, "start" diversity over the first ones.
  """
  _, entropy = run.series("entropy/paper")
  _, sampled = run.series("eval/sampled_accuracy")
  _, greedy = run.series("eval/greedy_accuracy")
  _, distinct = run.series("accuracy/distinct_correct_per_group")
  return {
      "entropy_start": float(entropy[0]),
      "entropy_end": float(entropy[-last_steps:].mean()),
      "accuracy_start": float(sampled[0]),
      "accuracy_end": float(sampled[-last_evals:].mean()),
      "greedy_accuracy_end": float(greedy[-last_evals:].mean()),
      "distinct_start": float(distinct[:last_steps].mean()),
      "distinct_end": float(distinct[-last_steps:].mean()),
  }
