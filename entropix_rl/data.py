"""Grain pipelines of prompt batches, over generated tasks or local jsonl/parquet prompt files.

Every pipeline is an infinite, deterministic stream: record `i` is a pure function of
`(seed, split, i)`, and the iterator state (`get_state()`, a small dict) is what the trainer
checkpoints to resume exactly. Hosts take disjoint blocks of each global batch: with `n` hosts
(`shard_count`, by default `jax.process_count()`) and `b` prompts per host, global batch `k`
is records `k*n*b .. (k+1)*n*b - 1` and host `h` (`shard_index`) reads its `h`-th block of `b`
(`host_record`). The step's global batch, concatenated in process order, is therefore the same
for any number of hosts, and so are the rollouts (the sampler's per-row keys follow the global
row).

Config (`config.data`):
  source: "task" (examples drawn by the task's seeded generator) or "file".
  path: a .jsonl or .parquet file (source="file") in the DAPO-Math-17k, MATH(-500), AIME or
    AMC layout: the prompt under `prompt` (a string, or a list of chat messages whose last user
    turn is taken), `problem` or `question`; the ground truth under `reward_model.ground_truth`,
    `ground_truth`, `answer` or (MATH) the last `\\boxed{}` of `solution`. Field names match
    in any case (AIME 2024's `Problem` and `Answer`).
  eval_path: optional held-out file; without it, records whose prompt hashes below
    `eval_fraction` form the eval split.
  A generated task's verifier reads fields beyond the answer (`Task.file_fields`: `n` for
  decomposition, `numbers` and `target` for countdown); a file for such a task carries them in
  every record, and `check_prompt_files` reads the first records at start-up to say which are
  missing. `path` and `eval_path` are read only with source="file" (set with "task", an error).
  max_prompt_len: prompts longer than this (in tokens) are an error naming the record.
  bad_records: "fail" (default: a bad record is an error naming the file and line or record)
    or "skip" (bad records are dropped and counted in one logged summary; a file with no good
    record is still an error). A bad record is a line that is not UTF-8 JSON, a value that is
    not an object, a record with no prompt or no ground truth, or a prompt that is not a string.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import dataclasses
import functools
import json
import os
from typing import Any

from absl import logging
import grain
import jax
import numpy as np

from entropix_rl import tasks as tasks_lib
from entropix_rl.tasks.base import Example, check_split, in_eval_split

SOURCES = ("task", "file")
BAD_RECORDS = ("fail", "skip")
_STREAM_LENGTH = 2**62
_PROMPT_KEYS = ("prompt", "problem", "question")
_ANSWER_KEYS = ("ground_truth", "answer")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """`config.data` (the module docstring describes each field)."""

  source: str = "task"
  path: str = ""
  eval_path: str = ""
  eval_fraction: float = 0.05
  max_prompt_len: int = 8
  bad_records: str = "fail"

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"data.source={self.source!r}; allowed: {SOURCES}")
    if self.source == "file" and not self.path:
      raise ValueError("data.path must name a .jsonl or .parquet file with data.source='file'")
    for name in ("path", "eval_path"):
      if self.source == "task" and getattr(self, name):
        raise ValueError(
            f"data.{name}={getattr(self, name)!r} is read only with data.source='file' (now "
            "'task': prompts come from the task's generator); set data.source='file' or unset it"
        )
    if not 0.0 < self.eval_fraction < 1.0:
      raise ValueError(f"data.eval_fraction={self.eval_fraction!r}; allowed: a number in (0, 1)")
    if self.max_prompt_len < 1:
      raise ValueError(f"data.max_prompt_len={self.max_prompt_len!r}; allowed: an int >= 1")
    check_bad_records(self.bad_records)


class BadRecord(ValueError):
  """A record that cannot become an Example; `reason` is its short category (for summaries)."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def check_bad_records(value: str) -> None:
  if value not in BAD_RECORDS:
    raise ValueError(f"data.bad_records={value!r}; allowed: {BAD_RECORDS}")


def _prompt_text(record: Mapping[str, Any]) -> str:
  """The prompt: the first of `_PROMPT_KEYS` present, a string or chat messages (last user turn)."""
  key = next((k for k in _PROMPT_KEYS if record.get(k) is not None), None)
  if key is None:
    raise BadRecord(
        "no prompt",
        f"expected one of the fields {_PROMPT_KEYS} (a string or a " "list of chat messages)",
    )
  value = record[key]
  if isinstance(value, (list, tuple, np.ndarray)):
    users = [m for m in value if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
      raise BadRecord("no prompt", f"the chat messages under {key!r} have no user turn")
    value = users[-1].get("content")
    key = f"{key}.user.content"
  if not isinstance(value, str):
    raise BadRecord("prompt is not a string", f"{key} is {type(value).__name__}")
  if not value.strip():
    raise BadRecord("empty prompt", f"{key} is blank")
  return value


def _ground_truth(value: Any, field: str) -> str:
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise BadRecord("ground truth is not a string or number", f"{field} is {type(value).__name__}")
  if not str(value).strip():
    raise BadRecord("no ground truth", f"{field} is blank")
  return str(value)


def _answer_text(record: Mapping[str, Any]) -> str:
  reward_model = record.get("reward_model")
  if isinstance(reward_model, Mapping) and reward_model.get("ground_truth") is not None:
    return _ground_truth(reward_model["ground_truth"], "reward_model.ground_truth")
  for key in _ANSWER_KEYS:
    if record.get(key) is not None:
      return _ground_truth(record[key], key)
  if isinstance(record.get("solution"), str):
    boxed = tasks_lib.last_boxed(record["solution"])
    if boxed is not None:
      return _ground_truth(boxed, "the \\boxed{} of solution")
  raise BadRecord(
      "no ground truth",
      f"expected reward_model.ground_truth, "
      f"{' or '.join(_ANSWER_KEYS)}, or a solution with a \\boxed{{}} answer",
  )


def _jsonl_records(path: str) -> list[tuple[str, Any]]:
  """(where, value) per non-blank line; a line that is not UTF-8 JSON gives a BadRecord value."""
  records = []
  with open(path, "rb") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path} line {line_number} (record {len(records)})"
      try:
        value = json.loads(line.decode("utf-8"))
      except UnicodeDecodeError as err:
        value = BadRecord("not UTF-8", str(err))
      except (ValueError, RecursionError) as err:  # JSONDecodeError, digit limits, deep nesting
        value = BadRecord("invalid JSON", str(err) or type(err).__name__)
      records.append((where, value))
  return records


def _file_records(path: str) -> list[tuple[str, Any]]:
  """(where, record) for every record of a .jsonl or .parquet file, in file order."""
  if path.endswith(".jsonl"):
    return _jsonl_records(path)
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq

    return [(f"{path} record {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
  raise ValueError(f"data.path={path!r}: allowed formats are .jsonl and .parquet")


def _example(record: Any, index: int, fields: tuple[str, ...] = ()) -> Example:
  if isinstance(record, BadRecord):
    raise record
  if not isinstance(record, Mapping):
    raise BadRecord("not a JSON object", f"got {type(record).__name__}")
  record = {**{str(k).lower(): v for k, v in record.items()}, **record}  # AIME's "Problem"
  missing = [f for f in fields if f not in record]
  if missing:
    raise BadRecord(
        "missing task fields", f"the task's verifier reads {list(fields)}; no {missing}"
    )
  info = {f: record[f] for f in fields}
  return Example(prompt=_prompt_text(record), answer=_answer_text(record), index=index, info=info)


def _skip_summary(skipped: list[tuple[str, str]]) -> str:
  """`reason ×count (first at WHERE)` per reason, most frequent first."""
  by_reason: dict[str, list[str]] = {}
  for where, reason in skipped:
    by_reason.setdefault(reason, []).append(where)
  ordered = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
  return "; ".join(f"{reason} ×{len(wheres)} (first at {wheres[0]})" for reason, wheres in ordered)


def read_prompt_file(
    path: str, bad_records: str = "fail", fields: tuple[str, ...] = ()
) -> list[Example]:
  """Reads a .jsonl or .parquet prompt file into Examples.

  Args:
    path: the file.
    bad_records: what a bad record (a line that is not UTF-8 JSON, a value that is not an
      object, no prompt or ground truth, a prompt that is not a string, a missing field of
      `fields`) does: "fail" raises naming the file and the line (jsonl) or record; "skip"
      drops it and logs one summary.
    fields: the task's `file_fields`, copied into each Example's `info`.

  Returns:
    The good records, `index` being each record's position in the file.

  Raises:
    ValueError: an unknown format or `bad_records`, a file with no records, a bad record
      (`bad_records="fail"`), or only bad records.
  """
  check_bad_records(bad_records)
  if not os.path.exists(path):
    raise FileNotFoundError(f"data.path={path!r} does not exist")
  records = _file_records(path)
  if not records:
    raise ValueError(f"data.path={path!r} holds no records")
  examples, skipped = [], []
  for index, (where, record) in enumerate(records):
    try:
      examples.append(_example(record, index, fields))
    except BadRecord as err:
      if bad_records == "fail":
        raise ValueError(
            f"{where}: {err} (data.bad_records='fail'; 'skip' skips bad records)"
        ) from None
      skipped.append((where, err.reason))
  if skipped:
    summary = _skip_summary(skipped)
    if not examples:
      raise ValueError(
          f"data.path={path!r}: all {len(records)} records are bad "
          f"(data.bad_records='skip'): {summary}"
      )
    logging.warning("skipped %d of %d records in %s: %s", len(skipped), len(records), path, summary)
  return examples


def _file_stream(examples: list[Example], seed: int, shuffle: bool) -> grain.MapDataset:
  """An endless stream over `examples`: record `i` is item `i mod n` of its epoch's order,
  a fresh permutation per epoch from `seed` when `shuffle` (Grain's shuffle and repeat)."""
  stream = grain.MapDataset.source(examples)
  if shuffle:
    stream = stream.shuffle(seed=seed)
  return stream.repeat()


def check_prompt_files(data_cfg: DataConfig, task: Any, eval_prompts: int) -> None:
  """Start-up checks of a file source: the first records of `data.path` (and `data.eval_path`)
  carry the fields the task reads, and the eval split holds `eval_prompts` distinct prompts.

  Raises:
    ValueError: naming the file, the missing fields and the task, or the eval split's size.
  """
  fields = tuple(getattr(task, "file_fields", ()))
  for key, path in (("data.path", data_cfg.path), ("data.eval_path", data_cfg.eval_path)):
    if not path:
      continue
    if not os.path.exists(path):
      raise FileNotFoundError(f"{key}={path!r} does not exist")
    for where, record in _file_records(path)[:_CHECKED_RECORDS]:
      if isinstance(record, Mapping):
        lower = {str(k).lower() for k in record}
        missing = [f for f in fields if f not in lower]
        if missing:
          raise ValueError(
              f"{key}={path!r}: task {task.name!r} reads the fields {list(fields)} of every "
              f"record, and {where} lacks {missing} (it has {sorted(record)}); use a file "
              "with those fields, or task.name='math' for prompt and answer files"
          )
  held_out = len(_file_split(data_cfg, "eval", fields))
  if held_out < eval_prompts:
    raise ValueError(
        f"eval.num_prompts={eval_prompts} is more than the {held_out} prompts of the eval split "
        f"of data.path={data_cfg.path!r} (data.eval_path, data.eval_fraction); lower it"
    )


_CHECKED_RECORDS = 8


def _file_split(data_cfg: DataConfig, split: str, fields: tuple[str, ...] = ()) -> list[Example]:
  """The examples of `split`: the eval file, the whole file, or its hash split (never empty)."""
  if split == "eval" and data_cfg.eval_path:
    return read_prompt_file(data_cfg.eval_path, data_cfg.bad_records, fields)
  path = data_cfg.path
  examples = read_prompt_file(path, data_cfg.bad_records, fields)
  if data_cfg.eval_path:
    return examples
  fraction = data_cfg.eval_fraction
  chosen = [ex for ex in examples if in_eval_split(ex.prompt, fraction) == (split == "eval")]
  if not chosen:
    raise ValueError(
        f"data.path={path!r}: the {split!r} split holds no records (all "
        f"{len(examples)} records hash into the other split at data.eval_fraction="
        f"{fraction}); set data.eval_path or change data.eval_fraction"
    )
  return chosen


class PromptPipeline:
  """Batches of left-padded prompt tokens. `next()` gives a dict:

  prompt_tokens `[B, max_prompt_len]` int32 (left-padded with the tokenizer's pad id),
  prompt_lengths `[B]` int32, examples: list of B `Example`s (for the verifier).
  """

  def __init__(self, dataset: grain.IterDataset):
    self._dataset = dataset
    self._iterator = iter(dataset)

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    return next(self._iterator)

  def get_state(self) -> dict:
    return self._iterator.get_state()

  def set_state(self, state: dict) -> None:
    self._iterator.set_state(state)


def encode_prompt(example: Example, tokenizer, max_prompt_len: int) -> tuple[list[int], Example]:
  """A prompt's token ids (chat template, bos) and its example; too long is an error naming it."""
  ids = tokenizer.encode(tokenizer.format_prompt(example.prompt))
  if tokenizer.bos_id is not None and (not ids or ids[0] != tokenizer.bos_id):
    ids = [tokenizer.bos_id] + ids
  if len(ids) > max_prompt_len:
    raise ValueError(
        f"prompt of example {example.index} has {len(ids)} tokens > "
        f"data.max_prompt_len={max_prompt_len}: {example.prompt[:80]!r}"
    )
  return ids, example


def collate_prompts(items: list[tuple[list[int], Example]], width: int, pad_id: int) -> dict:
  """`encode_prompt` outputs as a left-padded batch (the `PromptPipeline` batch dict)."""
  tokens = np.full((len(items), width), pad_id, np.int32)
  lengths = np.zeros((len(items),), np.int32)
  for row, (ids, _) in enumerate(items):
    tokens[row, width - len(ids) :] = ids
    lengths[row] = len(ids)
  return {
      "prompt_tokens": tokens,
      "prompt_lengths": lengths,
      "examples": [example for _, example in items],
  }


def host_record(position: int, batch_size: int, shard_index: int, shard_count: int) -> int:
  """The stream record at `position` of host `shard_index`'s stream (see the module docstring)."""
  batch, row = divmod(position, batch_size)
  return (batch * shard_count + shard_index) * batch_size + row


def make_prompt_pipeline(
    data_cfg: DataConfig,
    tokenizer,
    *,
    batch_size: int,
    seed: int,
    split: str,
    task: Any = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> PromptPipeline:
  """The prompt pipeline for one host.

  Args:
    data_cfg: the data section (see the module docstring).
    tokenizer: encodes prompts (`format_prompt` applies a chat template where there is one).
    batch_size: prompts per batch on this host.
    seed: stream seed (the same seed gives the same stream).
    split: "train" or "eval".
    task: the task: its generator for source="task" (required), the fields its verifier reads
      (`Task.file_fields`) for source="file".
    shard_index, shard_count: this host's block of each global batch of
      `shard_count * batch_size` records; default `jax.process_index()/count()`.
  """
  check_split(split)
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
  if data_cfg.source == "task":
    if not isinstance(task, tasks_lib.GeneratedTask):
      raise ValueError(f"data.source='task' needs a generated task; got {task!r}")
    draw = functools.partial(task.example, seed, split)
  else:
    fields = tuple(getattr(task, "file_fields", ()))
    examples = _file_split(data_cfg, split, fields)
    draw = _file_stream(examples, seed, shuffle=split == "train").__getitem__
  width = data_cfg.max_prompt_len
  record = functools.partial(
      host_record, batch_size=batch_size, shard_index=shard_index, shard_count=shard_count
  )
  dataset = (
      grain.MapDataset.range(_STREAM_LENGTH // shard_count)
      .map(lambda i: encode_prompt(draw(record(int(i))), tokenizer, width))
      .to_iter_dataset()
      .batch(batch_size, batch_fn=lambda items: collate_prompts(items, width, tokenizer.pad_id))
  )
  return PromptPipeline(dataset)
