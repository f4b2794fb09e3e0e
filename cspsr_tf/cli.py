"""Helpers shared by the absl entry points: quiet TF logs, one-line errors, exit code 2."""

import os
import sys

USAGE_ERROR = 2


def quiet_tensorflow():
    """Hides TensorFlow's C++ start-up noise (CUDA probing on CPU machines)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def quiet_library_logs():
    """Drops INFO lines of tensorflow_datasets from the absl log, keeping its warnings."""
    import logging as std_logging

    from absl import logging as absl_logging

    class _DropLibraryInfo(std_logging.Filter):
        def filter(self, record):
            noisy = "tensorflow_datasets" in record.pathname or "tensorflow/python" in record.pathname
            return record.levelno >= std_logging.WARNING or not noisy

    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())


def fail(program, message):
    """Prints `program: error: message` on stderr and exits with code 2."""
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def define_dataclass_flags(flags_module, fields, help_texts, defaults_none=False):
    """One absl flag per dataclass field (bool, int, float, str, or optional str)."""
    for field in fields:
        default = None if defaults_none else field.default
        help_text = help_texts.get(field.name, field.name.replace("_", " "))
        if defaults_none:
            help_text += " (default: the preset's value)"
        kind = field.type
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
