"""Atomic writes: every artifact is written to a temporary sibling and renamed into place.

A killed process therefore never leaves a file (or data-set folder) that looks complete. A write that fails
because the disk is full, over quota, read-only or not writable becomes one :class:`OutputError` line naming
the path, what was being written and, where known, the space it needs (:func:`writing`); the temporary file
is removed first, so nothing half-written remains under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from socmap.errors import OutputError

__all__ = [
    "atomic_dir",
    "atomic_file",
    "check_free_space",
    "check_output_dir",
    "ensure_writable_dir",
    "free_bytes",
    "output_failure",
    "write_json",
    "write_text",
    "writing",
]

#: errno -> the reason shown; the faults of the output location (not of socmap's input).
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
#: the same faults when a library reports them as text only (GDAL, torch's zip writer, numpy's short writes,
#: XGBoost's file stream).
_TEXT_REASONS = (
    (
        re.compile(
            r"no space left|requested and \d+ written|unexpected pos|file write failed|free disk space available"
            r"|write error|writeencoded\w* failed|filestream\.write incomplete",
            re.I,
        ),
        errno.ENOSPC,
    ),
    (re.compile(r"quota exceeded", re.I), errno.EDQUOT),
    (re.compile(r"read-only file system", re.I), errno.EROFS),
    (re.compile(r"permission denied", re.I), errno.EACCES),
)
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")
RESUME_HINT = "free space (or choose another output) and run again; map, train and cv continue with --resume"


def _size(n: float) -> str:
    """Bytes as a short human-readable figure (``3.2 MB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(path: str | Path) -> int | None:
    """Free bytes (for this user) on the file system that holds ``path`` (or its nearest existing parent)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _is_library_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a writer library's own error type that may carry a disk fault as text: GDAL's through
    rasterio (``CPLE_*``) or XGBoost's ``XGBoostError`` (a ValueError); neither is an OSError."""
    kind = type(exc)
    return kind.__module__.startswith(("rasterio", "xgboost")) or kind.__name__.startswith("CPLE_")


def _fault_errno(exc: BaseException) -> int | None:
    """The disk fault ``exc`` reports (ENOSPC, EDQUOT, EROFS, EACCES, EPERM), or None for any other error."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in DISK_ERRNOS:
        return int(code)
    if not isinstance(exc, (OSError, RuntimeError)) and not _is_library_error(exc):
        return None
    text = str(exc)
    for pattern, found in _TEXT_REASONS:
        if pattern.search(text):
            return found
    return None


def _fault(exc: BaseException, need: int | None) -> tuple[int, int | None] | None:
    """(errno, bytes needed) of a disk fault, None for any other error; numpy's short write tells the size."""
    code = _fault_errno(exc)
    if code is None:
        return None
    short = _SHORT_WRITE.search(str(exc))
    return code, need if need is not None or not short else int(short.group(1))


def _message(path: str | Path, what: str, code: int, need: int | None) -> str:
    """The one line for a disk fault; the free space is measured now (call it once the failed writer's file
    is closed and removed)."""
    if code not in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {what} {path}: {DISK_ERRNOS[code]}; make the folder writable or choose another output"
    free = free_bytes(path)
    parts = ([f"needs about {_size(need)}"] if need else []) + (
        [f"{_size(free)} free"] if free is not None else []
    )
    space = f" ({', '.join(parts)})" if parts else ""
    return f"cannot write {what} {path}: {DISK_ERRNOS[code]}{space}; {RESUME_HINT}"


def output_failure(
    exc: BaseException, path: str | Path, what: str, need: int | None = None
) -> OutputError | None:
    """The one-line error for a disk fault while writing ``what`` to ``path`` (None: not a disk fault).

    Args:
        exc: the exception raised by the writer.
        path: the file or folder being written (its final name).
        what: what it is, for the user (``map block``, ``training checkpoint``, ...).
        need: the bytes the write needs, when known.
    """
    fault = _fault(exc, need)
    return None if fault is None else OutputError(_message(path, what, *fault))


def _release(exc: BaseException | None) -> None:
    """Clear the finished frames of ``exc`` and the exceptions it chains: a failed writer's file object
    (torch's zip writer) lives in them, and the deleted temporary file takes space until it is closed."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


@contextlib.contextmanager
def writing(path: str | Path, what: str, need: int | None = None) -> Iterator[None]:
    """Turn a disk fault inside the block into one :class:`OutputError` line (for writers that write in place;
    :func:`atomic_file` and :func:`atomic_dir` already do it).

    The error is raised after the failed exception is released: a writer's frames (torch's zip writer) keep
    the deleted temporary file open until then, and the free space shown must be the space really free.
    """
    fault = None
    try:
        yield
    except Exception as exc:
        fault = _fault(exc, need)
        if fault is None:
            raise
        _release(exc)
    if fault is not None:
        raise OutputError(_message(path, what, *fault))


def check_free_space(folder: str | Path, need: int, what: str, refuse: bool = True) -> str | None:
    """Before a long write: refuse (``refuse``) or return a warning when ``folder``'s file system has less
    than ``need`` bytes free; None when there is room (or the free space is unknown)."""
    free = free_bytes(folder)
    if free is None or free >= need:
        return None
    text = f"{what} needs about {_size(need)} but {Path(folder)} has only {_size(free)} free"
    if refuse:
        raise OutputError(f"{text}; free space or choose another output")
    return text


def _describe(path: Path) -> str:
    """What a file is, from its suffix (for the one-line error of a failed write)."""
    kinds = {
        ".npy": "array",
        ".csv": "table",
        ".json": "metadata",
        ".pt": "checkpoint",
        ".tif": "GeoTIFF",
        ".png": "preview image",
        ".html": "report",
        ".md": "text",
        ".yaml": "config",
    }
    return kinds.get(path.suffix.lower(), "file")


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_file(path: str | Path, what: str | None = None, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it.

    A disk fault (full, over quota, read-only, not writable) becomes one :class:`OutputError` line naming
    ``path`` and ``what`` (default: from the suffix) and ``need`` bytes when given.
    """
    target = Path(path)
    with writing(target, what or _describe(target), need):
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
def atomic_dir(
    path: str | Path,
    overwrite: bool = False,
    marker: str | None = None,
    what: str = "folder",
    need: int | None = None,
) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``path`` only when complete.

    An existing non-empty ``path`` is refused unless ``overwrite``; it is then replaced only after the new
    folder is complete, so a failed run leaves the old one intact. A disk fault becomes one
    :class:`OutputError` line naming ``path``, ``what`` and ``need`` bytes when given.
    """
    target = check_output_dir(path, overwrite, marker)
    with writing(target, what, need), _built_dir(target) as tmp:
        yield tmp


@contextlib.contextmanager
def _built_dir(target: Path) -> Iterator[Path]:
    """The temporary sibling of :func:`atomic_dir`, renamed to ``target`` on success, deleted on error."""
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
