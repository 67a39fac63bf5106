"""Nothing dqnlab reads back can run code: no unsafe deserialization anywhere in the package.

ruff's flake8-bandit rules for it: S301 (pickle, dill, shelve, jsonpickle loads), S302 (marshal), S307
(eval), S102 (exec), S506 (yaml.load without a safe loader). Checkpoints are JSON and `.npz` read with
`allow_pickle=False` (docs/resume.md). The one `exec` in the package (`learner.MetricReader.finish`, marked)
runs source written from the class's own templates and integer indices only, as `dataclasses` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dqnlab

PACKAGE = Path(dqnlab.__file__).parent
UNSAFE = "S301,S302,S307,S102,S506"


def test_ruff_finds_no_unsafe_deserialization_in_the_package():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", UNSAFE, str(PACKAGE)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_rules_do_catch_a_pickle_load(tmp_path):
    """The check above is not vacuous: the same command flags the load the first checkpoint format had."""
    (tmp_path / "loader.py").write_text("import pickle\n\n\ndef load(f):\n    return pickle.load(f)\n")
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", UNSAFE, str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 1 and "S301" in out.stdout, out.stdout + out.stderr


def test_no_module_of_the_package_imports_pickle():
    importing = [p.name for p in PACKAGE.glob("*.py") if "import pickle" in p.read_text()]
    assert importing == []
