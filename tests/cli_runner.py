"""Run an entry point as a user does, without paying TensorFlow's start-up each time.

`run_cli(args, ...)` takes the arguments of `subprocess.run` the tests use and returns a
`subprocess.CompletedProcess` (text mode). A run of `python script ...` or
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Read when TensorFlow, NumPy or the interpreter start, so a run that sets them differently from
# the zygote's environment needs an interpreter of its own.
_STARTUP_PREFIXES = ("TF_", "CUDA", "XLA", "PYTHON", "OMP_", "KMP_", "OPENBLAS", "MKL", "LD_")
# Read at run time: a child may set these freely.
_RUNTIME_KEYS = {"TF_CONFIG"}

_zygote = None


def _zygote_env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _start_zygote():
    global _zygote
    if _zygote is None or _zygote.poll() is not None:
        _zygote = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_zygote"], cwd=ROOT, env=_zygote_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
    return _zygote


@atexit.register
def _stop_zygote():
    if _zygote is not None and _zygote.poll() is None:
        _zygote.stdin.close()
        _zygote.wait(timeout=30)


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


def _read_reply(zygote, timeout):
    ready, _, _ = select.select([zygote.stdout], [], [], timeout)
    if not ready:
        return None
    line = zygote.stdout.readline()
    if not line:
        raise RuntimeError("the CLI zygote (tests/cli_zygote.py) died; run the test alone to see why")
    return json.loads(line)


def run_cli(args, cwd=None, env=None, timeout=None, umask=None, **kwargs):
    """Like `subprocess.run(args, cwd=, env=, timeout=, capture_output=True, text=True)`;
    `umask` sets the child's umask (what tests did with preexec_fn)."""
    args = [str(arg) for arg in args]
    kwargs.pop("capture_output", None)
    kwargs.pop("text", None)
    kwargs.pop("check", None)
    env = dict(os.environ if env is None else env)
    cwd = os.path.abspath(cwd or os.getcwd())
    if not _forkable(args, env, kwargs):
        preexec = None if umask is None else (lambda: os.umask(umask))
        return subprocess.run(args, cwd=cwd, env=env, timeout=timeout, capture_output=True,
                              text=True, preexec_fn=preexec, **kwargs)
    zygote = _start_zygote()
    with tempfile.TemporaryDirectory() as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        request = {"argv": args[1:], "cwd": cwd, "env": env, "umask": umask, "stdout": out,
                   "stderr": err}
        zygote.stdin.write(json.dumps(request) + "\n")
        zygote.stdin.flush()
        pid = _read_reply(zygote, 60)["pid"]
        reply = _read_reply(zygote, timeout)
        if reply is None:
            os.killpg(pid, signal.SIGKILL)
            _read_reply(zygote, 60)
        stdout, stderr = (open(path, encoding="utf-8", errors="replace").read() for path in (out, err))
        if reply is None:
            raise subprocess.TimeoutExpired(args, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(args, reply["returncode"], stdout, stderr)
