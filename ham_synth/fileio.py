"""Atomic file writes: a reader, or a rerun after a kill or a full disk, finds the old file or the
new one, never half of one.

Every output a user or a rerun reads (config.json, metrics files, PNG grids, manifests, feature
caches, reports) is written through `atomic_write`: into a temporary file beside the target,
flushed to disk, then renamed onto it (a rename within a directory is atomic on POSIX).
"""

import contextlib
import fcntl
import json
import os
import pathlib
import re
import zipfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

# Temporary files end with this, so a glob for `*.png` or `*.npz` never picks one up.
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """An open file to write `path`'s new content to; it replaces `path` only when the block
    ends without an exception. Writers that pick a format from the file name (PIL, matplotlib,
    numpy) must be told it (`format="PNG"`), since the open file has none."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode {mode!r}; use 'w' or 'wb'.")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")  # target_name undoes this.
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def target_name(name: str) -> str:
    """The file name a temporary file of `atomic_write` stands for; other names unchanged."""
    if not name.endswith(TMP_SUFFIX):
        return name
    return re.sub(r"\.\d+$", "", name.removesuffix(TMP_SUFFIX))  # Drop the writer's pid.


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs) -> None:
    """`obj` as indented JSON and a final newline."""
    write_text(path, json.dumps(obj, indent=2, **dumps_kwargs) + "\n")


@contextlib.contextmanager
def exclusive_lock(path: pathlib.Path, holder: str) -> Iterator[None]:
    """Holds an exclusive lock on the file `path` (a workdir's) for the block; released on exit,
    and by the OS if the process dies. `holder` names what holds it ("study", "training run")
    in the error a second one gets."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise FileExistsError(
                f"Another {holder} is writing {path.parent} (its lock {path} is held by "
                f"{f.read().strip() or 'another process'}); wait for it, or use another --workdir."
            ) from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield


def read_npz(path: pathlib.Path, keys=None, fix: str = "") -> dict[str, np.ndarray]:
    """The arrays `keys` (default: all) of an .npz archive, read now, or a ValueError naming the
    file and `fix` when it is no archive (numpy's message for an HTML error page talks of pickled
    data), lacks a key, or an array does not read (truncated, a bad checksum, Python objects)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an .npz archive (a zip of .npy arrays); it may be a partial download "
            f"or another file under that name. {fix}"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = npz.files
            missing = [k for k in keys or () if k not in files]
            arrays = {} if missing else {k: npz[k] for k in (files if keys is None else keys)}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: an array does not read ({error}). {fix}") from error
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; it has {sorted(files)}. {fix}")
    return arrays
