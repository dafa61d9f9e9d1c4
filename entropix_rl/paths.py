"""Paths of run directories: local or on object storage (`gs://`, `s3://`), through `etils.epath`.

Every file the trainer writes (metrics, run_info, checkpoints, the SFT warm start, DONE, plots)
goes through `epath.Path`, so a `gs://` workdir needs no gcsfuse mount. Libraries that only read
local files (safetensors' `safe_open`) get a local copy from `local_directory`.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
import posixpath
import tempfile

from etils import epath


def is_remote(path: epath.PathLike) -> bool:
  """Whether `path` names object storage (`scheme://...`) rather than the local file system."""
  return "://" in os.fspath(path)


def as_path(path: epath.PathLike) -> epath.Path:
  """`path` as an `epath.Path`; local paths are made absolute, remote ones kept as written."""
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.fspath(path)))


def resolve(base: epath.PathLike, path: str) -> epath.Path:
  """`path` as written when it is absolute or remote, else relative to `base`, `..` allowed
  (`resolve("/runs/law/grpo", "../sft_seed0")` is `/runs/law/sft_seed0`, and the same under
  `gs://`); "" is `base` itself."""
  if not path:
    return as_path(base)
  if is_remote(path) or os.path.isabs(path):
    return as_path(path)
  base = os.fspath(base)
  if is_remote(base):
    scheme, rest = base.split("://", 1)
    return epath.Path(f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}")
  return epath.Path(os.path.normpath(os.path.join(os.path.abspath(base), path)))


def append_text(path: epath.Path, text: str) -> None:
  """Appends `text` to `path`. Object stores cannot append, so there the file is rewritten."""
  if not is_remote(path):
    with path.open("a") as f:
      f.write(text)
    return
  old = path.read_text() if path.exists() else ""
  path.write_text(old + text)


@contextlib.contextmanager
def local_directory(path: epath.PathLike) -> Iterator[str]:
  """Yields a local directory holding the files of `path`: itself when local, else a temporary
  copy (removed on exit)."""
  if not is_remote(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory(prefix="entropix_rl_") as local:
    for item in epath.Path(path).iterdir():
      if item.is_file():
        item.copy(epath.Path(local) / item.name)
    yield local


@contextlib.contextmanager
def writable_directory(path: epath.PathLike) -> Iterator[str]:
  """Yields a local directory whose files end up in `path`: `path` itself when local, else a
  temporary directory copied to `path` on exit (for writers that only write local files)."""
  if not is_remote(path):
    os.makedirs(os.fspath(path), exist_ok=True)
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory(prefix="entropix_rl_") as local:
    yield local
    target = epath.Path(path)
    target.mkdir(parents=True, exist_ok=True)
    for item in epath.Path(local).iterdir():
      if item.is_file():
        item.copy(target / item.name, overwrite=True)
