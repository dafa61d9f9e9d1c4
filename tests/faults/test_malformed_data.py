"""Malformed prompt files: data.bad_records="fail" names the file and line, "skip" counts."""

import json
import string

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import quickstart, qwen25_7b
from entropix_rl import data
from entropix_rl.tasks.base import in_eval_split
from entropix_rl.tokenizer import CharTokenizer

GOOD = {"prompt": "What is 1 + 1?", "answer": "2"}


def _jsonl_lines() -> list[str]:
  """Eight non-blank lines (two blank lines among them); records 1, 2, 4, 5, 6 and 7 are bad."""
  return [
      json.dumps(GOOD),  # line 1, record 0: good
      "{not json",  # line 2, record 1
      "[1, 2]",  # line 3, record 2
      "",  # line 4: blank
      json.dumps({"prompt": "Half of 4?", "answer": 2}),  # line 5, record 3: good
      json.dumps({"question": "no answer"}),  # line 6, record 4
      json.dumps({"answer": "no prompt"}),  # line 7, record 5
      "   ",  # line 8: blank
      json.dumps({"prompt": 17, "answer": "3"}),  # line 9, record 6
      json.dumps(
          {"prompt": [{"role": "user", "content": ["x"]}], "answer": "1"}  # line 10, record 7
      ),
  ]


def _write(path, lines) -> str:
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_jsonl_fail_names_file_and_line(tmp_path):
  path = _write(tmp_path / "bad.jsonl", _jsonl_lines())
  with pytest.raises(
      ValueError,
      match=r"bad\.jsonl line 2 \(record 1\): invalid JSON.*" r"data\.bad_records='fail'",
  ):
    data.read_prompt_file(path)
  lines = _jsonl_lines()
  for line_number, message in {
      3: "not a JSON object",
      6: "no ground truth",
      7: "no prompt",
      9: "prompt is not a string: prompt is int",
      10: "prompt is not a string: prompt.user.content is list",
  }.items():
    # Blank lines count as lines, not as records.
    single = _write(tmp_path / f"line{line_number}.jsonl", [lines[0], "", lines[line_number - 1]])
    with pytest.raises(
        ValueError, match=rf"line{line_number}\.jsonl line 3 \(record 1\): " rf"{message}"
    ):
      data.read_prompt_file(single)


def test_jsonl_skip_counts_and_logs(tmp_path, monkeypatch):
  path = _write(tmp_path / "bad.jsonl", _jsonl_lines())
  logged = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *args: logged.append(msg % args))
  examples = data.read_prompt_file(path, "skip")
  assert [(ex.prompt, ex.answer, ex.index) for ex in examples] == [
      ("What is 1 + 1?", "2", 0),
      ("Half of 4?", "2", 3),
  ]
  assert len(logged) == 1
  summary = logged[0]
  assert summary.startswith(f"skipped 6 of 8 records in {path}: ")
  assert "prompt is not a string ×2 (first at " in summary
  assert f"invalid JSON ×1 (first at {path} line 2 (record 1))" in summary
  for reason in ("not a JSON object ×1", "no ground truth ×1", "no prompt ×1"):
    assert reason in summary


def test_jsonl_not_utf8_and_deep_nesting(tmp_path):
  path = tmp_path / "bytes.jsonl"
  path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe{\n" + b"[" * 100_000 + b"\n")
  with pytest.raises(ValueError, match=r"bytes\.jsonl line 2 \(record 1\): not UTF-8"):
    data.read_prompt_file(str(path))
  assert len(data.read_prompt_file(str(path), "skip")) == 1


def test_parquet_malformed_rows_both_modes(tmp_path):
  path = str(tmp_path / "bad.parquet")
  pq.write_table(
      pa.Table.from_pylist(
          [
              {"problem": "Compute 2+3.", "solution": "so \\boxed{5}", "answer": None},
              {"problem": None, "solution": None, "answer": "4"},
              {"problem": "No answer.", "solution": "five", "answer": None},
              {"problem": "   ", "solution": None, "answer": "1"},
              {"problem": "Half of 1?", "solution": None, "answer": "1/2"},
          ]
      ),
      path,
  )
  with pytest.raises(ValueError, match=r"bad\.parquet record 1: no prompt"):
    data.read_prompt_file(path)
  examples = data.read_prompt_file(path, "skip")
  assert [(ex.prompt, ex.answer, ex.index) for ex in examples] == [
      ("Compute 2+3.", "5", 0),
      ("Half of 1?", "1/2", 4),
  ]
  chat = str(tmp_path / "chat.parquet")
  pq.write_table(
      pa.Table.from_pylist(
          [
              {"prompt": [{"role": "system", "content": "hi"}], "answer": "1"},
              {"prompt": [{"role": "user", "content": "ok"}], "answer": "1"},
          ]
      ),
      chat,
  )
  with pytest.raises(ValueError, match=r"chat\.parquet record 0: no prompt: the chat messages"):
    data.read_prompt_file(chat)
  assert [ex.prompt for ex in data.read_prompt_file(chat, "skip")] == ["ok"]


def test_every_record_bad_is_an_error_in_skip_mode(tmp_path):
  path = _write(tmp_path / "all_bad.jsonl", ["{", "[]", json.dumps({"prompt": "p"})])
  with pytest.raises(ValueError, match=r"data\.path='.*all_bad\.jsonl': all 3 records are bad"):
    data.read_prompt_file(path, "skip")


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_empty_file_names_data_path(tmp_path, mode):
  path = _write(tmp_path / "blank.jsonl", ["", "  ", "\t"])
  with pytest.raises(ValueError, match=r"data\.path='.*blank\.jsonl' holds no records"):
    data.read_prompt_file(path, mode)
  empty = str(tmp_path / "empty.parquet")
  pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), empty)
  with pytest.raises(ValueError, match=r"data\.path='.*empty\.parquet' holds no records"):
    data.read_prompt_file(empty, mode)


def test_empty_split_names_data_path(tmp_path):
  path = _write(tmp_path / "one.jsonl", [json.dumps({"prompt": "only", "answer": "1"})])
  split = "train" if in_eval_split("only", 0.5) else "eval"  # the split "only" is not in
  with pytest.raises(
      ValueError,
      match=rf"data\.path='.*one\.jsonl': the '{split}' split holds "
      r"no records.*data\.eval_fraction=0\.5",
  ):
    data.make_prompt_pipeline(
        data.DataConfig(source="file", path=path, eval_fraction=0.5, max_prompt_len=64),
        CharTokenizer(string.printable),
        batch_size=1,
        seed=0,
        split=split,
        shard_index=0,
        shard_count=1,
    )


def test_bad_records_is_validated_and_threaded(tmp_path):
  path = _write(tmp_path / "bad.jsonl", _jsonl_lines())
  cfg = {"source": "file", "path": path, "eval_path": path, "max_prompt_len": 64}
  make = lambda extra: data.make_prompt_pipeline(
      data.DataConfig(**cfg, **extra),
      CharTokenizer(string.printable),
      batch_size=2,
      seed=0,
      split="train",
      shard_index=0,
      shard_count=1,
  )
  with pytest.raises(ValueError, match=r"data\.bad_records='ignore'; allowed: \('fail', 'skip'\)"):
    make({"bad_records": "ignore"})
  with pytest.raises(ValueError, match=r"data\.bad_records='ignore'; allowed"):
    data.read_prompt_file(path, "ignore")
  with pytest.raises(ValueError, match=r"line 2 \(record 1\): invalid JSON"):
    make({})
  batch = next(make({"bad_records": "skip"}))
  assert sorted(ex.index for ex in batch["examples"]) == [0, 3]
  assert quickstart.get_config().data.bad_records == "fail"
  assert qwen25_7b.get_config("grpo").data.bad_records == "fail"


def test_bad_records_set_from_the_command_line():
  argv = ["prog", f"--config={quickstart.__file__}", "--config.data.bad_records=skip"]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
      "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  assert holder.value.data.bad_records == "skip"
