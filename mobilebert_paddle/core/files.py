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
from typing import Any, Iterator, Mapping

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
    (which `recover_directory` puts back). A symlinked `target` is written through to the
    directory it points to. Concurrent writers of one target take turns at the swap (a lock
    on the parent directory), and a failed swap removes its staging directory; the staging
    directory of a writer that was killed is removed by the next writer (remove_stale_staging).
    """
    target = Path(target)
    if target.is_symlink():   # replace what the link points to; the link itself stays
        target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent):               # another writer's cleaning cannot see ours unlocked
        recover_directory(target)
        remove_stale_staging(target)           # left by a writer that was killed
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        staging_lock = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(staging_lock, fcntl.LOCK_EX)   # ours until we end: remove_stale_staging leaves it alone
    try:
        os.chmod(staging, _default_mode(directory=True))
        yield staging
        with _locked(target.parent):   # two writers of one target swap in turn, the last one wins
            recover_directory(target)
            old = target.with_name(target.name + ".old")
            if target.exists():
                os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(staging_lock)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on `directory` itself (no lock file is left behind). A directory this
    process already holds with lock_directory (a run dir) is ours already: a second flock on it
    through another descriptor would wait for ourselves forever."""
    import fcntl

    if str(Path(directory).resolve()) in _LOCKED:
        yield
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)               # closing releases the lock


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


# Bounds on what is read whole into memory: far above any legitimate file of the kind, far
# below what a runaway input (/dev/zero, a multi-GB paste) would cost.
SMALL_FILE_BYTES = 16 << 20       # config.json, tokenizer_config.json, weight indexes, manifests
DATA_FILE_BYTES = 256 << 20       # SQuAD JSON, predictions (SQuAD v2.0 train is 40 MiB)
MAX_LINE_CHARS = 1 << 20          # one TSV row (GLUE rows are under 10 KB)


def read_bounded_text(path: str | os.PathLike, what: str, max_bytes: int) -> str:
    """A text file read whole, refused past `max_bytes` (read incrementally, so /dev/zero
    costs max_bytes at most); every failure is a UserInputError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise UserInputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserInputError(f"{path}: expected a {what}, found a directory") from None
    except OSError as error:
        raise UserInputError(f"{path}: cannot read {what} ({error.strerror or error})") from None
    if len(data) > max_bytes:
        raise UserInputError(f"{path}: {what} is larger than {max_bytes >> 20} MiB, more than any legitimate "
                             f"{what}; refused")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserInputError(f"{path}: {what} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def _refuse_constant(name: str):
    raise ValueError(f"non-finite number {name} (not valid JSON)")


def read_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = DATA_FILE_BYTES,
              allow_nan: bool = True) -> Any:
    """Read a JSON file; a missing, malformed, oversized or too deeply nested file is a
    UserInputError naming the place. `allow_nan=False` refuses NaN / Infinity."""
    path = Path(path)
    text = read_bounded_text(path, what, max_bytes)
    try:
        return json.loads(text, **({} if allow_nan else {"parse_constant": _refuse_constant}))
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise UserInputError(f"{path}: {what} is nested too deeply to be read (over ~1000 levels)") from None
    except ValueError as error:
        raise UserInputError(f"{path}: {what} holds a {error}") from None


def bounded_lines(handle, path: Path, max_chars: int = MAX_LINE_CHARS) -> Iterator[str]:
    """The lines of a text handle, each refused past `max_chars` (a file without newlines,
    such as /dev/zero, would otherwise be read whole as one line)."""
    number = 0
    while True:
        line = handle.readline(max_chars + 1)
        if not line:
            return
        number += 1
        if len(line) > max_chars:
            raise UserInputError(f"{path} line {number}: longer than {max_chars >> 20} M characters, "
                                 "more than any legitimate row; refused")
        yield line


def check_separate_dirs(inputs, output: str | os.PathLike, what: str = "the output",
                        source_label: str = "the source directory", *, output_may_be_inside: bool = False) -> None:
    """The one check that a command does not replace (or delete) its own inputs: refuse an
    output directory that is an input, lies inside an input directory, or holds an input (a
    file or a directory), since writing it replaces it whole. Symlinks and '..' are resolved first.

    `inputs` is one path (named `source_label`), or every input the command reads as a mapping
    {label: path or None} or a list of (label, path or None) pairs, e.g. {"--teacher": ...,
    "--data": ..., "--dev": None}; labels are what the user typed, so the message names the flag. `output_may_be_inside`: writing into a
    subdirectory of an input does not touch it (a run dir inside a data dir), so only an input
    inside the output (or equal to it) is refused."""
    if isinstance(inputs, Mapping):
        named = list(inputs.items())
    else:
        named = list(inputs) if isinstance(inputs, list) else [(source_label, inputs)]
    output_path = Path(output).resolve()
    for label, source in named:
        if source is None:
            continue
        source_path = Path(source).resolve()
        if output_path == source_path:
            raise UserInputError(f"{output}: {what} is {label} itself ({source}); choose another directory")
        if output_path in source_path.parents:
            raise UserInputError(f"{output}: {what} holds {label} {source}, and would be replaced whole; "
                                 "choose another directory")
        if source_path in output_path.parents and not output_may_be_inside:
            raise UserInputError(f"{output}: {what} is inside {label} {source}; choose a directory outside it")


def remove_stale_staging(target: str | os.PathLike) -> None:
    """Delete the staging directories `atomic_directory(target)` left when its process was killed
    (`.NAME.*.tmp` beside the target). A live writer holds a lock on its staging directory, so only
    those nobody holds are removed: a concurrent writer's work is never touched."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return
    for staging in parent.glob(f".{glob_escape(target.name)}.*.tmp"):
        if not staging.is_dir() or staging.is_symlink():
            continue
        try:
            descriptor = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)          # held: a writer is alive
            continue
        try:
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(descriptor)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
