"""socmap: learn soil organic carbon from dated samples and covariate raster stacks, and map it."""

from __future__ import annotations

__version__ = "0.1.0"
