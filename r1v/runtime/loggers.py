"""Loggers that respect the run contract: a resumed run appends to its ``metrics.csv``.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, so ``resume=auto`` would
lose every row logged before the kill. ``RunCSVLogger`` keeps the rows of the steps the checkpoint
covers (``step < resume_step``), drops the rows of steps that will be re-done, and appends.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by __init__; replaces "delete the old file"
        path = self.metrics_file_path
        if not os.path.isfile(path):
            return
        if self.resume_step is None:  # a fresh run in a used folder: keep the old file aside, never delete
            os.replace(path, path + ".previous")
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if not r.get("step") or int(float(r["step"])) < self.resume_step]
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = keys


class RunCSVLogger(CSVLogger):
    """CSVLogger writing ``<save_dir>/metrics.csv`` and appending to it on resume."""

    def __init__(self, save_dir: str, name: str = "", version: str = "", resume_step: int | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(save_dir, name=name, version=version, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment  # as Lightning's own: other ranks get a no-op (two nodes share the run folder)
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self.resume_step)
        return self._experiment
