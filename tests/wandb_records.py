"""Reads a W&B run's `run-*.wandb` file (LevelDB-log framing of protobuf `Record`s), so tests can
check what an offline run logged without a W&B server."""

import struct

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_HEADER = 7  # ":W&B", a 2-byte magic and a version byte; each record: crc32, length, type
_FULL, _LAST = 1, 4


def records(path):
  """Yields the `Record` protobufs of a `.wandb` file in order."""
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", f"{path} is not a W&B run file"
  offset, parts = _HEADER, []
  while offset + _HEADER <= len(data):
    room = _BLOCK - offset % _BLOCK
    if room < _HEADER:  # a block's tail too short for a record header is padding
      offset += room
      continue
    _, length, kind = struct.unpack("<IHB", data[offset : offset + _HEADER])
    parts.append(data[offset + _HEADER : offset + _HEADER + length])
    offset += _HEADER + length
    if kind in (_FULL, _LAST):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(b"".join(parts))
      parts = []
      yield record


def history(path):
  """`{step: {key: JSON text}}` of the history rows in a `.wandb` file."""
  rows = {}
  for record in records(path):
    if record.WhichOneof("record_type") == "history":
      items = {
          item.key or "/".join(item.nested_key): item.value_json for item in record.history.item
      }
      rows[int(items.pop("_step"))] = items
  return rows
