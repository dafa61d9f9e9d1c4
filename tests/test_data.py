"""Prompt pipelines: shapes, padding, determinism, resumption, sharding and file sources."""

import json
import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from entropix_rl import data, tasks
from entropix_rl.tasks.base import in_eval_split
from entropix_rl.tokenizer import CharTokenizer

TASK = tasks.Decomposition()
TASK_CFG = data.DataConfig(source="task", max_prompt_len=8)
FILE_TOKENIZER = CharTokenizer(string.printable)


def _task_pipeline(
    seed=0, split="train", batch_size=4, shard_index=0, shard_count=1, cfg=TASK_CFG, task=TASK
):
  return data.make_prompt_pipeline(
      cfg,
      CharTokenizer(task.alphabet),
      batch_size=batch_size,
      seed=seed,
      split=split,
      task=task,
      shard_index=shard_index,
      shard_count=shard_count,
  )


def _take(pipeline, num_batches):
  return [next(pipeline) for _ in range(num_batches)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["prompt_tokens"], y["prompt_tokens"])
    np.testing.assert_array_equal(x["prompt_lengths"], y["prompt_lengths"])
    assert x["examples"] == y["examples"]


def _indices(batches):
  return [ex.index for batch in batches for ex in batch["examples"]]


def _prompts(batches):
  return [ex.prompt for batch in batches for ex in batch["examples"]]


# ---------------------------------------------------------------- task source


def test_task_batch_shapes_and_padding():
  tokenizer = CharTokenizer(TASK.alphabet)
  width, batch_size = TASK_CFG.max_prompt_len, 5
  batch = next(_task_pipeline(batch_size=batch_size))
  tokens, lengths, examples = batch["prompt_tokens"], batch["prompt_lengths"], batch["examples"]
  assert tokens.shape == (batch_size, width) and tokens.dtype == np.int32
  assert lengths.shape == (batch_size,) and lengths.dtype == np.int32
  assert len(examples) == batch_size
  for row, length, ex in zip(tokens, lengths, examples):
    ids = [tokenizer.bos_id] + tokenizer.encode(ex.prompt)
    assert length == len(ids)
    assert list(row[width - length :]) == ids  # left-padded, bos first
    assert row[width - length] == tokenizer.bos_id
    assert (row[: width - length] == tokenizer.pad_id).all()
    assert tokenizer.decode(row) == ex.prompt
  assert [ex.index for ex in examples] == list(range(batch_size))
  assert examples == [TASK.example(0, "train", i) for i in range(batch_size)]


def test_task_pipeline_is_deterministic():
  _assert_batches_equal(_take(_task_pipeline(seed=3), 4), _take(_task_pipeline(seed=3), 4))
  assert _prompts(_take(_task_pipeline(seed=3), 4)) != _prompts(_take(_task_pipeline(seed=4), 4))
  evals = _take(_task_pipeline(seed=3, split="eval"), 4)
  assert all(TASK.split_of(ex) == "eval" for batch in evals for ex in batch["examples"])


def test_task_pipeline_resumes_from_state():
  pipeline = _task_pipeline(seed=1)
  _take(pipeline, 3)
  state = pipeline.get_state()
  json.dumps(state)  # small and serialisable, for checkpoints
  expected = _take(pipeline, 3)
  fresh = _task_pipeline(seed=1)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 3), expected)
  assert _indices(expected) == list(range(12, 24))


def test_task_pipeline_shards_are_blocks_of_the_global_batches():
  batch_size, num_batches, shard_count = 3, 4, 3
  full = _take(_task_pipeline(batch_size=batch_size * shard_count), num_batches)
  shards = [
      _take(
          _task_pipeline(batch_size=batch_size, shard_index=k, shard_count=shard_count), num_batches
      )
      for k in range(shard_count)
  ]
  for step in range(num_batches):  # the hosts' batches, in host order, are the global batch
    assert [i for shard in shards for i in _indices([shard[step]])] == _indices([full[step]])
  assert _indices(shards[1][:2]) == [3, 4, 5, 12, 13, 14]
  union = [i for shard in shards for i in _indices(shard)]
  assert sorted(union) == list(range(num_batches * shard_count * batch_size))
  with pytest.raises(ValueError, match="shard_index=3"):
    _task_pipeline(shard_index=3, shard_count=3)


def test_task_pipeline_errors():
  with pytest.raises(ValueError, match="data.max_prompt_len"):
    next(_task_pipeline(cfg=data.DataConfig(source="task", max_prompt_len=3)))
  with pytest.raises(ValueError, match="allowed") as err:
    _task_pipeline(cfg=data.DataConfig(source="hub", max_prompt_len=8))
  assert "task" in str(err.value) and "file" in str(err.value)
  with pytest.raises(ValueError, match="split"):
    _task_pipeline(split="test")
  with pytest.raises(ValueError, match="batch_size"):
    _task_pipeline(batch_size=0)
  with pytest.raises(ValueError, match="generated task"):
    data.make_prompt_pipeline(
        TASK_CFG,
        CharTokenizer(TASK.alphabet),
        batch_size=2,
        seed=0,
        split="train",
        task=tasks.MathTask(),
    )
  with pytest.raises(ValueError, match="generated task"):
    data.make_prompt_pipeline(
        TASK_CFG, CharTokenizer(TASK.alphabet), batch_size=2, seed=0, split="train"
    )


def test_task_pipeline_default_shard_is_this_process():
  pipeline = data.make_prompt_pipeline(
      TASK_CFG, CharTokenizer(TASK.alphabet), batch_size=2, seed=0, split="train", task=TASK
  )
  assert _indices(_take(pipeline, 2)) == [0, 1, 2, 3]


# ---------------------------------------------------------------- file sources


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _dapo_records(count):
  return [
      {
          "data_source": "dapo",
          "prompt": [
              {"role": "system", "content": "be brief"},
              {"role": "user", "content": f"What is {i} + 3?"},
          ],
          "reward_model": {"ground_truth": str(i + 3), "style": "rule"},
      }
      for i in range(count)
  ]


def _file_pipeline(
    cfg, split="train", seed=0, batch_size=4, shard_index=0, shard_count=1, tokenizer=FILE_TOKENIZER
):
  config = data.DataConfig(**{"source": "file", "max_prompt_len": 64, **cfg})
  return data.make_prompt_pipeline(
      config,
      tokenizer,
      batch_size=batch_size,
      seed=seed,
      split=split,
      shard_index=shard_index,
      shard_count=shard_count,
  )


def test_read_dapo_jsonl(tmp_path):
  path = _write_jsonl(tmp_path / "dapo.jsonl", _dapo_records(3))
  examples = data.read_prompt_file(path)
  assert [ex.prompt for ex in examples] == [f"What is {i} + 3?" for i in range(3)]
  assert [ex.answer for ex in examples] == ["3", "4", "5"]
  assert [ex.index for ex in examples] == [0, 1, 2]


def test_read_math_parquet(tmp_path):
  path = str(tmp_path / "math.parquet")
  pq.write_table(
      pa.Table.from_pylist(
          [
              {"problem": "Compute 2+3.", "solution": r"We add: $2+3=\boxed{5}$."},
              {"problem": "Half of 1?", "solution": r"First \boxed{2}, no: \boxed{\frac{1}{2}}"},
          ]
      ),
      path,
  )
  examples = data.read_prompt_file(path)
  assert [ex.prompt for ex in examples] == ["Compute 2+3.", "Half of 1?"]
  assert [ex.answer for ex in examples] == ["5", r"\frac{1}{2}"]


def test_read_other_layouts(tmp_path):
  path = _write_jsonl(
      tmp_path / "qa.jsonl",
      [
          {"question": "q0", "answer": 7},
          {"prompt": "p1", "ground_truth": "g1"},
          {
              "prompt": [
                  {"role": "user", "content": "first"},
                  {"role": "assistant", "content": "x"},
                  {"role": "user", "content": "last"},
              ],
              "answer": "a2",
          },
      ],
  )
  examples = data.read_prompt_file(path)
  assert [(ex.prompt, ex.answer) for ex in examples] == [("q0", "7"), ("p1", "g1"), ("last", "a2")]
  # A DAPO-layout parquet (chat messages stored as a list of structs) reads the same.
  parquet = str(tmp_path / "dapo.parquet")
  pq.write_table(pa.Table.from_pylist(_dapo_records(2)), parquet)
  assert [(ex.prompt, ex.answer) for ex in data.read_prompt_file(parquet)] == [
      ("What is 0 + 3?", "3"),
      ("What is 1 + 3?", "4"),
  ]


def test_file_pipeline_batches(tmp_path):
  path = _write_jsonl(tmp_path / "dapo.jsonl", _dapo_records(10))
  # eval_path set: the train split is the whole file.
  batch = next(_file_pipeline({"path": path, "eval_path": path}, batch_size=3))
  assert batch["prompt_tokens"].shape == (3, 64)
  for row, length, ex in zip(batch["prompt_tokens"], batch["prompt_lengths"], batch["examples"]):
    assert row[64 - length] == FILE_TOKENIZER.bos_id
    assert FILE_TOKENIZER.decode(row) == ex.prompt
    assert ex.answer == str(int(ex.prompt.split()[2]) + 3)
  with pytest.raises(ValueError, match="data.max_prompt_len"):
    next(_file_pipeline({"path": path, "max_prompt_len": 10}))


def test_file_eval_split_is_disjoint(tmp_path):
  path = _write_jsonl(tmp_path / "dapo.jsonl", _dapo_records(200))
  cfg = {"path": path, "eval_fraction": 0.25}
  train = set(_prompts(_take(_file_pipeline(cfg, batch_size=10), 20)))
  evals = set(_prompts(_take(_file_pipeline(cfg, split="eval", batch_size=10), 20)))
  expected_eval = {
      f"What is {i} + 3?" for i in range(200) if in_eval_split(f"What is {i} + 3?", 0.25)
  }
  assert 20 < len(expected_eval) < 80
  assert evals == expected_eval
  assert train == {f"What is {i} + 3?" for i in range(200)} - expected_eval
  assert not train & evals
  # The eval split is read in file order, without shuffling.
  eval_stream = _prompts(_take(_file_pipeline(cfg, split="eval", batch_size=1), len(expected_eval)))
  assert eval_stream == [
      f"What is {i} + 3?" for i in range(200) if in_eval_split(f"What is {i} + 3?", 0.25)
  ]
  # A separate eval file replaces the hash split.
  eval_file = _write_jsonl(tmp_path / "held_out.jsonl", [{"prompt": "held out", "answer": "1"}])
  cfg = {"path": path, "eval_path": eval_file}
  assert _prompts(_take(_file_pipeline(cfg, split="eval", batch_size=2), 1)) == ["held out"] * 2
  assert len(set(_prompts(_take(_file_pipeline(cfg, batch_size=20), 10)))) == 200


def test_file_train_reshuffles_each_epoch(tmp_path):
  num_records = 12
  path = _write_jsonl(tmp_path / "dapo.jsonl", _dapo_records(num_records))
  cfg = {"path": path, "eval_path": path}  # every record in train
  stream = _prompts(_take(_file_pipeline(cfg, batch_size=4, seed=5), 9))  # 3 epochs
  epochs = [stream[k * num_records : (k + 1) * num_records] for k in range(3)]
  everything = sorted(f"What is {i} + 3?" for i in range(num_records))
  for epoch in epochs:
    assert sorted(epoch) == everything  # each record exactly once per epoch
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
  assert epochs[0] != sorted(epochs[0], key=lambda p: int(p.split()[2]))
  assert stream == _prompts(_take(_file_pipeline(cfg, batch_size=4, seed=5), 9))
  assert stream != _prompts(_take(_file_pipeline(cfg, batch_size=4, seed=6), 9))


def test_file_pipeline_resumes_and_shards(tmp_path):
  path = _write_jsonl(tmp_path / "dapo.jsonl", _dapo_records(10))
  cfg = {"path": path, "eval_path": path}
  pipeline = _file_pipeline(cfg, batch_size=3, seed=2)
  _take(pipeline, 4)
  state = pipeline.get_state()
  expected = _take(pipeline, 4)
  fresh = _file_pipeline(cfg, batch_size=3, seed=2)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 4), expected)
  full = _prompts(_take(_file_pipeline(cfg, batch_size=2, seed=2), 10))
  shards = [
      _prompts(_take(_file_pipeline(cfg, batch_size=2, seed=2, shard_index=k, shard_count=2), 5))
      for k in range(2)
  ]
  for k, shard in enumerate(shards):  # host k reads the k-th 2 of each global batch of 4
    assert shard == [p for j in range(5) for p in full[4 * j + 2 * k : 4 * j + 2 * k + 2]]


def test_file_errors_name_file_and_record(tmp_path):
  missing = str(tmp_path / "nope.jsonl")
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    data.read_prompt_file(missing)
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    _file_pipeline({"path": missing})
  csv = tmp_path / "prompts.csv"
  csv.write_text("prompt,answer\n1,2\n")
  with pytest.raises(ValueError, match=r"prompts\.csv.*\.jsonl"):
    data.read_prompt_file(str(csv))
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="empty.jsonl.*no records"):
    data.read_prompt_file(str(empty))

  records = _dapo_records(3)
  del records[1]["prompt"]
  path = _write_jsonl(tmp_path / "no_prompt.jsonl", records)
  with pytest.raises(ValueError, match=r"no_prompt\.jsonl line 2 \(record 1\): no prompt"):
    data.read_prompt_file(path)

  records = _dapo_records(3)
  del records[2]["reward_model"]
  path = _write_jsonl(tmp_path / "no_answer.jsonl", records)
  with pytest.raises(ValueError, match=r"no_answer\.jsonl line 3 \(record 2\): no ground truth"):
    data.read_prompt_file(path)

  no_box = str(tmp_path / "no_box.parquet")
  pq.write_table(pa.Table.from_pylist([{"problem": "p", "solution": "five"}]), no_box)
  with pytest.raises(ValueError, match=r"no_box\.parquet record 0: no ground truth"):
    data.read_prompt_file(no_box)

  bad_json = tmp_path / "bad.jsonl"
  bad_json.write_text(json.dumps({"prompt": "a", "answer": "1"}) + "\n{not json\n")
  with pytest.raises(ValueError, match=r"bad\.jsonl line 2"):
    data.read_prompt_file(str(bad_json))

  not_object = tmp_path / "list.jsonl"
  not_object.write_text('{"prompt": "a", "answer": "1"}\n[1, 2]\n')
  with pytest.raises(ValueError, match=r"list\.jsonl line 2 \(record 1\): not a JSON object"):
    data.read_prompt_file(str(not_object))


def test_file_split_with_no_records(tmp_path):
  path = _write_jsonl(tmp_path / "one.jsonl", [{"prompt": "only", "answer": "1"}])
  split = "eval" if in_eval_split("only", 0.5) else "train"
  other = {"train": "eval", "eval": "train"}[split]
  assert _prompts(
      _take(_file_pipeline({"path": path, "eval_fraction": 0.5}, split=split, batch_size=2), 1)
  ) == ["only", "only"]
  with pytest.raises(ValueError, match="no records"):
    _file_pipeline({"path": path, "eval_fraction": 0.5}, split=other)
