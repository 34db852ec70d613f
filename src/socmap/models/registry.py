"""The model registry and safe persistence: one place that knows which models exist and how they travel.

A model kind is registered once with :func:`register_model` (a factory that builds an unfitted model from the
configuration); ``train``, ``cv``, ``predict``, ``map`` and ``report`` look kinds up here and never name them.

A saved model is a folder: ``model.json`` (kind, format version, :class:`InputSpec`, the model's JSON state)
plus the kind's binary files (a torch state dict loaded with ``weights_only=True``, XGBoost's own UBJSON, a
skops file loaded with an explicit list of trusted types). Nothing is unpickled; ``model.json`` is written
last, so a folder without it is not a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from socmap._atomic import write_json
from socmap.errors import InputError
from socmap.models.base import InputSpec, SocModel

if TYPE_CHECKING:
    from socmap.config import SocmapConfig

__all__ = [
    "MODEL_FILE",
    "ModelEntry",
    "available_models",
    "create_model",
    "load_model",
    "model_entry",
    "register_model",
    "save_model",
]

MODEL_FILE = "model.json"
FORMAT_VERSION = 2
ModelFactory = Callable[["SocmapConfig"], SocModel]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model kind: its class (for loading), its factory (for fitting) and a one-line summary."""

    kind: str
    cls: type[SocModel]
    factory: ModelFactory
    summary: str
    family: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    kind: str, cls: type[SocModel], factory: ModelFactory, summary: str, family: str = "other"
) -> None:
    """Register (or replace) model ``kind``; ``factory(config)`` returns an unfitted model."""
    if not kind.isidentifier():
        raise InputError(f"model kind {kind!r}: expected a Python identifier such as my_model")
    cls.kind = kind
    _REGISTRY[kind] = ModelEntry(kind, cls, factory, summary, family)


def _ensure_builtins() -> None:
    import socmap.models.zoo  # noqa: F401  (registers the built-in models on import)


def available_models() -> dict[str, ModelEntry]:
    """Every registered kind, built-in and user-registered, in registration order."""
    _ensure_builtins()
    return dict(_REGISTRY)


def model_entry(kind: str) -> ModelEntry:
    """The entry of ``kind``; an error listing the registered kinds otherwise."""
    models = available_models()
    if kind not in models:
        raise InputError(f"model {kind!r}: expected one of {', '.join(models)}")
    return models[kind]


def create_model(kind: str, config: SocmapConfig) -> SocModel:
    """An unfitted model of ``kind`` configured from ``config`` (``train`` and ``models.<kind>`` options)."""
    return model_entry(kind).factory(config)


def save_model(model: SocModel, folder: str | Path) -> None:
    """Write ``folder/model.json`` (last) and the model's binary files, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inputs = model.require_inputs()
    (folder / MODEL_FILE).unlink(missing_ok=True)  # a half-replaced folder must not look like a model
    state = model.state(folder)
    manifest = {
        "format": "socmap-model",
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "model_id": model.model_id,
        **inputs.to_json(),
        "state": state,
    }
    write_json(folder / MODEL_FILE, manifest)


def read_manifest(folder: Path) -> dict[str, Any]:
    """``model.json`` of a model folder, with a clear error when missing or not JSON."""
    path = folder / MODEL_FILE
    if not path.is_file():
        raise InputError(f"model folder {folder}: {MODEL_FILE} is missing (is it a socmap run folder?)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"model file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(f"model file {path}: expected a JSON object")
    return data


def _upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """Model folders written before the model interface (a CNN-LSTM's flat model.json) -> current layout."""
    if "kind" in manifest:
        return manifest
    if "model" in manifest and "normalizer" in manifest:
        state: dict[str, Any] = {
            k: manifest[k]
            for k in ("model", "loss_type", "quantiles", "normalizer", "target_transform", "run", "seed")
            if k in manifest
        }
        state["best_epoch"] = manifest.get("best_epoch", -1)
        return manifest | {"kind": manifest["model"]["name"], "state": state}
    raise InputError("model.json names no model kind")


def load_model(folder: str | Path, expected_bands: list[str] | None = None) -> SocModel:
    """Load a model folder written by :func:`save_model`; refuses unknown kinds, band mismatches and any
    file that would execute code when loaded."""
    folder = Path(folder)
    try:
        manifest = _upgrade(read_manifest(folder))
        inputs = InputSpec.from_json(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise InputError(f"model file {folder / MODEL_FILE}: {exc}") from None
        raise InputError(f"model file {folder / MODEL_FILE} is incomplete ({exc!r} missing)") from None
    if expected_bands is not None:
        inputs.check_bands(expected_bands, str(folder))
    entry = model_entry(str(manifest["kind"]))
    try:
        model = entry.cls.from_state(folder, dict(manifest.get("state", {})), inputs)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(
            f"model file {folder / MODEL_FILE}: its {entry.kind} state is incomplete or invalid ({exc!r})"
        ) from None
    model.inputs = inputs
    model.model_id = str(manifest.get("model_id", manifest.get("state", {}).get("model_id", entry.kind)))
    return model
