"""`dqnlab sweep`: a grid over any preset field, each cell an arm of one experiment.

    dqnlab sweep huber_relu --grid optimizer.learning_rate=1e-4,1e-3,1e-2 --grid network.bias_init=0,-1,-3

An axis is `section.key=` a list of TOML values (`1e-3,1e-2`; a list value in brackets: `[64,64],[256]`),
or a range: `log:START:STOP:N` (N values evenly spaced in log, 3 significant digits) or `lin:START:STOP:N`;
integer endpoints give integers. `env` is an axis too (`--grid env=CartPole-v1,dqnlab/CartPole-reward100-v1`),
and several presets are one more axis, `preset`. Every value is type-checked against each preset before
anything runs (one line, exit 2, like `--set`).

A cell is its preset with its values as overrides, applied after `--set`, under a readable name that is also
its directory, run.json's `preset` and HParams' `preset`: `huber_relu@learning_rate=0.001,bias_init=-1`.
The runs are planned by `dqnlab.runner.plan_arms` and run like `dqnlab ab`'s (local processes or Ray), so
compare, doctor, board and `--resume` read a sweep as any other experiment; experiment.json's `runs` keep
each cell's overrides, which is where `dqnlab compare --map` (dqnlab.maps) finds the axes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from dqnlab.config import ConfigError, parse_override
from dqnlab.envs import env_dirname
from dqnlab.runner import ArmPlan, RunSpec, arm_config, plan_arms

PRESET_AXIS = "preset"  # the axis of several presets given at once
ENV_KEY = "env"
MAX_RANGE_POINTS = 1_000
MAX_CELLS = 10_000  # a typo (log:1e-4:1:100000) is refused before 100k configs are loaded
MAX_NAME_BYTES = 255  # one directory name on common file systems
_RANGE = re.compile(r"^(?P<kind>log|lin):(?P<start>[^:]+):(?P<stop>[^:]+):(?P<n>[^:]+)$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_SAFE = re.compile(r"[^A-Za-z0-9._+=-]")


@dataclass(frozen=True)
class Axis:
    """One axis of a grid: a preset key (or `preset`) and its values, as TOML text, in the order given."""

    key: str
    values: tuple[str, ...]

    @property
    def short(self) -> str:
        return self.key.rpartition(".")[2]


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a preset, its overrides (`key=value`), its name and its coordinates."""

    preset: str
    overrides: tuple[str, ...]
    name: str
    coords: tuple[tuple[str, str], ...]  # (axis key, value text), the preset axis included


def parse_grid(text: str) -> Axis:
    """'optimizer.learning_rate=1e-4,1e-3' or '...=log:1e-4:1e-1:7' -> an Axis (ConfigError if malformed)."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or "." not in key and key != ENV_KEY:
        raise ConfigError(f"--grid {text!r}: expected section.key=v1,v2,... (or a range, log:1e-4:1e-1:7)")
    if not raw:
        raise ConfigError(f"--grid {text!r}: no values after '='")
    match = _RANGE.match(raw)
    values = _range(text, match) if match else _split_values(text, raw)
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ConfigError(f"--grid {text!r}: a value is given twice ({', '.join(duplicates)})")
    return Axis(key, tuple(values))


def _split_values(text: str, raw: str) -> list[str]:
    """Split on the commas outside brackets (a list value: [64,64]); an empty value is an error."""
    values, depth, current = [], 0, ""
    for char in raw:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if depth != 0:
        raise ConfigError(f"--grid {text!r}: unbalanced brackets")
    if not all(values):
        raise ConfigError(f"--grid {text!r}: an empty value (two commas in a row, or one at an end)")
    return values


def _range(text: str, match: re.Match) -> list[str]:
    """The values of `log:START:STOP:N` or `lin:START:STOP:N`, formatted as TOML numbers."""
    kind, start, stop, n = match["kind"], match["start"], match["stop"], match["n"]
    where = f"--grid {text!r}"
    if not _INTEGER.match(n) or not 1 <= int(n) <= MAX_RANGE_POINTS:
        raise ConfigError(f"{where}: N must be an integer from 1 to {MAX_RANGE_POINTS}, got {n!r}")
    try:
        a, b = float(start), float(stop)
    except ValueError:
        raise ConfigError(f"{where}: START and STOP must be numbers, got {start!r} and {stop!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ConfigError(f"{where}: START and STOP must be finite numbers")
    if kind == "log" and (a <= 0 or b <= 0):
        raise ConfigError(f"{where}: a log range needs START and STOP > 0")
    count = int(n)
    fractions = [i / (count - 1) for i in range(count)] if count > 1 else [0.0]
    if kind == "log":
        points = [math.exp(math.log(a) + f * (math.log(b) - math.log(a))) for f in fractions]
    else:
        points = [a + f * (b - a) for f in fractions]
    if _INTEGER.match(start) and _INTEGER.match(stop):  # integer endpoints: an integer field's range
        values = [str(round(p)) for p in points]
    else:
        digits = 3 if kind == "log" else 6
        values = [_number(p, digits) for p in points]
    if len(set(values)) < len(values):
        raise ConfigError(f"{where}: {count} points round to repeated values ({', '.join(values)})")
    return values


def _number(x: float, digits: int) -> str:
    """`x` at `digits` significant digits, as Python and TOML write a float ('0.000316', '1000.0')."""
    return repr(float(f"{x:.{digits}g}"))


def check_axes(presets: list[str], axes: list[Axis], overrides: list[str], envs: list[str] | None) -> None:
    """Every axis names a distinct key not also given to --set, and every value fits every preset: one
    line naming the --grid value and what is wrong."""
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise ConfigError(f"--grid {key}: the same key is given twice; give its values in one --grid")
        if any(parse_override(o)[0] == key for o in overrides):
            raise ConfigError(f"--grid {key}: also given to --set; a cell would override it")
    if envs and ENV_KEY in keys:
        raise ConfigError("--grid env=... and --env both choose the env: give one of them")
    for axis in axes:
        for value in axis.values:
            for preset in presets:
                try:
                    arm_config(preset, [*overrides, f"{axis.key}={value}"])
                except ConfigError as exc:
                    why = str(exc).removeprefix("--set ")
                    raise ConfigError(f"--grid {axis.key}={value} ({preset}): {why}") from None


def cells(presets: list[str], axes: list[Axis]) -> list[Cell]:
    """The cells of the grid: presets x the axes' values, the first axis varying slowest."""
    if len(set(presets)) != len(presets):
        raise ConfigError(f"a preset is given twice: {' '.join(presets)}")
    count = len(presets) * math.prod(len(a.values) for a in axes)
    if count > MAX_CELLS:
        raise ConfigError(f"--grid: {count:,} cells, more than {MAX_CELLS:,}: use fewer values")
    shorts = [a.short for a in axes]
    labels = [a.short if shorts.count(a.short) == 1 else a.key for a in axes]  # unambiguous and short
    out = []
    for preset in presets:
        for values in product(*(a.values for a in axes)):
            parts = [f"{label}={_safe(a, v)}" for label, a, v in zip(labels, axes, values, strict=True)]
            name = f"{Path(preset).stem}@{','.join(parts)}" if parts else Path(preset).stem
            coords = tuple((a.key, v) for a, v in zip(axes, values, strict=True))
            if len(presets) > 1:
                coords += ((PRESET_AXIS, preset),)
            overrides = tuple(f"{a.key}={v}" for a, v in zip(axes, values, strict=True))
            out.append(Cell(preset, overrides, name, coords))
    _check_names(out)
    return out


def _safe(axis: Axis, value: str) -> str:
    """A value as it reads in a directory name: env ids as their directories, lists as 64x64."""
    if axis.key == ENV_KEY:
        value = env_dirname(value)
    value = value.replace(" ", "").strip("[]\"'").replace(",", "x")
    return _SAFE.sub("_", value)


def _check_names(cells_: list[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells_:
        if len(cell.name.encode()) > MAX_NAME_BYTES:
            raise ConfigError(
                f"--grid: the cell name {cell.name[:60]}... is {len(cell.name.encode())} bytes, more than a "
                f"directory name holds ({MAX_NAME_BYTES}): use fewer or shorter values"
            )
        if cell.name in seen:
            raise ConfigError(
                f"--grid: two cells would share the directory {cell.name} "
                f"({' '.join(seen[cell.name].overrides)} and {' '.join(cell.overrides)})"
            )
        seen[cell.name] = cell


def plan_sweep(
    presets: list[str],
    axes: list[Axis],
    envs: list[str] | None,
    seeds: list[int],
    steps: int | None,
    logdir: str | Path,
    experiment: str,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    deterministic: bool = False,
    *,
    resume: bool = False,
    checkpoint_every: int = 10_000,
    checkpoint_replay: bool = False,
    stop_on_fatal: bool = False,
) -> tuple[list[RunSpec], list[Cell]]:
    """Validate the grid and return the sweep's runs (and its cells), before any process or file exists."""
    if not presets:
        raise ConfigError("give at least one preset")
    if not axes and len(presets) < 2:
        raise ConfigError("a sweep needs --grid section.key=v1,v2,... (or two presets)")
    check_axes(presets, axes, list(overrides), envs)
    grid = cells(presets, axes)
    arms = []
    for cell in grid:
        try:  # a combination of values can break a cross-field rule (batch_size > capacity)
            cfg = arm_config(cell.preset, [*overrides, *cell.overrides], cell.name)
        except ConfigError as exc:
            raise ConfigError(f"cell {cell.name}: {str(exc).removeprefix('--set ')}") from None
        arms.append(ArmPlan(cell.preset, cell.overrides, cell.name, tuple(envs or [cfg.env])))
    specs, _ = plan_arms(
        arms,
        envs,
        seeds,
        steps,
        logdir,
        experiment,
        overrides,
        device,
        deterministic,
        resume=resume,
        checkpoint_every=checkpoint_every,
        checkpoint_replay=checkpoint_replay,
        stop_on_fatal=stop_on_fatal,
    )
    return specs, grid


def run_script(sweep_args: list[str], defaults: dict[str, str], argv: list[str], prog: str) -> int:
    """What scripts/sweep_*.py do: `dqnlab sweep` with their grid, `defaults` (e.g. {"--seeds": "2"}) for
    the options not in `argv`, the rest of `argv` passed on as it is; the wall time printed; then, with
    `--map FILE`, the maps drawn there by `dqnlab compare --map` (an existing FILE needs --force)."""
    import time

    from dqnlab.cli import main
    from dqnlab.cliargs import OneLineParser, output_file_problem
    from dqnlab.rundir import default_experiment_name

    parser = OneLineParser(prog=prog, description="a sweep of dqnlab's, then its map")
    parser.add_argument("--map", metavar="FILE", help="draw the maps to FILE.png or FILE.html")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --map file")
    parser.add_argument("--x", help="the map's x axis (default: the first --grid)")
    parser.add_argument("--y", help="the map's y axis (default: the second)")
    parser.add_argument("--name", default=default_experiment_name(), help="experiment name")
    parser.add_argument("--logdir", default="runs", help="root of the run directories (default: runs)")
    args, rest = parser.parse_known_args(argv)
    if problem := output_file_problem(args.map, args.force, "--map"):
        parser.error(problem)
    if args.map and Path(args.map).suffix.lower() not in (".png", ".html"):
        parser.error(f"--map wants a .png or .html file, got {Path(args.map).name!r}")
    given = {flag for flag in defaults if any(a == flag or a.startswith(f"{flag}=") for a in rest)}
    extra = [part for flag, value in defaults.items() if flag not in given for part in (flag, value)]
    started = time.perf_counter()
    code = main(["sweep", *sweep_args, *extra, *rest, "--name", args.name, "--logdir", args.logdir])
    if code == 2:  # bad input: its one line is all there is to say
        return code
    print(f"sweep wall time: {time.perf_counter() - started:.0f} s")
    if args.map is None:
        return code
    layout = [*(["--x", args.x] if args.x else []), *(["--y", args.y] if args.y else [])]
    exp = str(Path(args.logdir) / args.name)
    mapped = main(
        ["compare", exp, "--map", *layout, "--plot", args.map, *(["--force"] if args.force else [])]
    )
    return code or mapped
