"""The `dqnlab` command: presets, train, ab, sweep, compare, doctor, board.

Bad input (unknown preset, key, env id, malformed value, existing run directory) gets one line naming the
problem and exit status 2, never a traceback. TensorFlow is imported only once the input is known good.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from dqnlab.batch_plan import parse_batch_runs
from dqnlab.cliargs import (
    EXIT_BAD_INPUT,
    SEED,
    OneLineParser,
    directory,
    file_name,
    int_at_least,
    nonempty,
    one_line,
)
from dqnlab.config import (
    MAX_INT,
    ConfigError,
    check_env_fits,
    load_preset,
    preset_description,
    preset_names,
)
from dqnlab.rundir import RunDirExists
from dqnlab.signals import StopRequested, stop_on_signals

# Step counts end up in int64 counters (numpy, TensorFlow, TensorBoard's steps).
EXIT_NOT_ENOUGH_EVIDENCE = 3  # `dqnlab doctor`: no finding, but a rule lacked the points it needs
_positive_int, _nonneg_int = int_at_least(1, below=MAX_INT + 1), int_at_least(0, below=MAX_INT + 1)
# Each seed is a run per arm, with its own process and directory: the cap keeps a typo (--seeds 10**23)
# from planning more runs than memory holds before anything starts.
MAX_SEEDS = 10_000
ENV_ID = nonempty("a gymnasium id")


def _finite_float(text: str) -> float:
    """An argparse type: a finite number (nan would make every comparison false)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _check_common(args) -> None:
    """Flags that make sense only together, refused rather than ignored."""
    if args.resume and not args.name:
        raise ConfigError("--resume continues an experiment: give its --name")
    if args.resume and not (Path(args.logdir) / args.name).is_dir():
        raise ConfigError(f"--resume: there is no experiment {Path(args.logdir) / args.name} to continue")
    if args.checkpoint_replay and args.checkpoint_every == 0:
        raise ConfigError("--checkpoint-replay saves the replay in checkpoints, but --checkpoint-every is 0")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive_int, help="environment steps per run (default: the preset's)")
    p.add_argument(
        "--logdir", type=directory, default="runs", help="root of the run directories (default: runs)"
    )
    p.add_argument(
        "--name", type=nonempty("an experiment name"), help="experiment name (default: a timestamp)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a preset value, type-checked (repeatable), e.g. --set train.gamma=0.98",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "gpu"],
        help="where TensorFlow runs the learner (default: auto)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="bit-identical reruns on CPU: TensorFlow's deterministic ops and one thread",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_nonneg_int,
        default=10_000,
        metavar="STEPS",
        help="env steps between checkpoints (default: 10000; 0: none)",
    )
    p.add_argument(
        "--checkpoint-replay", action="store_true", help="also checkpoint the replay buffer (exact resume)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs of --name that are not done, from checkpoints",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _runs_options(p: argparse.ArgumentParser) -> None:
    """What `ab` and `sweep` share: envs, seeds, workers, backend, and the common options."""
    p.add_argument(
        "--env",
        dest="envs",
        action="append",
        type=ENV_ID,
        help="gymnasium id (repeatable; default: presets' env)",
    )
    p.add_argument(
        "--seeds",
        type=int_at_least(1, below=MAX_SEEDS + 1),
        default=3,
        help="seeds 0..N-1 for every arm (default: 3)",
    )
    p.add_argument("--workers", type=_positive_int, help="parallel processes (default: CPU count)")
    p.add_argument(
        "--backend",
        default="local",
        choices=["local", "ray"],
        help="where runs execute: local processes, or Ray tasks (default: local; see docs/cluster.md)",
    )
    p.add_argument(
        "--ray-address",
        type=nonempty("a Ray address (HOST:PORT)"),
        help="Ray cluster to join (default: start a local Ray)",
    )
    p.add_argument(
        "--batch-runs",
        type=parse_batch_runs,
        default=None,
        metavar="auto|off|N",
        help="train runs that share an architecture, env and steps as batches of up to N in one process "
        "(auto: each group split over --workers, or over the Ray cluster's CPUs, up to 32 a batch); plain "
        "Adam MLPs with dqnlab's losses only, the rest run one per process; each member checkpoints in its "
        "own run directory, and with --resume a batch continues as the batch it was (run.json's "
        "batched.members, whatever N and --workers say now) (default: off; docs/batched.md)",
    )
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dqnlab", description="A DQN debugging testbed: A/B the backward pass of DQN")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    sub.add_parser("presets", help="list the agent presets with their one-line description")

    t = sub.add_parser("train", help="train one preset on one env and seed")
    t.add_argument("preset", help="a name in agents/ or a path to a .toml preset")
    t.add_argument("--env", type=ENV_ID, help="gymnasium id (default: the preset's env)")
    # Below 2**31: numpy's seeds stop at 2**32, and the eval episodes seed from seed + 10_000 + step.
    t.add_argument("--seed", type=SEED, default=0)
    _common(t)

    a = sub.add_parser("ab", help="train presets x envs x seeds in parallel and compare them")
    a.add_argument("presets", nargs="+", metavar="PRESET", help="two or more presets (the arms)")
    _runs_options(a)

    _add_sweep(
        sub.add_parser("sweep", help="train a grid of cells (preset fields x seeds) and map the verdicts")
    )
    _add_compare(
        sub.add_parser(
            "compare", help="compare the arms of an experiment: returns, CIs, paired tests, diagnostics"
        )
    )
    _add_reading_commands(sub)
    return parser


def _add_sweep(w: argparse.ArgumentParser) -> None:
    w.add_argument(
        "presets", nargs="+", metavar="PRESET", help="one or more presets (several: one more axis)"
    )
    w.add_argument(
        "--grid",
        dest="grid",
        action="append",
        default=[],
        metavar="SECTION.KEY=V1,V2,...",
        help="an axis (repeatable): values, or log:START:STOP:N, lin:START:STOP:N; e.g. "
        "--grid optimizer.learning_rate=log:1e-4:1e-1:7",
    )
    w.add_argument(
        "--stop-on-fatal",
        action="store_true",
        help="stop a run when the doctor finds a fatal pathology (a whole layer dead, divergence); off by "
        "default",
    )
    w.add_argument(
        "--halving",
        type=int_at_least(2, below=1001),
        metavar="ETA",
        help="successive halving on the training return: at each rung keep the best 1/ETA of the cells; "
        "off by default",
    )
    w.add_argument(
        "--rungs",
        type=int_at_least(2, below=21),
        default=3,
        help="with --halving: rungs, the last at --steps, each ETA times the one before (default: 3)",
    )
    _runs_options(w)


def _add_compare(c: argparse.ArgumentParser) -> None:
    c.add_argument("directory", type=directory, help="an experiment directory (or one run)")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.add_argument(
        "--plot",
        type=file_name,
        metavar="FILE",
        help="also draw learning curves and diagnostics to FILE.png or FILE.html",
    )
    c.add_argument("--force", action="store_true", help="overwrite an existing --plot file")
    c.add_argument(
        "--map",
        action="store_true",
        help="a sweep's maps: the doctor's verdicts and a heat map per metric over its axes (--plot draws "
        "them)",
    )
    c.add_argument("--x", metavar="KEY", help="with --map: the axis along x (default: the first --grid)")
    c.add_argument("--y", metavar="KEY", help="with --map: the axis along y (default: the second)")
    c.add_argument(
        "--threshold",
        type=_finite_float,
        help="return counted as solved (default: the env's gymnasium reward_threshold)",
    )


def _add_reading_commands(sub) -> None:
    """doctor and board: they read runs, train nothing."""
    d = sub.add_parser(
        "doctor",
        help="diagnose a run or experiment: exit 0 healthy, 1 findings, 2 bad input, 3 not enough evidence",
    )
    d.add_argument("directory", type=directory, help="a run directory or an experiment directory")
    d.add_argument("--json", action="store_true", help="print the findings as JSON")

    b = sub.add_parser("board", help="serve TensorBoard on a run or experiment directory")
    b.add_argument("directory", type=directory, help="a run directory or an experiment directory")
    b.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    b.add_argument("--port", type=int_at_least(0), default=6006, help="port (default: 6006; 0: any free)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "ab", "sweep"):  # `kill` stops training like Ctrl-C: flushed, 'interrupted'
        stop_on_signals((signal.SIGTERM,))
    try:
        return {
            "presets": _presets,
            "train": _train,
            "ab": _ab,
            "sweep": _sweep,
            "compare": _compare,
            "doctor": _doctor,
            "board": _board,
        }[args.command](args)
    except (ConfigError, RunDirExists) as exc:
        print(f"dqnlab: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        how = f"stopped by {exc}" if isinstance(exc, StopRequested) else "interrupted"
        print(f"dqnlab: {how}; run.json of each unfinished run says 'interrupted'", file=sys.stderr)
        return 130


def _presets(args) -> int:
    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name.ljust(width)}  {preset_description(name)}")
    return 0


def _train(args) -> int:
    _check_common(args)
    from dqnlab.components import check_components
    from dqnlab.rundir import (
        check_experiment_path,
        check_resumable,
        check_run_dir_free,
        default_experiment_name,
        run_dir_for,
    )
    from dqnlab.runner import validate_env

    cfg = load_preset(args.preset, args.overrides)
    env_id = args.env or cfg.env
    check_env_fits(cfg, env_id)  # before the progress bar and TensorFlow: one line, exit 2
    validate_env(env_id)
    check_components(cfg, env_id)  # your own loss or network, if the preset names one: its contract
    name = args.name or default_experiment_name()
    check_experiment_path(args.logdir, name)
    run_dir = run_dir_for(args.logdir, name, cfg.name, env_id, args.seed)
    if args.resume:  # refused here, not after TensorFlow's 6 s of import
        check_resumable(run_dir, args.steps or cfg.train.steps)
    else:
        check_run_dir_free(run_dir)
    from dqnlab.progress import progress_bar
    from dqnlab.runspec import RunSpec
    from dqnlab.trainer import train_run  # imports TensorFlow: only after the input is known good

    steps = args.steps or cfg.train.steps
    with progress_bar(total=steps, unit="step", disable=args.quiet, dynamic_ncols=True, desc=cfg.name) as bar:

        def progress(step: int, episode_return: float | None) -> None:
            bar.update(step - bar.n)
            if episode_return is not None:
                bar.set_postfix_str(f"return {episode_return:.1f}", refresh=False)

        spec = RunSpec(
            args.preset,
            tuple(args.overrides),
            env_id,
            args.seed,
            steps,
            args.logdir,
            name,
            device=args.device,
            deterministic=args.deterministic,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            checkpoint_replay=args.checkpoint_replay,
        )
        try:
            res = train_run(spec, progress=progress, warn=lambda line: bar.write(line, file=sys.stderr))
        except Exception as exc:  # re-raised unless the run recorded it as its failure
            res = _recorded_failure(run_dir, exc)
            if res is None:
                raise
    eval_return = res.final.get("eval_return")
    shown = "-" if eval_return is None else f"{eval_return:.1f}"
    print(f"{res.status}: {res.run_dir}  final eval return {shown}", end="")
    print(f"  ({res.env_steps} env steps, {res.wall_time_s:.0f} s)")
    if res.error:
        print(f"  {res.error}")
    if where := res.info.get("raised_at"):
        print(f'  raised at {where}; the whole traceback is run.json\'s "traceback"')
    print(f"TensorBoard: dqnlab board {res.run_dir}")
    return 0 if res.status == "done" else 1


def _recorded_failure(run_dir: Path, exc: Exception):
    """The failed run's result when `exc` ended a run that recorded it (run.json 'failed' with its error and
    traceback: your env or network raised, say), as `ab` reports it; None for anything else (re-raised).
    `info["raised_at"]` is the innermost frame, where the error was raised."""
    from dqnlab.rundir import read_run

    try:
        res = read_run(run_dir)
    except (OSError, ConfigError):
        return None
    if res.status != "failed" or res.error != f"{type(exc).__name__}: {exc}":
        return None
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    res.info["raised_at"] = f"{frame.filename}:{frame.lineno} in {frame.name}"
    return res


def _ab(args) -> int:
    if len(args.presets) < 2:
        raise ConfigError("ab compares two or more presets; use `dqnlab train` for one")
    _check_common(args)
    _check_backend(args)
    from dqnlab.compare import compare, format_comparison
    from dqnlab.rundir import default_experiment_name
    from dqnlab.runner import plan_experiment

    name = args.name or default_experiment_name()
    specs, _ = plan_experiment(
        args.presets,
        args.envs,
        list(range(args.seeds)),
        args.steps,
        args.logdir,
        name,
        args.overrides,
        args.device,
        args.deterministic,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        checkpoint_replay=args.checkpoint_replay,
    )
    outcomes = _run(specs, args)
    exp_dir = Path(args.logdir) / name
    for outcome in outcomes:  # why each unfinished run stopped, before the table that counts them
        if outcome.status != "done":
            where = outcome.run_dir or f"{outcome.spec.preset} seed {outcome.spec.seed}"
            print(f"dqnlab: {where}: {outcome.status}: {outcome.error}", file=sys.stderr)
    print(format_comparison(compare(exp_dir)))
    print(f"\nRuns in {exp_dir}{os.sep}  (again, with plots: dqnlab compare {exp_dir} --plot report.html)")
    print(f"TensorBoard: dqnlab board {exp_dir}")
    return 0 if all(o.status == "done" for o in outcomes) else 1


def _check_backend(args) -> None:
    if args.ray_address and args.backend != "ray":
        raise ConfigError("--ray-address joins a Ray cluster: it needs --backend ray")
    if args.batch_runs is None:
        return
    if getattr(args, "halving", None) or getattr(args, "stop_on_fatal", False):
        raise ConfigError("--batch-runs does not combine with --halving or --stop-on-fatal yet")


def _run(specs, args):
    """Run the planned specs on the chosen backend; their outcomes, in order."""
    if args.backend == "ray":
        from dqnlab.ray_backend import run_experiment_ray

        return run_experiment_ray(
            specs, address=args.ray_address, quiet=args.quiet, batch_runs=args.batch_runs
        )
    from dqnlab.runner import run_experiment

    return run_experiment(specs, workers=args.workers, quiet=args.quiet, batch_runs=args.batch_runs)


def _sweep(args) -> int:
    _check_common(args)
    _check_backend(args)
    if args.rungs != 3 and not args.halving:
        raise ConfigError("--rungs sets successive halving's rungs: it needs --halving ETA")
    from dqnlab.rundir import default_experiment_name
    from dqnlab.sweep import parse_grid, plan_sweep

    axes = [parse_grid(text) for text in args.grid]
    name = args.name or default_experiment_name()
    specs, cells = plan_sweep(
        args.presets,
        axes,
        args.envs,
        list(range(args.seeds)),
        args.steps,
        args.logdir,
        name,
        args.overrides,
        args.device,
        args.deterministic,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        checkpoint_replay=args.checkpoint_replay,
        stop_on_fatal=args.stop_on_fatal,
    )
    if args.halving:
        from dqnlab.halving import for_halving, run_halving

        specs = for_halving(specs, args.halving, args.rungs)
        outcomes = run_halving(specs, args.halving, args.rungs, lambda rung: _run(rung, args))
    else:
        outcomes = _run(specs, args)
    exp_dir = Path(args.logdir) / name
    from dqnlab.early_stop import stopped_early

    for outcome in outcomes:  # why each unfinished run stopped, before the maps that show them
        if outcome.status != "done":
            where = outcome.run_dir or f"{outcome.spec.arm} seed {outcome.spec.seed}"
            print(f"dqnlab: {where}: {outcome.status}: {outcome.error}", file=sys.stderr)
    from dqnlab.maps import build_map, format_map

    sweep = build_map(exp_dir)
    print(format_map(sweep, sweep.layout()))
    print(f"\n{len(cells)} cells x {args.seeds} seeds in {exp_dir}{os.sep}")
    print(f"Maps: dqnlab compare {exp_dir} --map --plot map.html")
    print(f"TensorBoard: dqnlab board {exp_dir}")
    finished = all(o.status == "done" or (o.run_dir and stopped_early(Path(o.run_dir))) for o in outcomes)
    return 0 if finished else 1


def _compare(args) -> int:
    if (args.x or args.y) and not args.map:
        raise ConfigError("--x and --y lay out a sweep's maps: they need --map")
    from dqnlab.aggregate import refresh_aggregates
    from dqnlab.compare import compare, format_comparison, to_json

    if args.plot:
        from dqnlab.plots import check_plot_path

        check_plot_path(args.plot, overwrite=args.force)  # before the work, so a typo costs nothing
    if args.map:
        return _compare_map(args)
    comparison = compare(args.directory, threshold=args.threshold)
    refresh_aggregates(args.directory)
    if args.json:
        print(json.dumps(to_json(comparison), indent=2))
    else:
        print(format_comparison(comparison))
    if args.plot:
        from dqnlab.plots import write_plot

        written = write_plot(comparison, args.plot)
        print(f"plot: {written}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _compare_map(args) -> int:
    from dqnlab import maps

    if args.threshold is not None:
        raise ConfigError("--threshold is not used by --map (each env's own threshold is)")
    sweep = maps.build_map(args.directory)
    layout = sweep.layout(args.x, args.y)
    if args.json:
        print(json.dumps(maps.to_json(sweep, layout), indent=2))
    else:
        print(maps.format_map(sweep, layout))
    if args.plot:
        from dqnlab.mapplot import write_map

        written = write_map(sweep, layout, args.plot)
        print(f"map: {written}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _doctor(args) -> int:
    from dqnlab.compare import load_run_dirs
    from dqnlab.doctor import examine, format_report, to_json
    from dqnlab.rundir import read_run

    for run_dir in load_run_dirs(args.directory)[0]:
        read_run(run_dir)  # a run.json unlike dqnlab's: one line naming it, before the rules read it
    report = examine(args.directory)
    print(json.dumps(to_json(report), indent=2) if args.json else format_report(report))
    return {"healthy": 0, "findings": 1, "not enough evidence": EXIT_NOT_ENOUGH_EVIDENCE}[report.verdict]


def _board(args) -> int:
    from dqnlab.board import serve

    def ready(url: str) -> None:
        print(f"TensorBoard on {args.directory}: {url}  (Ctrl-C stops it)", flush=True)

    serve(args.directory, host=args.host, port=args.port, ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
