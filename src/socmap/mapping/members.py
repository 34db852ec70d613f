"""The run's models as mapping uses them: loaded once per process and model file, tuned for bulk prediction.

A member is any :class:`~socmap.models.SocModel` saved in a model folder of the run
(:meth:`RunFolder.member_dirs`). Every process (this one, a Dask worker) loads each member on first use and
keeps its :meth:`~socmap.models.SocModel.for_inference` copy (a frozen TorchScript network, a forest on one
thread), keyed by the folder and the stat of its ``model.json``: ``save_model`` writes ``model.json`` last,
so a model saved again is never served from the cache.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from socmap.errors import InputError
from socmap.models import MODEL_FILE, SocModel, load_model
from socmap.runfolder import RunFolder
from socmap.uncertainty.aoa import AOA_FILE
from socmap.uncertainty.runcal import CALIBRATION_FILE, RunUncertainty, load_run_uncertainty

__all__ = [
    "cached_member",
    "cached_uncertainty",
    "check_geometry",
    "clear_cache",
    "load_members",
    "model_stamp",
]

CACHE_SIZE = 16

_MEMBERS: dict[tuple[Any, ...], SocModel] = {}
_MEMBERS_LOCK = threading.Lock()


def model_stamp(folder: str | Path) -> list[Any]:
    """``[resolved model.json path, size, mtime_ns]``: changes whenever the model is saved again.

    Args:
        folder: a model folder.
    """
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise InputError(f"model folder {folder}: {MODEL_FILE} is missing (is it a socmap run folder?)")
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cached_member(model_dir: str | Path, bands: Sequence[str], precision: str = "fp32") -> SocModel:
    """The model of ``model_dir`` ready for mapping (``with_precision(precision).for_inference()``), built once
    per process, file and precision.

    Args:
        model_dir: a model folder.
        bands: the stack's bands (a model trained on other bands is refused by name).
        precision: ``map.precision`` (deep models only; other kinds ignore it).
    """
    key = (*model_stamp(model_dir), tuple(bands), precision)
    with _MEMBERS_LOCK:
        found = _MEMBERS.get(key)
    if found is None:  # two threads may both build it: harmless, the results are identical
        found = load_model(model_dir, expected_bands=list(bands)).with_precision(precision).for_inference()
        with _MEMBERS_LOCK:
            if len(_MEMBERS) >= CACHE_SIZE:
                _MEMBERS.clear()
            _MEMBERS[key] = found
    return found


_UNCERTAINTY: dict[tuple[Any, ...], RunUncertainty] = {}


def _stamp(path: Path) -> tuple[Any, ...]:
    return (str(path.resolve()), *((path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else ()))


def cached_uncertainty(run_dir: str | Path) -> RunUncertainty:
    """The run folder's calibration and AOA, loaded once per process and file version.

    Args:
        run_dir: a run folder (or a bare model folder: usually neither file).
    """
    folder = Path(run_dir)
    key = (_stamp(folder / CALIBRATION_FILE), _stamp(folder / AOA_FILE))
    with _MEMBERS_LOCK:
        found = _UNCERTAINTY.get(key)
    if found is None:
        found = load_run_uncertainty(folder)
        with _MEMBERS_LOCK:
            if len(_UNCERTAINTY) >= CACHE_SIZE:
                _UNCERTAINTY.clear()
            _UNCERTAINTY[key] = found
    return found


def clear_cache() -> None:
    """Forget every cached member (and run calibration) of this process."""
    with _MEMBERS_LOCK:
        _MEMBERS.clear()
        _UNCERTAINTY.clear()


def load_members(
    run_dir: str | Path, bands: Sequence[str], precision: str = "fp32"
) -> tuple[list[Path], list[SocModel]]:
    """Every model folder of the run and its model ready for mapping.

    Args:
        run_dir: a run folder (``runs/run_<i>``), or a bare model folder (one model).
        bands: the stack's bands.
        precision: ``map.precision``.
    """
    dirs = RunFolder(Path(run_dir)).member_dirs()
    return dirs, [cached_member(d, bands, precision) for d in dirs]


def check_geometry(dirs: Sequence[Path], members: Sequence[SocModel]) -> tuple[int, int]:
    """(window size, time steps) shared by every member; an error naming the folders otherwise.

    Args:
        dirs: the members' folders (for the message).
        members: the models.
    """
    first = members[0].require_inputs()
    size, steps = first.window_size, first.time_steps
    for d, m in zip(dirs, members, strict=True):
        spec = m.require_inputs()
        if (spec.window_size, spec.time_steps) != (size, steps):
            raise InputError(
                f"model {d} uses {spec.window_size} px x {spec.time_steps} steps, but {dirs[0]} uses "
                f"{size} px x {steps} steps; an ensemble needs one window geometry"
            )
    return size, steps
