"""One-off research scripts: each answers one question about the NIR's benefit or the CVM
(studies/README.md lists them with their answers). They import `benchmarks.bench_util` and the
kept benchmarks as before; their results go to `studies/results/` (`default_out`)."""

import os

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def default_out(name):
    """`studies/results/<name>.json`: where a study writes unless --out says otherwise."""
    return os.path.join(RESULTS_DIR, f"{name}.json")
