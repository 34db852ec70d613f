"""A run folder: the one object that knows the file names and layout of a ``socmap train`` output.

::

    RUN/
      config.yaml            resolved config (``socmap train --config RUN/config.yaml`` reproduces the run)
      split.csv              which sample went where (train / early-stopping / test)
      split_report.json      target distribution of the sides, KS test
      model.json, model.*    the best run's model (any kind; see socmap.models.registry)
      metrics.json           the run summary (written last: its presence marks a finished run)
      scatter.png            predicted vs observed of the best run
      prepared/              the prepared windows (unless --prepared points elsewhere)
      runs/run_<i>/          each run's model, history.csv, metrics.json, predictions.csv

Typed records of what the files hold: :class:`RunMetrics` (one run) and :class:`RunSummary` (all runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from socmap._atomic import atomic_file, write_json, write_text
from socmap.config import SocmapConfig, dump_config, load_config
from socmap.errors import InputError
from socmap.models.base import TargetInfo
from socmap.models.registry import MODEL_FILE

__all__ = ["RunFolder", "RunMetrics", "RunSummary"]

AGGREGATED = ("r2", "pearson_r2", "rmse", "mae", "me", "rpiq", "ccc")


@dataclass
class RunMetrics:
    """One run's fit and scores (``runs/run_<i>/metrics.json``).

    ``metrics`` are the point metrics on ``evaluated_on`` (the held-out test rows, or the early-stopping rows,
    or the training rows; the label says which); ``monitor_metrics`` are those of the early-stopping rows.
    """

    run: int
    seed: int
    model: str
    evaluated_on: str
    metrics: dict[str, float]
    fit: dict[str, Any] = field(default_factory=dict)
    monitor_metrics: dict[str, float] | None = None
    intervals: dict[str, float] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def best_epoch(self) -> int:
        return int(self.fit.get("best_epoch", -1))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run": self.run,
            "seed": self.seed,
            "model": self.model,
            "evaluated_on": self.evaluated_on,
            "metrics": self.metrics,
            **self.fit,
        }
        if self.monitor_metrics is not None:
            out["monitor_metrics"] = self.monitor_metrics
        if self.intervals is not None:
            out["intervals"] = self.intervals
        out["warnings"] = self.warnings
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunMetrics:
        known = {
            "run",
            "seed",
            "model",
            "evaluated_on",
            "metrics",
            "monitor_metrics",
            "intervals",
            "warnings",
        }
        return cls(
            int(data["run"]),
            int(data["seed"]),
            str(data.get("model", "cnn_lstm")),
            str(data["evaluated_on"]),
            {k: float(v) for k, v in data["metrics"].items()},
            {k: v for k, v in data.items() if k not in known},
            data.get("monitor_metrics"),
            data.get("intervals"),
            list(data.get("warnings", [])),
        )


@dataclass
class RunSummary:
    """The run folder's ``metrics.json``: every run, their aggregate and the best run."""

    name: str
    model: str
    n_samples: int
    n_train: int
    n_validation: int
    n_test: int
    evaluated_on: str
    target: TargetInfo
    best_run: int
    runs: list[RunMetrics]
    aggregate: dict[str, dict[str, float]]
    r2_ceiling: float | None
    split_warning: str | None
    drops: dict[str, int]
    prepared_dir: str
    warnings: list[str] = field(default_factory=list)

    @property
    def best(self) -> RunMetrics:
        return self.runs[self.best_run]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "n_samples": self.n_samples,
            "n_train": self.n_train,
            "n_validation": self.n_validation,
            "n_test": self.n_test,
            "evaluated_on": self.evaluated_on,
            "target": self.target.to_json(),
            "best_run": self.best_run,
            "best": self.best.to_json(),
            "runs": [r.to_json() for r in self.runs],
            "aggregate": self.aggregate,
            "r2_ceiling": self.r2_ceiling,
            "split_warning": self.split_warning,
            "drops": self.drops,
            "prepared_dir": self.prepared_dir,
            "warnings": self.warnings,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        return cls(
            str(data.get("name", "run")),
            str(data.get("model", "cnn_lstm")),
            int(data["n_samples"]),
            int(data["n_train"]),
            int(data["n_validation"]),
            int(data.get("n_test", 0)),
            str(data["evaluated_on"]),
            TargetInfo.from_json(data.get("target", {})),
            int(data["best_run"]),
            [RunMetrics.from_json(r) for r in data["runs"]],
            data["aggregate"],
            data.get("r2_ceiling", data.get("r2_ceiling_validation")),
            data.get("split_warning"),
            dict(data.get("drops", {})),
            str(data.get("prepared_dir", "")),
            list(data.get("warnings", [])),
        )


@dataclass(frozen=True)
class RunFolder:
    """Paths and typed loading/saving of one run folder (see the module docstring)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------ layout
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def split_file(self) -> Path:
        return self.path / "split.csv"

    @property
    def split_report_file(self) -> Path:
        return self.path / "split_report.json"

    @property
    def balance_report_file(self) -> Path:
        return self.path / "balance_report.json"

    @property
    def scatter_file(self) -> Path:
        return self.path / "scatter.png"

    @property
    def report_file(self) -> Path:
        return self.path / "report.html"

    @property
    def default_prepared(self) -> Path:
        return self.path / "prepared"

    @property
    def cv_dir(self) -> Path:
        return self.path / "cv"

    def run_dir(self, i: int) -> Path:
        return self.path / "runs" / f"run_{i}"

    @staticmethod
    def history_file(run_dir: Path) -> Path:
        return run_dir / "history.csv"

    @staticmethod
    def predictions_file(run_dir: Path) -> Path:
        return run_dir / "predictions.csv"

    @staticmethod
    def run_metrics_file(run_dir: Path) -> Path:
        return run_dir / "metrics.json"

    # ------------------------------------------------------------------ state
    def is_finished(self) -> bool:
        """A run folder is finished when its ``metrics.json`` exists (written last)."""
        return self.summary_file.is_file()

    def is_run_folder(self) -> bool:
        return self.config_file.is_file()

    def run_is_finished(self, i: int) -> bool:
        d = self.run_dir(i)
        return self.run_metrics_file(d).is_file() and (d / MODEL_FILE).is_file()

    def member_dirs(self) -> list[Path]:
        """Every run's model folder (``runs/run_<i>``, by i); a folder without runs is its own single model."""
        runs = [
            p for p in self.path.glob("runs/run_*") if p.name[4:].isdigit() and (p / MODEL_FILE).is_file()
        ]
        return sorted(runs, key=lambda p: int(p.name[4:])) or [self.path]

    # ------------------------------------------------------------------ typed I/O
    def load_config(self, overrides: dict[str, Any] | None = None) -> SocmapConfig:
        if not self.config_file.is_file():
            raise InputError(
                f"run folder {self.path}: config.yaml is missing (is it a socmap train run folder?)"
            )
        return load_config(self.config_file, overrides)

    def save_config(self, config: SocmapConfig) -> None:
        write_text(self.config_file, dump_config(config))

    def load_summary(self) -> RunSummary:
        if not self.summary_file.is_file():
            raise InputError(
                f"run folder {self.path}: metrics.json is missing (an unfinished or foreign run)"
            )
        return RunSummary.from_json(json.loads(self.summary_file.read_text()))

    def save_summary(self, summary: RunSummary) -> None:
        write_json(self.summary_file, summary.to_json())

    @staticmethod
    def save_run_files(
        run_dir: Path, metrics: RunMetrics, history: pd.DataFrame, predictions: pd.DataFrame
    ) -> None:
        """A run's history and predictions, then its metrics.json (which marks it finished)."""
        with atomic_file(RunFolder.history_file(run_dir)) as tmp:
            history.to_csv(tmp, index=False)
        with atomic_file(RunFolder.predictions_file(run_dir)) as tmp:
            predictions.to_csv(tmp, index=False)
        write_json(RunFolder.run_metrics_file(run_dir), metrics.to_json())

    @staticmethod
    def load_run_files(run_dir: Path) -> tuple[RunMetrics, pd.DataFrame]:
        """A finished run's metrics and history."""
        metrics = RunMetrics.from_json(json.loads(RunFolder.run_metrics_file(run_dir).read_text()))
        history_path = RunFolder.history_file(run_dir)
        try:
            history = pd.read_csv(history_path)
        except (FileNotFoundError, pd.errors.EmptyDataError):  # models without epochs
            history = pd.DataFrame()
        return metrics, history

    def load_predictions(self, run: int) -> pd.DataFrame:
        return pd.read_csv(self.predictions_file(self.run_dir(run)))
