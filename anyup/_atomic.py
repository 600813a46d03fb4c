"""Atomic file writes for the whole package: a temp file in the target's folder, then ``os.replace``.

A reader never sees a half-written file, and a failed write leaves no temp file behind. Temp files
are named ``.<name>.anyup-tmp-<pid>@<host>@<random><suffix>`` (hidden, recognisable, the writer's
process id and machine inside), so one killed with ``kill -9`` is found and removed by
:func:`clean_stale_temps` on the next run in that folder, while a live writer's temp file (or one
of another machine sharing the folder) is left alone.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMP_MARK = ".anyup-tmp-"
_TEMP_RE = re.compile(r"^\..*\.anyup-tmp-(\d+)@([^@/]*)@[^/]*$")
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64]  # temps of other machines are never removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_path(path: str | os.PathLike) -> Path:
    """A new empty temp file beside ``path`` (same folder, same suffix, recognisable name)."""
    path = Path(path)
    prefix = f".{path.stem}{TEMP_MARK}{os.getpid()}@{_HOST}@"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=path.suffix)
    os.close(fd)
    return Path(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temp file onto ``path``.

    The temp file keeps ``path``'s suffix, so writers that infer the format from it still work,
    and the result gets the usual permissions (``0o666`` minus the umask), not ``mkstemp``'s 0600.
    On any error (or ``KeyboardInterrupt``) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(temp_path(path))
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove temp files left in ``folder`` by writers that no longer run (e.g. killed); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(f".*{TEMP_MARK}*") if recursive else folder.glob(f".*{TEMP_MARK}*"):
        m = _TEMP_RE.match(p.name)
        if m and m.group(2) == _HOST and p.is_file() and not _alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def ensure_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove it is writable (before any work is done); clean stale temps."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{what} {str(folder)!r} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "write-test")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{what} {str(folder)!r} is not writable: {err.strerror or err}") from None
    clean_stale_temps(folder)
    return folder


_HELD_LOCKS: dict[str, int] = {}  # resolved folder -> open fd holding its flock (released at process exit)


def hold_folder_lock(folder: str | os.PathLike, what: str = "run folder") -> None:
    """Lock ``folder`` (``<folder>/.anyup.lock``, ``flock``) for the rest of this process.

    A second process asking for the same folder gets a one-line error naming the folder and the
    holder's pid at once; the lock dies with its process (a ``kill -9`` leaves no stale lock).
    Re-entrant within one process. Also removes temp files of dead writers under ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD_LOCKS:
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX (Windows): no lock, but still clean up
        clean_stale_temps(folder, recursive=True)
        return

    path = folder / ".anyup.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(
            f"{what} {str(folder)!r} is in use by another process (pid {holder}); wait for it to finish "
            f"or use another folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[key] = fd
    clean_stale_temps(folder, recursive=True)
