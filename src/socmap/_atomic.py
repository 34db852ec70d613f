"""Atomic writes: every artifact is written to a temporary sibling and renamed into place.

A killed process therefore never leaves a file (or data-set folder) that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from socmap.errors import OutputError


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it."""
    target = Path(path)
    tmp = _tmp_sibling(target, is_dir=False)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_output_dir(path: str | Path, overwrite: bool, marker: str | None = None) -> Path:
    """Refuse an existing non-empty output folder unless ``overwrite``; prove the location is writable.

    With ``marker`` (a file every socmap output of this kind holds), ``overwrite`` only ever replaces a
    folder that has it: a mistyped --out can never delete an unrelated folder.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
        if marker is not None and not (out / marker).exists():
            raise OutputError(
                f"output folder {out} is not empty and holds no {marker} of a socmap output; refusing to replace "
                "it: choose a new or empty --out"
            )
    ensure_writable_dir(out.resolve().parent, f"output folder {out}")
    return out


def ensure_writable_dir(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write a probe file in it; any failure becomes one OutputError line."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".socmap-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"{what}: cannot write in {folder} ({reason})") from None


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False, marker: str | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``path`` only when complete.

    An existing non-empty ``path`` is refused unless ``overwrite``; it is then replaced only after the new
    folder is complete, so a failed run leaves the old one intact.
    """
    target = check_output_dir(path, overwrite, marker)
    tmp = _tmp_sibling(target, is_dir=True)
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if target.exists():
            trash = _tmp_sibling(target.with_name(target.name + ".old"), is_dir=True)
            os.replace(target, trash / target.name)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
