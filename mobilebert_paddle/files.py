"""File helpers shared by every command: atomic writes and checked JSON reads.

Nothing a command writes may be left half-written: files go to a temporary name in the
same directory and are renamed into place; directories are built beside the target and
swapped in with renames, so a kill at any moment leaves either the old or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserInputError


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) or raise UserInputError saying why it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as error:
        raise UserInputError(f"{path}: output directory is not writable ({error.strerror or error})") from None
    return path


def check_creatable_dir(path: str | os.PathLike) -> Path:
    """Check, creating nothing, that `path` is a writable directory or could be made one.

    Commands call this before reading their inputs and create the directory only once they
    have something to write, so a bad input leaves no empty output directory behind."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{path}: output directory is not writable (a file is in the way)")
    ancestor = next(candidate for candidate in (path, *path.absolute().parents) if candidate.exists())
    if not ancestor.is_dir():
        raise UserInputError(f"{path}: output directory is not writable ({ancestor} is a file)")
    try:
        tempfile.NamedTemporaryFile(dir=ancestor, prefix=".write-test-", delete=True).close()
    except OSError as error:
        raise UserInputError(f"{path}: output directory is not writable ({error.strerror or error})") from None
    return path


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (mkstemp and
    mkdtemp use 0600/0700, which would hide written models from other users)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp_name, _default_mode(directory=False))
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def atomic_write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Write numpy arrays as a safetensors file, atomically and with the umask's usual mode
    (safetensors' own save_file writes 0600 in place). A full disk raises OSError."""
    from safetensors.numpy import save

    atomic_write_bytes(path, save(tensors, metadata=metadata))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `target` in one rename.

    An existing `target` is first renamed aside and deleted only after the new one is in
    place, so an interruption leaves a complete directory at `target` or at `target.old`
    (which `recover_directory` puts back).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(staging, _default_mode(directory=True))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.with_name(target.name + ".old")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(target: str | os.PathLike) -> None:
    """Undo an `atomic_directory` swap that was interrupted between its two renames."""
    target = Path(target)
    old = target.with_name(target.name + ".old")
    if old.exists() and not target.exists():
        os.replace(old, target)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


# Directories this process holds locked: resolved path -> open descriptor of the directory.
_LOCKED: dict[str, int] = {}


def lock_directory(path: str | os.PathLike, what: str = "directory") -> None:
    """Hold an exclusive flock on the directory itself until release_directory or the process ends
    (no lock file: nothing is left behind, and a killed holder releases it). Another process
    holding it: UserInputError naming that process. Taking it again in this process is a no-op."""
    key = str(Path(path).resolve())
    if key in _LOCKED:
        return
    descriptor = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = lock_holder(descriptor)
        os.close(descriptor)
        by = f"process {holder}" if holder else "another process"
        raise UserInputError(f"{path}: {what} in use by {by}; wait for it to end or choose another") from None
    _LOCKED[key] = descriptor


def release_directory(path: str | os.PathLike) -> None:
    descriptor = _LOCKED.pop(str(Path(path).resolve()), None)
    if descriptor is not None:
        os.close(descriptor)       # closing the only descriptor releases the flock


def lock_holder(descriptor: int) -> int | None:
    """The pid holding a flock on the open file, from /proc/locks (Linux); None when unknown.
    A line reads `1: FLOCK  ADVISORY  WRITE 4242 08:02:1234567 0 EOF` (pid, then major:minor:inode)."""
    inode = os.fstat(descriptor).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        found = re.search(r"\bFLOCK\s+\S+\s+\S+\s+(\d+)\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s", line)
        if found and "->" not in line and int(found.group(2)) == inode and int(found.group(1)) != os.getpid():
            return int(found.group(1))
    return None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or malformed file is a UserInputError naming the place."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserInputError(f"{path}: expected a {what}, found a directory") from None
    except UnicodeDecodeError as error:
        raise UserInputError(f"{path}: {what} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise UserInputError(f"{path}: cannot read {what} ({error.strerror or error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
