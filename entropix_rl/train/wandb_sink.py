"""Weights & Biases as a metric sink (`logging.wandb`), online or offline.

The run id is kept in `workdir/wandb_run_id`, so a resumed experiment continues the same W&B
run (`resume="allow"`). W&B cannot delete history, and it drops steps that are not above the
last one it holds; since a resume restores the exact state of the checkpoint, the steps it
computes again carry the values W&B already has, so nothing is lost. Offline runs are written
under `{dir}/wandb/offline-run-*` and uploaded later with `wandb sync`.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import os
import secrets
import tempfile
from typing import TYPE_CHECKING, Any

from absl import logging
from etils import epath

from entropix_rl import paths
from entropix_rl.checks import check_choice

if TYPE_CHECKING:
  from entropix_rl.train.metrics import Table

WANDB_MODES = ("online", "offline")
RUN_ID_FILE = "wandb_run_id"


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """`config.logging.wandb`.

  Attributes:
    enabled: log to Weights & Biases as well (needs `pip install wandb`).
    mode: "online" (needs a login: `wandb login` or WANDB_API_KEY) or "offline" (no network;
      upload later with `wandb sync DIR/wandb/offline-run-*`).
    project: W&B project.
    entity: W&B team or user ("" = your default entity).
    name: run name ("" = the workdir's name).
    group: run group ("" = none), e.g. one sweep.
    dir: local directory for W&B's files ("" = the workdir, or the system temporary directory
      when the workdir is on object storage).
  """

  enabled: bool = False
  mode: str = "online"
  project: str = "entropix_rl"
  entity: str = ""
  name: str = ""
  group: str = ""
  dir: str = ""

  def __post_init__(self):
    check_choice("logging.wandb.mode", self.mode, WANDB_MODES)
    if self.enabled and not self.project:
      raise ValueError(
          "logging.wandb.project must name a W&B project when " "logging.wandb.enabled=True"
      )


def _import_wandb() -> Any:
  try:
    import wandb
  except ImportError as err:
    raise ImportError(
        "logging.wandb.enabled=True needs the wandb package: " "pip install 'entropix_rl[wandb]'"
    ) from err
  return wandb


class WandbSink:
  """Logs scalars with `step=` and tables as `wandb.Table`s; the run starts at the first write."""

  def __init__(self, cfg: WandbConfig, workdir: epath.Path, run_config: Mapping[str, Any]):
    self.cfg = cfg
    self._wandb = _import_wandb()
    self._workdir = workdir
    self._run_config = dict(run_config)
    self._run = None
    self._resumed_at: int | None = None

  def _local_dir(self) -> str:
    if self.cfg.dir:
      return self.cfg.dir
    return tempfile.gettempdir() if paths.is_remote(self._workdir) else os.fspath(self._workdir)

  def _run_id(self) -> str:
    path = self._workdir / RUN_ID_FILE
    if path.exists():
      return path.read_text().strip()
    run_id = secrets.token_hex(6)
    path.write_text(run_id)
    return run_id

  def _started(self) -> Any:
    if self._run is None:
      directory = self._local_dir()
      os.makedirs(directory, exist_ok=True)
      self._run = self._wandb.init(
          project=self.cfg.project,
          entity=self.cfg.entity or None,
          name=self.cfg.name or self._workdir.name,
          group=self.cfg.group or None,
          mode=self.cfg.mode,
          dir=directory,
          id=self._run_id(),
          resume="allow",
          config=self._run_config,
      )
      logging.info("W&B run %s (%s) in %s", self._run.id, self.cfg.mode, directory)
      if self._resumed_at is not None:
        logging.info(
            "W&B: resumed at step %d; steps W&B already holds are not sent again", self._resumed_at
        )
    return self._run

  def _log(self, step: int, values: Mapping[str, Any]) -> None:
    run = self._started()
    if step < run.step:  # W&B holds this step from before the restart (same values)
      return
    run.log(dict(values), step=int(step))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._log(step, scalars)

  def write_table(self, step: int, name: str, table: Table) -> None:
    self._log(
        step,
        {
            name: self._wandb.Table(
                columns=list(table.columns), data=[list(row) for row in table.rows]
            )
        },
    )

  def truncate_after(self, step: int) -> None:
    self._resumed_at = step

  def close(self) -> None:
    if self._run is not None:
      self._run.finish()
      self._run = None
