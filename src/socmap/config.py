"""One typed configuration (pydantic) loaded from YAML, overridable from the command line.

Every field is documented here and in ``configs/*.yaml``; unknown keys and invalid values are rejected with a
one-line error that names the key and the allowed values. Relative paths are resolved against the folder of
the YAML file (never the working directory), and YAML is read with ``safe_load``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from socmap.errors import InputError

__all__ = [
    "CV_DESIGNS",
    "CVConfig",
    "MapConfig",
    "SocmapConfig",
    "UncertaintyConfig",
    "dump_config",
    "load_config",
    "parse_override",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SamplesConfig(_Section):
    """The sample table and how its columns map to socmap's fields (defaults follow LUCAS)."""

    path: Path = Field(Path("samples.csv"), description="Sample table: .csv, .xlsx, .gpkg or .parquet.")
    id: str | None = Field("POINTID", description="Location/sample id column; None: row numbers.")
    lat: list[str] | str = Field(
        ["GPS_LAT", "TH_LAT"], description="Latitude column (WGS84), or candidates tried in order."
    )
    lon: list[str] | str = Field(["GPS_LONG", "TH_LONG"], description="Longitude column, or candidates.")
    x: str | None = Field(None, description="Easting column in `crs` (instead of lat/lon).")
    y: str | None = Field(None, description="Northing column in `crs` (instead of lat/lon).")
    crs: str = Field("EPSG:4326", description="CRS of the coordinate columns.")
    target: str = Field("OC", description="Target column.")
    target_unit: str = Field("g/kg", description="Unit of the target after scaling (for reports and maps).")
    target_scale: float = Field(
        1.0, gt=0, description="Multiplier applied to the target column (% -> g/kg: 10)."
    )
    year: list[str] | str | None = Field(["year", "YEAR"], description="Year column, or candidates.")
    date: list[str] | str | None = Field(
        ["SURVEY_DATE", "survey_date"], description="Date column used when no year column exists."
    )
    date_format: str | None = Field(
        None, description="strftime format of the date column; None: ISO / inferred."
    )
    time: str | None = Field(
        None, description="One time label for every sample (designs without dates, e.g. climatologies)."
    )
    uncertainty: str | None = Field(
        None, description="Optional per-sample measurement sd column (same unit)."
    )
    duplicates: Literal["error", "mean", "first", "drop"] = Field(
        "error",
        description="Same id and time with different targets: fail, average, keep first, or drop all.",
    )

    @field_validator("lat", "lon", "year", "date", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class FiltersConfig(_Section):
    """Which samples are kept; every drop is counted by reason."""

    max_target: float | None = Field(150.0, description="Drop samples above this target (peat cap MAX_OC).")
    min_target: float = Field(0.0, description="Drop samples below this target (negative OC is invalid).")
    year_min: int | None = Field(2007, description="First sample year kept.")
    year_max: int | None = Field(2023, description="Last sample year kept.")
    region: Path | None = Field(None, description="Keep samples inside this polygon (GeoJSON/GPKG).")
    min_valid_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Drop samples whose window (all bands and steps) is less valid than this.",
    )


class CovariatesConfig(_Section):
    """The covariate rasters: static bands and time-varying bands with a file pattern."""

    root: Path = Field(Path("covariates"), description="Folder the patterns are relative to.")
    static: list[str] = Field(["Elevation"], description="Bands that do not vary in time.")
    static_pattern: str = Field("static/{band}.tif", description="File of a static band.")
    temporal: list[str] = Field(
        ["LAI", "LST", "MODIS_NPP", "SoilEvaporation", "TotalEvapotranspiration"],
        description="Bands with one raster per time step.",
    )
    temporal_pattern: str = Field("yearly/{band}/{time}.tif", description="File of a band at a time label.")
    time_regex: str = Field(r"\d+", description="Regular expression a time label in a file name must match.")
    time_labels: list[str] | None = Field(
        None, description="Ordered time labels; None: every label found on disk for any temporal band."
    )
    nodata: float | None = Field(None, description="Nodata value for rasters that do not declare one.")
    assume_crs: str | None = Field(
        None, description="CRS for rasters that have none (else they are refused)."
    )
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = Field(
        "bilinear", description="Resampling when a raster is warped onto the working grid."
    )
    coordinates: Literal["none", "xy", "oblique"] = Field(
        "none",
        description="Coordinates as static covariates, generated on the fly: xy (coord_x, coord_y in the grid "
        "CRS) or oblique (ogc_<angle>: oblique geographic coordinates, Møller et al. 2020).",
    )
    oblique_angles: int = Field(
        6, ge=2, le=72, description="Number of angles of the oblique coordinates (evenly spaced in [0, 180))."
    )
    categorical: list[str] = Field(
        [],
        description="Static bands holding class codes (soil class, land cover): warped with nearest (mode when "
        "resampling is average) and one-hot encoded by the tree and linear models.",
    )

    @model_validator(mode="after")
    def _check(self) -> CovariatesConfig:
        if not self.static and not self.temporal:
            raise ValueError("covariates: give at least one band in static or temporal")
        if "{band}" not in self.static_pattern:
            raise ValueError(f"static_pattern {self.static_pattern!r}: expected a '{{band}}' placeholder")
        if self.temporal and not {"{band}", "{time}"} <= _placeholders(self.temporal_pattern):
            raise ValueError(
                f"temporal_pattern {self.temporal_pattern!r}: expected '{{band}}' and '{{time}}' placeholders"
            )
        dup = sorted({b for b in self.static + self.temporal if (self.static + self.temporal).count(b) > 1})
        if dup:
            raise ValueError(f"covariates: band(s) {', '.join(dup)} listed twice")
        bad = [b for b in self.categorical if b not in self.static]
        if bad:
            raise ValueError(
                f"covariates.categorical {', '.join(bad)}: expected among the static bands "
                f"({', '.join(self.static) or 'none'})"
            )
        from socmap.coordinates import is_coordinate_band

        reserved = [b for b in self.static + self.temporal if is_coordinate_band(b)]
        if reserved:
            raise ValueError(
                f"covariates: band name(s) {', '.join(reserved)} are reserved for covariates.coordinates"
            )
        return self


def _placeholders(pattern: str) -> set[str]:
    return {p for p in ("{band}", "{time}") if p in pattern}


class WindowsConfig(_Section):
    """The window stack cut around every sample: [C, size, size, time_steps]."""

    size: int = Field(
        5, ge=3, le=63, description="Window edge in pixels (odd: centred; even: centre at size//2)."
    )
    time_steps: int = Field(
        5,
        ge=1,
        le=100,
        description="Steps up to and including the sample's time (a 2015 sample sees 2011..2015); "
        "default 5 with temporal bands, 1 without.",
    )


class GridConfig(_Section):
    """The working grid every raster is read on (default: the first raster's own grid)."""

    reference: str | None = Field(
        None, description="Band whose raster defines the grid; None: the first band."
    )
    crs: str | None = Field(None, description="Working CRS; None: the reference raster's CRS.")
    resolution: float | None = Field(
        None, gt=0, description="Working pixel size in CRS units; None: reference's."
    )
    allow_warp: bool = Field(
        True, description="Warp rasters on other grids onto the working grid (False: refuse them)."
    )


class SplitConfig(_Section):
    """The validation split used by `socmap train` (seed project's distance-threshold design by default)."""

    method: Literal["distance-split", "spatial-block", "buffered", "random"] = "distance-split"
    val_ratio: float = Field(
        0.08,
        gt=0,
        lt=1,
        description="Share held out as `socmap train`'s test set (every split.method), and share of the training "
        "part a deep model holds out for early stopping.",
    )
    distance_km: float = Field(
        1.2, gt=0, description="Minimum distance between validation and training points."
    )
    folds: int = Field(10, ge=2, description="Folds of `socmap cv` (train's hold-out uses val_ratio).")
    block_size_km: float = Field(10.0, gt=0, description="Block edge for spatial-block k-fold.")
    seed: int = 0


class SamplingConfig(_Section):
    """Balanced sampling of the training set (up-sample rare target values)."""

    balanced: bool = Field(False, description="Up-sample rare target bins in training.")
    n_bins: int = Field(128, ge=2, description="Number of target bins.")
    min_fraction: float = Field(
        0.75, gt=0, le=1, description="Bins below this share of the largest are up-sampled."
    )
    binning: Literal["quantile", "uniform"] = "quantile"


class TrainConfig(_Section):
    """Training of the deep model (flags of `socmap train` override these)."""

    model: str = Field(
        "cnn_lstm",
        description="Model kind of `socmap train` (cnn_lstm, rf, qrf, xgb, linear, ensemble or a registered kind).",
    )
    lstm_input_size: int | None = Field(
        None,
        ge=1,
        description="cnn_lstm: CNN feature size fed to the LSTM per step; None: by training size (32 below "
        "8,000 training samples, else the seed project's 128).",
    )
    lstm_hidden_size: int | None = Field(
        None, ge=1, description="cnn_lstm: LSTM hidden size; None: by training size, as lstm_input_size."
    )
    num_layers: int = Field(2, ge=1, description="LSTM layers.")
    dropout: float = Field(0.25, ge=0, lt=1, description="Dropout between LSTM layers.")
    loss_type: Literal["l1", "mse", "composite_l1", "composite_l2", "gaussian_nll", "quantile"] = Field(
        "mse", description="Training loss (see socmap.losses)."
    )
    loss_alpha: float = Field(0.5, ge=0, le=1, description="Weight of L1/L2 in the composite losses.")
    loss_sigma: float = Field(
        3.0, gt=0, description="Constant measurement sd for the composite losses (target unit)."
    )
    quantiles: list[float] = Field(
        [0.05, 0.5, 0.95], description="Quantiles predicted with loss_type quantile."
    )
    target_transform: Literal["none", "log", "normalize"] = Field(
        "normalize", description="Transform of the target during training (inverted for every output)."
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="Adam learning rate; None: 1e-3 x sqrt(batch size / 256), i.e. 2.5e-4 at batch 16 and 1e-3 "
        "at 256 (larger batches average out more gradient noise and take a larger step).",
    )
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    batch_size: int | None = Field(
        None, ge=1, description="Samples per batch; None: n_train/32 as a power of two within 16..256."
    )
    epochs: int | None = Field(
        None,
        ge=1,
        description="Maximum epochs; None: train.max_steps optimiser steps, as epochs of this data.",
    )
    max_steps: int = Field(
        10_000,
        ge=1,
        description="Optimiser-step budget when train.epochs is not given (follows the data size).",
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Early stopping: epochs without early-stopping-set improvement; None: train.patience_steps.",
    )
    patience_steps: int = Field(
        500,
        ge=1,
        description="Patience in optimiser steps when train.patience is not given (at least 3 epochs).",
    )
    min_steps: int = Field(
        200,
        ge=0,
        description="Warm-up in optimiser steps: no earlier epoch is restored as the best one, no earlier stop.",
    )
    min_delta: float = Field(
        0.0, ge=0, description="Smallest early-stopping-set loss decrease that counts as improvement."
    )
    seed_models: int | None = Field(
        None,
        ge=1,
        le=32,
        description="Networks per deep model, each with its own seed and early-stopping split, averaged; "
        "None: 5 below 1,000 training samples, 3 below 4,000, else 1.",
    )
    augment: Literal["none", "dihedral"] = Field(
        "none",
        description="Window augmentation while training: dihedral = a random rotation/flip of the window per "
        "batch (the 8 symmetries of the square; for isotropic covariates).",
    )
    input_noise: float = Field(
        0.0, ge=0, description="Sd of Gaussian noise added to the normalised inputs while training (0: off)."
    )
    relief_bands: list[str] = Field(
        [],
        description="Deep models: bands whose local relief (every pixel minus its window's mean, e.g. a "
        "topographic position index of elevation) the network also reads as a channel of its own. Off by "
        "default: it closed synthetic Bavaria's gap (its truth has a window TPI term) but lowered Edgeroi and "
        "Macedonia (docs/benchmarks.md); check it with socmap cv.",
    )
    back_transform: Literal["mean", "median"] = Field(
        "mean",
        description="target_transform log: predict the mean (a ratio factor from the early-stopping rows / "
        "the lognormal variance correction of a gaussian_nll head) or the median (plain back-transform).",
    )
    bidirectional: bool = Field(False, description="cnn_lstm: a bidirectional LSTM over the time steps.")
    init_from: Path | None = Field(
        None,
        description="Run folder whose model (same kind and bands) the deep models start from (fine-tuning); "
        "its normalisation and target transform are kept.",
    )
    lr_schedule: Literal["none", "plateau", "cosine"] = Field("none", description="Learning-rate schedule.")
    ema_steps: int = Field(
        0,
        ge=0,
        description="Exponential moving average of the weights over about this many optimiser steps (decay "
        "1 - 1/ema_steps); the average is what early stopping scores and what the fit keeps (0: off).",
    )
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this (0: off).")
    checkpoint_seconds: float = Field(
        30.0,
        ge=0,
        description="Write the resume checkpoint after an epoch once this many seconds passed since the last "
        "one (0: after every epoch); a resumed fit replays the epochs after it to the same numbers. Small data "
        "sets train many short epochs: a checkpoint per epoch cost about 7 % of their training time.",
    )
    use_validation: bool = Field(
        True,
        description="Hold out a test set and early-stop on an inner split of the training part (False: no test "
        "set; the only score is the training fit).",
    )
    num_runs: int = Field(
        5,
        ge=1,
        description="Runs with different seeds; the run with the best early-stopping R² becomes the folder's model "
        "(run 0 for kinds without early stopping); maps and predictions use the mean of all runs.",
    )
    vary_split: bool = Field(False, description="Give every run its own test split (seed + run).")
    seed: int = Field(0, description="Seed of run 0 (run i uses seed + i).")
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of torch and the tree models (None: torch's default / all cores).",
    )
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="Weights & Biases mode; None: $WANDB_MODE or offline (never online unless asked)."
    )
    wandb_project: str = Field("socmap", description="Weights & Biases project.")


def check_scheduler(value: str | None) -> str | None:
    """A Dask scheduler name: None, ``threads``, ``processes`` or a dask.distributed address."""
    if value is not None and value not in {"threads", "processes"} and "://" not in value:
        raise ValueError(
            f"scheduler {value!r}: expected threads, processes or a dask.distributed address such as "
            "tcp://host:8786"
        )
    return value


class MapConfig(_Section):
    """`socmap map` settings (its flags override these)."""

    year: str | None = Field(
        None,
        description="Time label to map (its covariates and the T-1 before it); None: static stacks only.",
    )
    region: Path | None = Field(
        None, description="Region polygon; None: filters.region, else the default region."
    )
    resolution: float | None = Field(
        None, gt=0, description="Pixel size in grid CRS units; None: the grid's."
    )
    bbox: list[float] | None = Field(None, description="minx, miny, maxx, maxy in the grid's CRS.")
    block_size: int = Field(
        512, ge=16, le=8192, description="Block edge in pixels (one task, one resume unit)."
    )
    batch_size: int = Field(1024, ge=1, description="Windows per model batch.")
    scheduler: str | None = Field(
        None, description="None (this process), threads, processes or a dask.distributed address tcp://..."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Deep-model inference in map and predict: fp32 (exact, reproducible) or bf16 (torch.autocast "
        "on CPU: faster on CPUs with bf16 instructions, predictions change slightly; see docs/benchmarks.md). "
        "Tree, linear and kriging models ignore it.",
    )

    @field_validator("year", mode="before")
    @classmethod
    def _year_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("bbox")
    @classmethod
    def _check_bbox(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 4 or value[0] >= value[2] or value[1] >= value[3]):
            raise ValueError(f"bbox {value}: expected [minx, miny, maxx, maxy] with minx < maxx, miny < maxy")
        return value

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, value: str | None) -> str | None:
        return check_scheduler(value)


CV_DESIGNS = ("spatial-block", "buffered", "random", "distance-split", "knndm")


class UncertaintyConfig(_Section):
    """Prediction intervals (conformal calibration) and the area of applicability (see socmap.uncertainty)."""

    nominal: float = Field(
        0.9, gt=0, lt=1, description="Nominal coverage of the mapped interval (0.9: Q0.05-Q0.95)."
    )
    coverages: list[float] = Field(
        [0.5, 0.8, 0.9, 0.95], description="Coverages whose PICP every cv reports."
    )
    adaptive: bool = Field(
        True, description="Locally adaptive intervals (a model of the residual scale); false: constant width."
    )
    calibration_folds: int = Field(
        5,
        ge=0,
        description="Spatial CV folds `train` fits on its training rows to calibrate the intervals and the "
        "AOA threshold (cv.design, its seed); 0: no calibration (no interval or AOA bands for point models).",
    )
    calibration_runs: int | None = Field(
        None,
        ge=1,
        description="Runs fitted per calibration fold (None: train.num_runs, the blend calibrated as a whole; "
        "fewer: cheaper, slightly wider intervals, as one run errs more than the mean of several).",
    )
    aoa: bool = Field(True, description="Compute the area of applicability (DI and AOA bands).")

    @field_validator("coverages")
    @classmethod
    def _check_coverages(cls, value: list[float]) -> list[float]:
        bad = [c for c in value if not 0 < c < 1]
        if bad or not value:
            raise ValueError(f"coverages {bad or value}: expected coverages between 0 and 1, e.g. [0.5, 0.9]")
        return sorted(set(float(c) for c in value))


class CVConfig(_Section):
    """`socmap cv` settings (its flags override these)."""

    design: Literal["spatial-block", "buffered", "random", "distance-split", "knndm"] = Field(
        "spatial-block", description="Cross-validation design."
    )
    folds: int | None = Field(
        None, ge=1, description="Folds (buffered: held-out locations; None: split.folds)."
    )
    models: list[str] = Field(
        ["cnn_lstm", "rf", "qrf", "xgb"], description="Model kinds compared on identical folds."
    )
    seed: int | None = Field(None, description="Seed of the folds; None: split.seed.")
    scheduler: str | None = Field(
        None,
        description="Where the (model, fold) fits run: None (this process, one after another), threads, "
        "processes (Dask, one fit per core) or a dask.distributed address tcp://...; same results.",
    )

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, value: str | None) -> str | None:
        return check_scheduler(value)

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        names = list(dict.fromkeys(m.strip() for m in value if m.strip()))
        if not names:
            raise ValueError("cv.models: expected at least one model kind")
        return names


class SocmapConfig(_Section):
    """The whole configuration; YAML sections map to the attributes below."""

    name: str = Field("socmap", description="Name of the data set / experiment (used in reports).")
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    covariates: CovariatesConfig = Field(default_factory=CovariatesConfig)
    windows: WindowsConfig = Field(default_factory=WindowsConfig)
    grid: GridConfig = Field(default_factory=GridConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options per model kind, e.g. {rf: {n_estimators: 500}, ensemble: {members: [rf, xgb]}}.",
    )
    map: MapConfig = Field(default_factory=MapConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    uncertainty: UncertaintyConfig = Field(default_factory=UncertaintyConfig)
    base_dir: Path = Field(Path("."), description="Folder relative paths are resolved against (the YAML's).")

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_the_data(cls, data: Any) -> Any:
        """Defaults that follow the user's covariates: a config that lists only static (or only temporal)
        bands gets no bands of the other kind from the demo's defaults (an explicit empty list changes nothing), and ``windows.time_steps`` defaults to
        5 with temporal bands and to 1 without (static bands repeated over steps add nothing)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        cov = data.get("covariates")
        if isinstance(cov, dict):
            cov = dict(cov)
            if cov.get("static") and "temporal" not in cov:
                cov["temporal"] = []
            elif cov.get("temporal") and "static" not in cov:
                cov["static"] = []
            data["covariates"] = cov
        temporal = cov.get("temporal") if isinstance(cov, dict) and "temporal" in cov else ["default"]
        win = data.get("windows")
        if win is None or (isinstance(win, dict) and "time_steps" not in win):
            data["windows"] = {**(win or {}), "time_steps": 5 if temporal else 1}
        return data

    @model_validator(mode="after")
    def _check_model_kinds(self) -> SocmapConfig:
        from socmap.models.registry import available_models

        if not self.covariates.temporal and self.windows.time_steps > 1:
            raise ValueError(
                f"windows.time_steps {self.windows.time_steps}: the covariates are all static (no temporal bands), "
                "so every step would repeat the same values; use 1 (the default without temporal bands)"
            )
        kinds = available_models()
        if "cnn_lstm" in self.models:
            raise ValueError(
                "models.cnn_lstm: the deep model's options live in the train: section (lr, epochs, ...)"
            )
        for key, names in (
            ("train.model", [self.train.model]),
            ("cv.models", self.cv.models),
            ("models", list(self.models)),
        ):
            bad = [n for n in names if n not in kinds]
            if bad:
                raise ValueError(
                    f"{key}: {', '.join(map(repr, bad))} is not a model kind; expected one of {', '.join(kinds)}"
                )
        return self

    def resolve(self, path: Path) -> Path:
        """A path from the config, resolved against the config file's folder."""
        return path if path.is_absolute() else (self.base_dir / path)

    def data_hash(self) -> str:
        """Hash of everything that determines the prepared windows (not training options)."""
        keys = ("samples", "filters", "covariates", "windows", "grid")
        payload = {k: getattr(self, k).model_dump(mode="json") for k in keys}
        payload["base_dir"] = str(self.base_dir.resolve())
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _format_error(exc: ValidationError, source: str) -> str:
    """One line: the key path, what was wrong, and the allowed values or keys where known."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        model: type[BaseModel] = SocmapConfig
        for part in err["loc"][:-1]:
            field = model.model_fields.get(str(part))
            if (
                field is None
                or not isinstance(field.annotation, type)
                or not issubclass(field.annotation, BaseModel)
            ):
                break
            model = field.annotation
        valid = ", ".join(k for k in model.model_fields if k != "base_dir")
        return f"{source}: unknown key '{loc}'; valid keys here: {valid}"
    msg = err["msg"]
    if err["type"] == "literal_error":
        return f"{source}: {loc} = {err.get('input')!r}: {msg}"
    if err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        return f"{source}: {loc + ': ' if loc else ''}{msg}"
    return f"{source}: {loc} = {err.get('input')!r}: {msg}"


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SocmapConfig:
    """Load a YAML config (``None``: all defaults) and apply dotted-key overrides, e.g. {"windows.size": 7}."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    source = "defaults"
    if path is not None:
        cfg_path = Path(path)
        source = str(cfg_path)
        if not cfg_path.is_file():
            raise InputError(f"config file {cfg_path} does not exist")
        try:
            loaded = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None)
            raise InputError(
                f"config file {cfg_path}: invalid YAML{where}" + (f" ({problem})" if problem else "")
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(
                f"config file {cfg_path}: expected a mapping of sections, got {type(loaded).__name__}"
            )
        data = loaded
        base = cfg_path.resolve().parent
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    data["base_dir"] = base
    try:
        return SocmapConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(_format_error(exc, source)) from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"override {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a ``--set key.path=value`` override; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected key.path=value, e.g. windows.size=7")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def dump_config(config: SocmapConfig) -> str:
    """The resolved config as YAML (paths absolute), written into every run and prepared folder."""
    data = config.model_dump(mode="json", exclude={"base_dir"})
    for section, key in (
        ("samples", "path"),
        ("covariates", "root"),
        ("filters", "region"),
        ("map", "region"),
    ):
        value = getattr(getattr(config, section), key)
        if value is not None:
            data[section][key] = str(config.resolve(Path(value)).resolve())
    return yaml.safe_dump(data, sort_keys=False)
