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

    Leaving the `with` block without `commit` (an error, an interrupt) removes every
    temporary file, so no target is ever half-written or left out of step with the others.

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
            file = os.fdopen(handle, "wb")
        except BaseException:
            os.close(handle)
            os.remove(tmp)
            raise
        self._staged.append((tmp, path, file))
        return file

    def commit(self):
        """Closes every staged file and renames it over its target."""
        for _, _, file in self._staged:
            file.close()
        for tmp, path, _ in self._staged:
            os.replace(tmp, path)
        self._staged = []

    def discard(self):
        for tmp, _, file in self._staged:
            file.close()
            if os.path.exists(tmp):
                os.remove(tmp)
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
