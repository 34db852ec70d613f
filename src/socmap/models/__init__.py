"""Models: one interface (:class:`SocModel`) for deep and tree models, a registry and safe persistence.

Modules: ``base`` (the interface and typed records), ``registry`` (register, create, save, load), ``zoo`` (the
built-in kinds), ``features`` (window features), ``trees`` (rf, qrf, xgb, linear), ``networks`` (torch
networks), ``trainer`` (the deep training loop), ``deep`` (deep models), ``ensemble`` (blends), ``geostat``
(ordinary and regression kriging).
"""

from __future__ import annotations

from socmap.models.base import (
    PRECISIONS,
    PREDICT_BATCH,
    FitData,
    FitInfo,
    InputSpec,
    MemberFit,
    SocModel,
    TargetInfo,
    check_precision,
    predict_located,
    read_rows,
)
from socmap.models.registry import (
    MODEL_FILE,
    ModelEntry,
    available_models,
    create_model,
    load_model,
    model_entry,
    register_model,
    save_model,
)

__all__ = [
    "MODEL_FILE",
    "PRECISIONS",
    "PREDICT_BATCH",
    "FitData",
    "FitInfo",
    "InputSpec",
    "MemberFit",
    "ModelEntry",
    "SocModel",
    "TargetInfo",
    "available_models",
    "check_precision",
    "create_model",
    "load_model",
    "model_entry",
    "predict_located",
    "read_rows",
    "register_model",
    "save_model",
]
