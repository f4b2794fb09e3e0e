"""Checks of output paths, free of TensorFlow (the command lines run them before it loads)."""

import os


def blocking_file(path):
    """The file (or other non-folder) at `path` or above it that keeps a folder from being made
    at `path`, or None when `path` is a folder or can be made.

    The command lines check their output folders (--model_dir, --data_dir, --out_dir, --out)
    with it before any slow work, to refuse in one line what os.makedirs would refuse with
    `[Errno 17] File exists` or `[Errno 20] Not a directory`.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    while True:
        if os.path.lexists(path):
            return None if os.path.isdir(path) else path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
