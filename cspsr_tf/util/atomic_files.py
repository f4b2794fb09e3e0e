"""Writing files so that a reader never sees a half-written one, with ordinary permissions.

A file is written under a hidden temporary name in its target folder and renamed over the
target only once complete. `tempfile.mkstemp` creates that temporary file with mode 0600,
which the rename would carry over to the target (turning a 0644 file into 0600); every
staged file here gets the mode a plain `open(path, "w")` would give a new file instead:
0666 minus the process umask.
"""

import os
import tempfile

TEMP_PREFIX = ".tmp-"
# How a staged file's descriptor becomes a file object (tests put a full disk behind it).
_fdopen = os.fdopen


def _umask():
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting, then restore at once
    os.umask(mask)
    return mask


def new_file_mode():
    """The mode `open(path, "w")` gives a new file: 0666 minus the umask."""
    return 0o666 & ~_umask()


class StagedFiles:
    """Several files written under temporary names and renamed together by `commit`.

    Leaving the `with` block without `commit` (an error, an interrupt, a full disk) removes
    every temporary file, so no target is ever half-written or left out of step with the
    others. (A SIGTERM kills a Python process without unwinding unless a handler turns it
    into an exception, as `cspsr_tf.predict` does.)

        with StagedFiles() as staged:
            f = staged.open("out/sr.png")
            f.write(data)
            staged.commit()
    """

    def __init__(self):
        self._staged = []  # (temporary path, target path, open file)

    def open(self, path):
        """A new binary file for `path`, in the same folder (created when missing)."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, tmp = tempfile.mkstemp(
            prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=folder
        )
        try:
            os.fchmod(handle, new_file_mode())
            file = _fdopen(handle, "wb")
        except BaseException:
            os.close(handle)
            os.remove(tmp)
            raise
        self._staged.append((tmp, path, file))
        return file

    def commit(self):
        """Closes every staged file and renames it over its target.

        Raises:
            OSError: closing (the last buffered bytes reach the disk: a full disk fails here)
                or renaming failed; its `filename` is the target's path. The temporary files
                are still staged, so leaving the `with` block removes them.
        """
        for _, path, file in self._staged:
            try:
                file.close()
            except OSError as error:
                error.filename = path
                raise
        for tmp, path, _ in self._staged:
            try:
                os.replace(tmp, path)
            except OSError as error:
                error.filename = path
                raise
        self._staged = []

    def discard(self):
        """Closes and removes every temporary file; never raises for a file that cannot be
        flushed (a full disk) or is already gone, so that every one of them is removed."""
        for tmp, _, file in self._staged:
            try:
                # A full disk fails the flush again; the file descriptor is closed anyway.
                file.close()
            except OSError:
                pass
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # e.g. the folder was made read-only meanwhile: nothing more to do
        self._staged = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()
        return False


def write_bytes(path, data):
    """Writes `data` to `path` atomically (temporary file, then rename)."""
    with StagedFiles() as staged:
        staged.open(path).write(data)
        staged.commit()


def write_text(path, text, encoding="utf-8"):
    """Writes `text` to `path` atomically (temporary file, then rename)."""
    write_bytes(path, text.encode(encoding))
