"""Hidden scratch directories beside a target, and the safe removal of those a killed process left.

A writer (an export, a dataset rebuild) works in `<parent>/<prefix>XXXXXXXX` made by
`locked_scratch_dir`, which holds an exclusive `flock` on the directory for as long as the
writer runs. The kernel drops the lock when the process ends, however it ends (kill -9
included), so `remove_stale` can tell a directory left behind (lock free) from one a live
writer is using (lock held) and deletes only the former. Where `fcntl` is missing (Windows)
nothing is locked and nothing is removed.
"""

import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid

from absl import logging

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# A scratch directory younger than this is left alone: it may belong to a writer that has
# made it but not yet taken its lock (microseconds in practice).
GRACE_SECONDS = 10.0
# tempfile.mkdtemp's random part: 8 characters of this set.
_RANDOM_PART = r"[a-z0-9_]{8}"


def _try_lock(path):
    """An fd holding an exclusive lock on the directory `path`, or None when it is held."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def locked_scratch_dir(parent, prefix):
    """Yields a new directory `<parent>/<prefix>XXXXXXXX`, locked while the block runs.

    On leaving the block the directory is deleted if it is still there (the writer renames it
    into place on success, so what is left is a failed attempt).
    """
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    fd = _try_lock(path) if fcntl is not None else None
    try:
        yield path
    finally:
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def remove_stale(parent, prefix, grace_seconds=GRACE_SECONDS):
    """Deletes `<parent>/<prefix>XXXXXXXX` directories whose writer is gone; returns them.

    Only names `locked_scratch_dir(parent, prefix)` makes are considered, and only those
    whose lock is free and which are older than `grace_seconds`.
    """
    if fcntl is None or not os.path.isdir(parent):
        return []
    pattern = re.compile(re.escape(prefix) + _RANDOM_PART + r"\Z")
    removed = []
    for entry in os.scandir(parent):
        if not pattern.match(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < grace_seconds:
                continue
            fd = _try_lock(entry.path)
        except OSError:
            continue  # gone meanwhile, or not ours to open
        if fd is None:
            continue  # a live writer holds it
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)
        logging.info("Removed %s, left by an interrupted run", entry.path)
        removed.append(entry.path)
    return removed


def move_into_place(tmp_dir, out_dir, overwrite):
    """Renames the finished `tmp_dir` to `out_dir` (same parent).

    With `overwrite`, an existing `out_dir` is moved aside, replaced, then deleted (and put
    back if the rename fails), so `out_dir` is never missing or half-written. Without it, an
    `out_dir` that appeared meanwhile raises FileExistsError.
    """
    if not os.path.lexists(out_dir):
        os.rename(tmp_dir, out_dir)
        return
    if not overwrite:
        raise FileExistsError(f"Target already exists (use overwrite to replace it): {out_dir}")
    parent, name = os.path.split(out_dir)
    old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out_dir, old)
    try:
        os.rename(tmp_dir, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    try:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old)
        else:
            os.remove(old)
    except OSError as error:
        logging.warning("Replaced %s but could not delete the old copy %s: %s", out_dir, old, error)
