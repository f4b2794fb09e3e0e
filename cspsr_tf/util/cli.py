"""Helpers shared by the absl entry points: quiet TF logs, one-line errors, exit code 2."""

import os
import sys

USAGE_ERROR = 2
# A run stopped before its end (SIGTERM) with its checkpoint saved: the same command resumes.
STOPPED_EARLY = 3


def quiet_tensorflow():
    """Imports TensorFlow without its C++ start-up noise on CPU machines.

    TF_CPP_MIN_LOG_LEVEL=2 hides most C++ logs, but the CUDA probing messages of TF 2.21
    ("Could not find cuda drivers", "failed call to cuInit") are written before the log level
    is read. They are harmless on a CPU-only machine, so the process's stderr is pointed at
    /dev/null while TensorFlow loads and looks for devices; Python errors are unaffected.
    TF 2.21 writes its oneDNN and CUDA lines before its log level is applied, so the variable
    alone does not hide them: an entry point that imports TensorFlow lazily (after checking
    its arguments) must call this just before that import, not only set the variable.
    Calling it again is free. Set CSPSR_VERBOSE_TF=1 to see everything.
    """
    # Level 3 also hides run-time C++ notices such as oneDNN's "supports DT_INT32 only on
    # platforms with AVX-512" (printed by a gradient op during training); a user who set a
    # lower level on purpose (0 or 1, to debug) keeps it.
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("", "2"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if os.environ.get("CSPSR_VERBOSE_TF") == "1" or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_library_logs():
    """Drops INFO lines of tensorflow_datasets from the absl log, keeping its warnings."""
    import logging as std_logging

    from absl import logging as absl_logging

    class _DropLibraryInfo(std_logging.Filter):
        def filter(self, record):
            noisy = "tensorflow_datasets" in record.pathname or "tensorflow/python" in record.pathname
            return record.levelno >= std_logging.WARNING or not noisy

    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())


def quiet_tfds_notices():
    """Drops TFDS's notice that `FeatureConnector.dtype` is deprecated from the absl log.

    TFDS 4.9 logs it about its own code (tensor_feature.decode_example) each time a split is
    read, several times a run: nothing a user of this project can act on.
    """
    import logging as std_logging

    from absl import logging as absl_logging

    class _DropDtypeNotice(std_logging.Filter):
        def filter(self, record):
            return "FeatureConnector.dtype` is deprecated" not in record.getMessage()

    absl_logging.get_absl_handler().addFilter(_DropDtypeNotice())


def quiet_dataset_progress():
    """No TFDS progress bars when stderr is not a terminal.

    The bars of a dataset's preparation redraw on every example: in a log file they bury the
    lines that matter, an error message among them.
    """
    if not sys.stderr.isatty():
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()


def fail(program, message, details=""):
    """Prints `details` (if any), then `program: error: message` on stderr; exits with code 2."""
    if details:
        print(details, file=sys.stderr)
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def run_main(main, program):
    """`absl.app.run(main)` with flag errors (a bad value, an unknown flag) as one line
    `program: error: ...` and exit code 2, like every other usage error."""
    from absl import app, flags

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            fail(program, str(error).splitlines()[0] if str(error) else type(error).__name__)

    app.run(main, flags_parser=parse)


def define_dataclass_flags(flags_module, fields, help_texts, defaults_none=False):
    """One absl flag per dataclass field (bool, int, float, str, optional int, float or str)."""
    for field in fields:
        default = None if defaults_none else field.default
        help_text = help_texts.get(field.name, field.name.replace("_", " "))
        if defaults_none:
            help_text += " (default: the preset's value)"
        kind = field.type
        if kind in (int | None, "int | None"):  # an optional integer, e.g. --cvm_patch_size
            kind = int
        if kind in (float | None, "float | None"):  # e.g. --synthetic_max_disparity
            kind = float
        if kind is bool:
            flags_module.DEFINE_bool(field.name, default, help_text)
        elif kind is int:
            flags_module.DEFINE_integer(field.name, default, help_text)
        elif kind is float:
            flags_module.DEFINE_float(field.name, default, help_text)
        else:
            flags_module.DEFINE_string(field.name, default, help_text)


def flag_values(flags_values, fields, only_set=False):
    """{field: value} from parsed flags; with only_set, just the flags given on the command line."""
    values = {}
    for field in fields:
        if only_set and not flags_values[field.name].present:
            continue
        values[field.name] = flags_values[field.name].value
    return values
