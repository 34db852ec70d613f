#!/usr/bin/env python3
"""Generate the non-Bavaria example data sets (run: python tests/data/examples/data.py KIND OUT; tests call
make()).

Thin wrapper around :func:`socmap.examples.write_example`, so the tests and the README's "my own data" example
use the same files: ``nsw-ph`` (pH, UTM 55 South, projected sample coordinates) and ``nl-oc-percent`` (OC in %,
Dutch national grid, lat/lon sample coordinates); static covariates only, no sample dates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from socmap.examples import EXAMPLE_KINDS, ExampleResult, write_example

KINDS = tuple(EXAMPLE_KINDS)
PLAUSIBLE = {"nsw-ph": (3.0, 10.0), "nl-oc-percent": (0.1, 12.0)}  # a mapped value outside is a bug


def make(root: str | Path, kind: str, seed: int = 0, n_samples: int = 150) -> ExampleResult:
    """Write the example ``kind`` into ``root`` (a new folder)."""
    return write_example(root, kind, seed=seed, n_samples=n_samples)


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "nsw-ph"
    print(make(sys.argv[2] if len(sys.argv) > 2 else f"example-{kind}", kind).config)
