"""environment.yml, pyproject.toml, the README's two commands and .ci/run stay consistent."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_this_package_with_a_python_pyproject_allows():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    version = python.split("=", 1)[1]
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))
    assert "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    installs = [p for p in pip_section if p.startswith("-e .")]
    assert installs, "environment.yml must pip-install this package"
    extras = re.findall(r"\[(.*)\]", installs[0])
    for extra in extras[0].split(",") if extras else []:
        assert extra in PYPROJECT["project"]["optional-dependencies"], extra


def test_runtime_dependencies_pin_tensorflow_and_tensorboard_2_21():
    deps = PYPROJECT["project"]["dependencies"]
    assert any(d.startswith("tensorflow==2.21") for d in deps)
    assert any(d.startswith("tensorboard==2.21") for d in deps)  # TF 2.21 no longer pulls it in
    assert not any(re.match(r"(torch|stable-baselines3)\b", d) for d in deps)  # benchmark-only peers
    assert PYPROJECT["project"]["scripts"]["dqnlab"] == "dqnlab.cli:main"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set up\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md needs a '## Set up' section with a bash block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "scripts/headline_ab.py" in main_job
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_a_built_wheel_carries_the_presets_and_resolves_them_when_installed(tmp_path):
    """Not only editable installs: `pip install dqnlab` (a wheel) must resolve `huber_relu` too."""
    import subprocess
    import zipfile

    from dqnlab.config import load_preset, preset_names

    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path / "dist")], check=True)
    (wheel,) = (tmp_path / "dist").glob("dqnlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"dqnlab/agents/{name}.toml" for name in preset_names()} <= names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    code = (
        "import json, dqnlab.config as c; "
        "print(json.dumps([c.__file__, {n: c.load_preset(n).to_dict() for n in c.preset_names()}]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    where, presets = json.loads(out.stdout)
    assert Path(where).is_relative_to(site)  # the installed copy, not this checkout
    assert presets == {name: json.loads(json.dumps(load_preset(name).to_dict())) for name in preset_names()}
