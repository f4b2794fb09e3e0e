"""A process that imports TensorFlow once and forks one child per command-line run.

Each test that runs an entry point (train.py, evaluate.py, predict, the exporters) as a user
does would pay 4-6 s of Python and TensorFlow start-up, about 60 times a suite. This process
pays it once per pytest worker: it imports the libraries the entry points use (never an entry
point itself, whose flags must be defined by its own run) and then, for each request, forks a
child that runs the script as `__main__` with its own argv, working folder, environment, umask
and stdout / stderr files, as `python script ...` would. The child is a separate process with
its own exit code, so a test sees what a user sees; only the start-up is shared. No TensorFlow
op runs here before a fork (only the device probe every entry point makes), so each child
builds its own runtime.

Protocol (one JSON object a line): a request {"argv", "cwd", "env", "umask", "stdout",
"stderr"} on stdin is answered by {"pid"} at once, and {"pid", "returncode"} when that child
ends (children may overlap).
`tests/cli_runner.py` is the client.
"""

import atexit
import json
import os
import runpy
import select
import sys
import traceback

from cspsr_tf.util.cli import quiet_tensorflow

# TensorFlow loads as the entry points load it (quietly, devices probed), then what they import
# (Keras, TFDS, OpenCV and the library), so no child pays for it. The CLI modules themselves
# (cspsr_tf.predict, cspsr_tf.demo) are not imported: running them as __main__ defines their flags.
quiet_tensorflow()

import cv2  # noqa: E402, F401
import keras  # noqa: E402, F401
import numpy  # noqa: E402, F401
import tensorflow  # noqa: E402, F401
import tensorflow_datasets  # noqa: E402, F401

import cspsr_tf.data.pipeline  # noqa: E402, F401
import cspsr_tf.evaluate.evaluation  # noqa: E402, F401
import cspsr_tf.export.litert_export  # noqa: E402, F401
import cspsr_tf.export.savedmodel_export  # noqa: E402, F401
import cspsr_tf.infer.tiling  # noqa: E402, F401
import cspsr_tf.model.build  # noqa: E402, F401
import cspsr_tf.train.loop  # noqa: E402, F401


def _exit_code(error):
    """The exit status Python gives a SystemExit, as the interpreter maps it."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def _run_child(request):
    os.setpgid(0, 0)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request["umask"] is not None:
        os.umask(request["umask"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    argv = request["argv"]
    code = 1
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.argv = [argv[0], *argv[1:]]
            sys.path[0] = os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as error:
        code = _exit_code(error)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _reply(message):
    os.write(1, (json.dumps(message) + "\n").encode())


def main():
    # Several children may run at once (the multi-worker test starts two), so requests are read
    # and ended children reaped in one loop; raw reads, as select() does not see buffered lines.
    pending = b""
    children = 0
    while True:
        ready, _, _ = select.select([0], [], [], 0.05 if children else None)
        if ready:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    _run_child(json.loads(line))
                children += 1
                _reply({"pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children -= 1
            _reply({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
