"""A run folder: the one object that knows the file names and layout of a ``socmap train`` output.

::

    RUN/
      config.yaml            resolved config (``socmap train --config RUN/config.yaml`` reproduces the run)
      split.csv              which sample went where (role: train / test; without a test set: train)
      split_report.json      target distribution of the sides, KS test
      model.json, model.*    the run kept as the folder's model (any kind; see socmap.models.registry)
      metrics.json           the run summary (written last: its presence marks a finished run)
      scatter.png            predicted vs observed of the folder's model on the test set (else training fit)
      prepared/              the prepared windows (unless --prepared points elsewhere)
      runs/run_<i>/          each run's model, history.csv, metrics.json, predictions.csv

Typed records of what the files hold: :class:`RunMetrics` (one run) and :class:`RunSummary` (all runs), whose
every number is a :class:`Score` labelled with the set it was computed on: the held-out test set (:data:`TEST`,
never used for fitting, early stopping or choosing the run), the early-stopping set (:data:`EARLY_STOPPING`)
or the training fit (:data:`TRAINING_FIT`, not a validation).
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

__all__ = [
    "EARLY_STOPPING",
    "MEAN_OF_RUNS",
    "TEST",
    "TRAINING_FIT",
    "RunFolder",
    "RunMetrics",
    "RunSummary",
    "Score",
]

AGGREGATED = ("r2", "pearson_r2", "rmse", "mae", "me", "rpiq", "ccc")
FORMAT = 2  # metrics.json layout: 2 = labelled scores (test / early stopping / training fit)

# What each score was computed on. Every number socmap reports carries one of these labels.
TEST = "held-out test set (never used for fitting, early stopping or choosing the run)"
EARLY_STOPPING = (
    "early-stopping set (carved from the training part; it chose the epoch and the run folder's model)"
)
TRAINING_FIT = "training fit (not a validation): the rows the model was given to fit"
MEAN_OF_RUNS = "mean of all runs' predictions (what map and predict use) on the held-out test set"


@dataclass
class Score:
    """Metrics and the set they were computed on (``evaluated_on``: one of the labels above).

    Args:
        evaluated_on: what the rows were (e.g. :data:`TEST`, :data:`EARLY_STOPPING`, :data:`TRAINING_FIT`).
        metrics: point metrics (R², RMSE, ...; the early-stopping set: those the training loop recorded).
        intervals: PICP, width and interval score of kinds with intervals, else None.
    """

    evaluated_on: str
    metrics: dict[str, float]
    intervals: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        out: dict[str, Any] = {"evaluated_on": self.evaluated_on, "metrics": self.metrics}
        if self.intervals is not None:
            out["intervals"] = self.intervals
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Score | None:
        """Inverse of :meth:`to_json` (None stays None)."""
        if data is None:
            return None
        return cls(
            str(data["evaluated_on"]),
            {k: float(v) for k, v in data["metrics"].items()},
            data.get("intervals"),
        )


def _old_score(data: dict[str, Any]) -> Score:
    """The one score of a metrics.json written before FORMAT 2 (labelled as it was)."""
    label = str(data["evaluated_on"])
    if label == "validation":  # it was also the early-stopping and run-selection set: say so
        label = "validation (run folder written before socmap separated the test set: early-stopped on it)"
    return Score(label, {k: float(v) for k, v in data["metrics"].items()}, data.get("intervals"))


@dataclass
class RunMetrics:
    """One run's fit and labelled scores (``runs/run_<i>/metrics.json``).

    Args:
        run: run number.
        seed: the run's seed (``train.seed + run``).
        model: model kind.
        test: scores on the held-out test set (None without one, ``train.use_validation: false``).
        training: the training fit (not a validation).
        early_stopping: the early-stopping set's scores at the epoch kept (models that early-stop), else None.
        fit: what the fit reported (epochs, best epoch, parameters).
        warnings: the fit's warnings.
    """

    run: int
    seed: int
    model: str
    test: Score | None
    training: Score | None
    early_stopping: Score | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def headline(self) -> Score:
        """The held-out test score, else (no test set) the training fit."""
        score = self.test or self.training
        assert score is not None, "a run has a test score or a training fit"
        return score

    @property
    def metrics(self) -> dict[str, float]:
        """The headline's point metrics (see :attr:`evaluated_on`)."""
        return self.headline.metrics

    @property
    def evaluated_on(self) -> str:
        """What :attr:`metrics` were computed on."""
        return self.headline.evaluated_on

    @property
    def intervals(self) -> dict[str, float] | None:
        """The headline's interval metrics (kinds with intervals), else None."""
        return self.headline.intervals

    @property
    def best_epoch(self) -> int:
        return int(self.fit.get("best_epoch", -1))

    def to_json(self) -> dict[str, Any]:
        """JSON form: ``evaluated_on``/``metrics`` (the headline, as before) and every labelled score."""
        scores = {"test": self.test, "early_stopping": self.early_stopping, "training": self.training}
        return {
            "run": self.run,
            "seed": self.seed,
            "model": self.model,
            "evaluated_on": self.evaluated_on,
            "metrics": self.metrics,
            **({"intervals": self.intervals} if self.intervals is not None else {}),
            "scores": {k: v.to_json() for k, v in scores.items() if v is not None},
            **self.fit,
            "warnings": self.warnings,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunMetrics:
        """Inverse of :meth:`to_json`; also reads the single-score files of earlier versions."""
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
        fit = {k: v for k, v in data.items() if k not in known | {"scores"}}
        head = (int(data["run"]), int(data["seed"]), str(data.get("model", "cnn_lstm")))
        if "scores" in data:
            scores = data["scores"]
            return cls(
                *head,
                Score.from_json(scores.get("test")),
                Score.from_json(scores.get("training")),
                Score.from_json(scores.get("early_stopping")),
                fit,
                list(data.get("warnings", [])),
            )
        old = _old_score(data)
        on_training = old.evaluated_on.startswith("training")
        return cls(
            *head,
            None if on_training else old,
            old if on_training else None,
            None,
            fit,
            list(data.get("warnings", [])),
        )


@dataclass
class RunSummary:
    """The run folder's ``metrics.json``: every run's labelled scores, their aggregate, the run kept as the
    folder's model and how it was chosen, and the test score of the runs' mean prediction.

    Args:
        name: the config's name.
        model: model kind.
        n_samples: samples after filters.
        n_train: rows given to the models (a deep model carves its early-stopping rows out of them).
        n_test: held-out test rows (0 without a test set).
        target: the predicted property and its unit.
        best_run: the run kept as the folder's model (``model.json``); see ``selection``.
        selection: how ``best_run`` was chosen (never on the test set).
        runs: every run's metrics.
        aggregate: mean, std, min, max over runs of their headline metrics (``evaluated_on``).
        mean_of_runs: the runs' mean prediction scored on the test set (what maps use), else None.
        r2_ceiling: the known best R² of the test rows (synthetic data), else None.
        split_warning: the split report's warning (test and training targets differ), else None.
        drops: samples dropped while preparing, by reason.
        prepared_dir: the prepared folder used.
        warnings: the runs' warnings.
    """

    name: str
    model: str
    n_samples: int
    n_train: int
    n_test: int
    target: TargetInfo
    best_run: int
    selection: str
    runs: list[RunMetrics]
    aggregate: dict[str, dict[str, float]]
    mean_of_runs: Score | None
    r2_ceiling: float | None
    split_warning: str | None
    drops: dict[str, int]
    prepared_dir: str
    warnings: list[str] = field(default_factory=list)

    @property
    def best(self) -> RunMetrics:
        """The run kept as the folder's model."""
        return self.runs[self.best_run]

    @property
    def evaluated_on(self) -> str:
        """What the headline metrics (``best.metrics``, ``aggregate``) were computed on."""
        return self.best.evaluated_on

    @property
    def n_validation(self) -> int:
        """Deprecated name of :attr:`n_test` (the held-out rows)."""
        return self.n_test

    def to_json(self) -> dict[str, Any]:
        """JSON form (``metrics.json``)."""
        return {
            "format": FORMAT,
            "name": self.name,
            "model": self.model,
            "n_samples": self.n_samples,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "evaluated_on": self.evaluated_on,
            "target": self.target.to_json(),
            "best_run": self.best_run,
            "selection": self.selection,
            "best": self.best.to_json(),
            "mean_of_runs": self.mean_of_runs.to_json() if self.mean_of_runs is not None else None,
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
        """Inverse of :meth:`to_json`; also reads metrics.json of earlier versions (``n_validation``)."""
        old = int(data.get("format", 1)) < 2
        best_run = int(data["best_run"])
        return cls(
            name=str(data.get("name", "run")),
            model=str(data.get("model", "cnn_lstm")),
            n_samples=int(data["n_samples"]),
            n_train=int(data["n_train"]),
            n_test=int(data["n_validation"] if old else data["n_test"]),
            target=TargetInfo.from_json(data.get("target", {})),
            best_run=best_run,
            selection=str(
                data.get(
                    "selection", f"run {best_run}: best R² on the validation set (earlier socmap version)"
                )
            ),
            runs=[RunMetrics.from_json(r) for r in data["runs"]],
            aggregate=data["aggregate"],
            mean_of_runs=Score.from_json(data.get("mean_of_runs")),
            r2_ceiling=data.get("r2_ceiling", data.get("r2_ceiling_validation")),
            split_warning=data.get("split_warning"),
            drops=dict(data.get("drops", {})),
            prepared_dir=str(data.get("prepared_dir", "")),
            warnings=list(data.get("warnings", [])),
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
        if (self.path / "runs").is_dir() and self.is_run_folder() and not self.is_finished():
            raise InputError(
                f"run folder {self.path} is unfinished (no metrics.json): maps and predictions need all its runs; "
                "continue it with socmap train --resume"
            )
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
