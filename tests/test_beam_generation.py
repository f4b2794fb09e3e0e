"""Apache Beam generation of the manual builders equals their in-process generation.

Each builder's dummy data is built twice, in process (the default) and through Beam, and the
examples are compared (ids, pixels, geometry, keypoints). Beam runs on its FnApiRunner, the
in-process engine of the DirectRunner: `runner=DirectRunner` first tries Prism, a Go binary it
downloads from GitHub (offline: a failed download, then the FnApiRunner all the same), so
naming the FnApiRunner keeps the test in process and offline.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from datasets import _common, _testing
from datasets.nirscene import nirscene_dataset_builder as nirscene
from datasets.nirvis_folder import nirvis_folder_dataset_builder as nirvis_folder
from datasets.ranus import ranus_dataset_builder as ranus
from datasets.rgb_nir_stereo import rgb_nir_stereo_dataset_builder as rgb_nir_stereo

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def pins(path) -> dict[str, str]:
    """{package name, normalised and without extras: version} of the `name==version` lines."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?==([^\s#;]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3)
    return found


def test_beam_requirements_agree_with_requirements_txt():
    """requirements-beam.txt (also the workers' requirements file) repeats requirements.txt's
    pins; a version bumped in one only would build with other packages on the workers."""
    beam_pins = pins(REPO_ROOT / "requirements-beam.txt")
    base_pins = pins(REPO_ROOT / "requirements.txt")
    assert "apache-beam" in beam_pins
    for name, version in beam_pins.items():
        assert name in base_pins, f"{name} is pinned in requirements-beam.txt only"
        assert base_pins[name] == version, f"{name}: {version} vs {base_pins[name]}"


try:
    import apache_beam as beam
except ImportError:  # The default (in-process) generation does not need it.
    beam = None
requires_beam = pytest.mark.skipif(
    beam is None,
    reason="apache_beam is not installed (pip install -r requirements-beam.txt): "
    "Beam generation cannot be tested",
)

BUILDERS = {
    "rgb_nir_stereo": rgb_nir_stereo,
    "nirscene": nirscene,
    "ranus": ranus,
    "nirvis_folder": nirvis_folder,
}


def dummy_dir(module):
    return _testing.dummy_dir(module.__file__)


def beam_options():
    return beam.options.pipeline_options.PipelineOptions(["--runner=FnApiRunner"])


def build(module, data_dir, options=None):
    builder = module.Builder(data_dir=str(data_dir))
    config = tfds.download.DownloadConfig(
        manual_dir=str(dummy_dir(module)),
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
        beam_options=options,
    )
    builder.download_and_prepare(download_config=config)
    return builder


def examples_by_id(builder) -> dict[str, dict[str, dict]]:
    return {
        split: {ex["id"]: ex for ex in _testing.load_split(builder, split)}
        for split in builder.info.splits
    }


@pytest.fixture
def generators_seen(monkeypatch):
    """For each build, {split: whether its generator is a Beam PTransform}."""
    seen = []
    original = _common.BeamWhenAsked.examples_per_split

    def spy(self, splits, make_example):
        result = original(self, splits, make_example)
        # Booleans only: Beam pickles `_common` (this spy included) with the example function.
        seen.append({split: isinstance(g, beam.PTransform) for split, g in result.items()})
        return result

    monkeypatch.setattr(_common.BeamWhenAsked, "examples_per_split", spy)
    return seen


@requires_beam
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_beam_examples_equal_in_process_examples(name, tmp_path, generators_seen):
    module = BUILDERS[name]
    in_process = examples_by_id(build(module, tmp_path / "in_process"))
    with_beam = examples_by_id(build(module, tmp_path / "beam", beam_options()))

    # The first build yielded in process, the second went through Beam.
    plain, piped = generators_seen
    assert not any(plain.values()) and all(piped.values())

    assert in_process.keys() == with_beam.keys()
    for split, examples in in_process.items():
        assert examples and examples.keys() == with_beam[split].keys(), split
        for example_id, expected in examples.items():
            got = with_beam[split][example_id]
            assert got.keys() == expected.keys()
            for key, value in expected.items():
                if isinstance(value, np.ndarray):
                    assert got[key].dtype == value.dtype, (example_id, key)
                    np.testing.assert_array_equal(got[key], value, err_msg=f"{example_id} {key}")
                else:
                    assert got[key] == value, (example_id, key)
    if name == "rgb_nir_stereo":  # The keypoints came through Beam too.
        assert with_beam["test"]["20170224_0742/240742_000010"]["keypoints"].shape == (3, 4)


def test_without_beam_options_nothing_imports_apache_beam(tmp_path):
    """The default build neither needs nor imports apache_beam."""
    code = (
        "import sys, tensorflow_datasets as tfds\n"
        "from datasets.nirvis_folder import nirvis_folder_dataset_builder as m\n"
        f"b = m.Builder(data_dir={str(tmp_path)!r})\n"
        "b.download_and_prepare(download_config=tfds.download.DownloadConfig(\n"
        f"    manual_dir={str(dummy_dir(nirvis_folder))!r},\n"
        "    compute_stats=tfds.download.ComputeStatsMode.SKIP))\n"
        "print('BEAM_IMPORTED', 'apache_beam' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
    )
    assert "BEAM_IMPORTED False" in result.stdout, result.stderr[-3000:]


@requires_beam
def test_example_function_runs_where_the_repository_is_not_importable():
    """Remote Beam workers have the requirements, not this repository: the example function
    and `_common` travel by value (as Beam pickles them once Beam was asked for)."""
    from apache_beam.internal import pickler

    module = rgb_nir_stereo
    _common._pickle_by_value(module, _common)
    collection_dir = dummy_dir(module) / "rgbnir_stereo" / "data" / "20170224_0742"
    payload = pickler.dumps(
        (module.frame_example, ("20170224_0742", "240742_000010", str(collection_dir)))
    )
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('datasets') is None, 'the repository is importable'\n"
        "from apache_beam.internal import pickler\n"
        "fn, item = pickler.loads(sys.stdin.buffer.read())\n"
        "key, ex = fn(item)\n"
        "print('RESULT', key, ex['keypoints'].tolist(), len(ex['vis']))\n"
    )
    with tempfile.TemporaryDirectory() as elsewhere:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        result = subprocess.run(
            [sys.executable, "-c", code],
            input=payload,
            capture_output=True,
            cwd=elsewhere,
            env=env,
            timeout=300,
        )
    stdout = result.stdout.decode()
    assert "RESULT 20170224_0742/240742_000010 [[5.0, 7.0, 1.0, 0.0]" in stdout, (
        result.stderr.decode()[-3000:]
    )
