"""Run an entry point as a user does, without paying TensorFlow's start-up each time.

`run_cli(args, ...)` takes the arguments of `subprocess.run` the tests use and returns a
`subprocess.CompletedProcess` (text mode); `start_cli(args, ...)` is its `subprocess.Popen`
(for tests that signal or overlap runs). A run of `python script ...` or
`python -m module ...` goes to `tests/cli_zygote.py`, a process per pytest worker that has
imported TensorFlow once and forks a child per run; anything else (`python -c`, stdin input,
an environment that changes what is read when TensorFlow loads) starts a fresh interpreter.
"""

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Read when TensorFlow, NumPy or the interpreter start, so a run that sets them differently from
# the zygote's environment needs an interpreter of its own.
_STARTUP_PREFIXES = ("TF_", "CUDA", "XLA", "PYTHON", "OMP_", "KMP_", "OPENBLAS", "MKL", "LD_")
# Read at run time: a child may set these freely.
_RUNTIME_KEYS = {"TF_CONFIG"}


def _zygote_env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


class _Zygote:
    """The client end of tests/cli_zygote.py: requests out, {"pid", "returncode"} back."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_zygote"], cwd=ROOT, env=_zygote_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.pending = b""
        self.returncodes = {}

    def start(self, request):
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = self._read(deadline - time.monotonic())
            if started:
                return started[0]["pid"]
        raise RuntimeError("the CLI zygote (tests/cli_zygote.py) did not start the run within 60 s")

    def returncode(self, pid, timeout):
        """The child's exit status, waiting up to `timeout` s (None: forever); None if still running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.returncodes:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._read(left)
            if pid not in self.returncodes and left == 0.0:
                return None
        return self.returncodes[pid]

    def _read(self, timeout):
        """Reads what the zygote has said within `timeout` s; returns the start replies."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return []
        chunk = os.read(self.process.stdout.fileno(), 65536)
        if not chunk:
            raise RuntimeError("the CLI zygote (tests/cli_zygote.py) died; run the test alone to see why")
        self.pending += chunk
        started = []
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            reply = json.loads(line)
            if "returncode" in reply:
                self.returncodes[reply["pid"]] = reply["returncode"]
            else:
                started.append(reply)
        return started

    def stop(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


_zygote = None


def _get_zygote():
    global _zygote
    if _zygote is None or _zygote.process.poll() is not None:
        _zygote = _Zygote()
    return _zygote


@atexit.register
def _stop_zygote():
    if _zygote is not None:
        _zygote.stop()


def _forkable(args, env, kwargs):
    if kwargs or len(args) < 2 or args[0] != sys.executable or args[1] == "-c":
        return False
    base = _zygote_env()
    for key in set(env) | set(base):
        if key in _RUNTIME_KEYS or env.get(key) == base.get(key):
            continue
        if key.startswith(_STARTUP_PREFIXES):
            return False
    return True


class CliProcess:
    """A forked entry-point run with the part of `subprocess.Popen` the tests use; its stdout
    and stderr go to files, read as text."""

    def __init__(self, args, cwd, env, umask):
        self.args = args
        self._folder = tempfile.TemporaryDirectory()
        self.stdout_path = os.path.join(self._folder.name, "stdout")
        self.stderr_path = os.path.join(self._folder.name, "stderr")
        self._zygote = _get_zygote()
        self.pid = self._zygote.start({
            "argv": args[1:], "cwd": cwd, "env": env, "umask": umask,
            "stdout": self.stdout_path, "stderr": self.stderr_path,
        })
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid, 0)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum):
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self):
        """SIGKILL to the child and whatever it started (it leads its own process group)."""
        if self.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)

    def read(self, name):
        """What the child wrote so far to `name` ("stdout" or "stderr")."""
        path = self.stdout_path if name == "stdout" else self.stderr_path
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                return file.read()
        except FileNotFoundError:
            return ""

    def stderr_lines(self, timeout=None):
        """The child's stderr line by line as it is written, until it ends (TimeoutExpired if it
        runs past `timeout` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        offset = 0
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout, stderr=self.read("stderr"))
            done = self.poll() is not None
            text = self.read("stderr")
            while "\n" in text[offset:]:
                end = text.index("\n", offset) + 1
                yield text[offset:end]
                offset = end
            if done:
                if text[offset:]:
                    yield text[offset:]
                return
            time.sleep(0.05)

    def communicate(self, timeout=None):
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired as error:
            error.output, error.stderr = self.read("stdout"), self.read("stderr")
            raise
        return self.read("stdout"), self.read("stderr")

    def __del__(self):
        if self.returncode is None and self._zygote.process.poll() is None:
            try:
                self.kill()
                self.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._folder.cleanup()


def start_cli(args, cwd=None, env=None, umask=None):
    """`subprocess.Popen(args, cwd=, env=)` through the zygote (a CliProcess); `args` must run
    `python script ...` or `python -m module ...` with the zygote's start-up environment."""
    args = [str(arg) for arg in args]
    env = dict(os.environ if env is None else env)
    if not _forkable(args, env, {}):
        raise ValueError(f"start_cli cannot fork {args[:3]} with this environment: use subprocess.Popen")
    return CliProcess(args, os.path.abspath(cwd or os.getcwd()), env, umask)


def run_cli(args, cwd=None, env=None, timeout=None, umask=None, fresh_interpreter=False, **kwargs):
    """Like `subprocess.run(args, cwd=, env=, timeout=, capture_output=True, text=True)`;
    `umask` sets the child's umask (what tests did with preexec_fn). `fresh_interpreter=True`
    starts a new interpreter, for a test of what TensorFlow prints while it loads (in the
    zygote it loaded before the run)."""
    args = [str(arg) for arg in args]
    for ignored in ("capture_output", "text"):  # what run_cli always does
        kwargs.pop(ignored, None)
    if kwargs.get("check") is False:  # check=True is left to subprocess.run
        kwargs.pop("check")
    env = dict(os.environ if env is None else env)
    cwd = os.path.abspath(cwd or os.getcwd())
    if fresh_interpreter or not _forkable(args, env, kwargs):
        preexec = None if umask is None else (lambda: os.umask(umask))
        return subprocess.run(args, cwd=cwd, env=env, timeout=timeout, capture_output=True,
                              text=True, preexec_fn=preexec, **kwargs)
    process = CliProcess(args, cwd, env, umask)
    try:
        stdout, stderr = process.communicate(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(60)
        raise
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
