"""Tokenizers: a wrapper around a local Hugging Face tokenizer, and a character tokenizer.

Both expose the same small surface the rest of the code uses: `encode(text) -> list[int]`,
`decode(ids) -> str`, `vocab_size`, `pad_id`, `bos_id`, `eos_id` and `stop_ids`, plus
`format_prompt(text)` which applies a chat template where the tokenizer has one.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
from typing import Protocol

from etils import epath

from entropix_rl import paths


class Tokenizer(Protocol):
  """What samplers, tasks and pipelines need from a tokenizer."""

  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int
  stop_ids: tuple[int, ...]

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...

  def format_prompt(self, text: str) -> str:
    ...


class CharTokenizer:
  """One token per character of a fixed alphabet, plus `<pad>`, `<bos>` and `<eos>`.

  Ids: 0 = pad, 1 = bos, 2 = eos, then the alphabet in order. Used by the procedurally
  generated tasks, where a tiny vocabulary keeps the model tiny.
  """

  PAD, BOS, EOS = 0, 1, 2
  _SPECIALS = ("<pad>", "<bos>", "<eos>")

  def __init__(self, alphabet: str):
    if len(set(alphabet)) != len(alphabet):
      raise ValueError(f"CharTokenizer alphabet has repeated characters: {alphabet!r}")
    self.alphabet = alphabet
    self._to_id = {c: i + len(self._SPECIALS) for i, c in enumerate(alphabet)}
    self.vocab_size = len(alphabet) + len(self._SPECIALS)
    self.pad_id, self.bos_id, self.eos_id = self.PAD, self.BOS, self.EOS
    self.stop_ids = (self.EOS,)

  def encode(self, text: str) -> list[int]:
    """Returns the ids of `text`; raises ValueError naming any character not in the alphabet."""
    unknown = sorted(set(text) - set(self._to_id))
    if unknown:
      raise ValueError(f"characters {unknown} are not in the tokenizer alphabet {self.alphabet!r}")
    return [self._to_id[c] for c in text]

  def decode(self, ids: Sequence[int]) -> str:
    """Decodes ids, dropping special tokens and stopping at the first `<eos>`."""
    out = []
    for token in ids:
      i = int(token)
      if i == self.EOS:
        break
      if i >= len(self._SPECIALS):
        out.append(self.alphabet[i - len(self._SPECIALS)])
    return "".join(out)

  def format_prompt(self, text: str) -> str:
    return text

  def save_pretrained(self, path: epath.PathLike) -> None:
    """Writes `char_tokenizer.json` (the alphabet and the special ids) to `path`, so an exported
    model carries its vocabulary (`load` reads it back)."""
    spec = {
        "kind": "char",
        "alphabet": self.alphabet,
        "specials": list(self._SPECIALS),
        "pad_id": self.pad_id,
        "bos_id": self.bos_id,
        "eos_id": self.eos_id,
    }
    target = epath.Path(path)
    target.mkdir(parents=True, exist_ok=True)
    (target / CHAR_TOKENIZER_FILE).write_text(json.dumps(spec, indent=2))


CHAR_TOKENIZER_FILE = "char_tokenizer.json"


def load(path: epath.PathLike) -> CharTokenizer | HFTokenizer:
  """The tokenizer saved in the directory `path`: a `CharTokenizer` when it holds
  `char_tokenizer.json` (an exported character-tokenizer run), else a Hugging Face one."""
  spec_path = epath.Path(path) / CHAR_TOKENIZER_FILE
  if spec_path.exists():
    return CharTokenizer(json.loads(spec_path.read_text())["alphabet"])
  return HFTokenizer(os.fspath(path))


class HFTokenizer:
  """A local Hugging Face tokenizer directory (no hub access).

  `format_prompt` applies the tokenizer's chat template (a single user turn, with the
  generation prompt) when the tokenizer has one, and returns the text unchanged otherwise.
  `stop_ids` holds the eos id plus any ids listed under `eos_token_id` in a
  `generation_config.json` beside the tokenizer.
  """

  def __init__(self, path: str):
    from transformers import AutoTokenizer  # heavy import, only when used

    if not os.path.isdir(path):
      raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
    self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.vocab_size = len(self._tok)
    if self._tok.eos_token_id is None:
      raise ValueError(f"tokenizer at {path!r} defines no eos token")
    self.eos_id = int(self._tok.eos_token_id)
    self.bos_id = None if self._tok.bos_token_id is None else int(self._tok.bos_token_id)
    self.pad_id = int(self._tok.pad_token_id) if self._tok.pad_token_id is not None else self.eos_id
    stops = {self.eos_id}
    gen_path = os.path.join(path, "generation_config.json")
    if os.path.exists(gen_path):
      with open(gen_path) as f:
        eos = json.load(f).get("eos_token_id")
      stops.update([eos] if isinstance(eos, int) else (eos or []))
    self.stop_ids = tuple(sorted(stops))

  def save_pretrained(self, path: epath.PathLike) -> None:
    """Writes the tokenizer files to `path` (local, or gs:// through a local copy)."""
    with paths.writable_directory(path) as local:
      self._tok.save_pretrained(local)

  @property
  def has_chat_template(self) -> bool:
    return bool(getattr(self._tok, "chat_template", None))

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False))

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def format_prompt(self, text: str) -> str:
    if not self.has_chat_template:
      return text
    return self._tok.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
