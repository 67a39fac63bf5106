"""Shared pieces of the throughput benchmarks (scripts/bench_*.py stay thin); not a command of its own.

Imported by the scripts next to it as `import bench` (Python puts a script's own folder first on
`sys.path`; the tests get this folder from pytest's `pythonpath` setting in pyproject.toml). Run as a file
it is the child process of `measure_in_subprocess`.

Public DQN settings, written once in neutral terms so dqnlab and a peer library are configured identically.
Each names the reference it mirrors (`reference`): the library whose users run it that way, and so the peer a
learning-curve comparison (scripts/parity.py) or a speed ratio must be taken against.
- `cleanrl` (CartPole-v1, reference CleanRL): CleanRL's `cleanrl/dqn.py` at its published defaults, field by
  field (each value's source line is quoted beside it): 120-84 ReLU MLP, MSE loss, no gradient clipping, Adam
  (epsilon 1e-8), batch 128, one update every 10 env steps, target sync every 500, learning from step 10,000,
  epsilon 1 -> 0.05 over half the run, PyTorch's default nn.Linear init. SB3's DQN cannot run it (its loss is
  always smooth L1), so it is not an SB3 setting: the peer is CleanRL's own script.
- `sb3_cleanrl_like` (CartPole-v1, reference SB3): SB3's DQN given CleanRL's network and cadence (120-84,
  batch 128, one update every 10 env steps, target every 500, lr 2.5e-4, buffer 10k) but SB3's own loss
  (Huber), its global-norm clip at 10, learning from step 1,000 and epsilon over 5,000 steps. Not CleanRL:
  the timing benchmark's former `cleanrl`, renamed for what it is (#21).
- `sb3_zoo` (CartPole-v1, reference SB3): SB3 rl-zoo's tuned CartPole DQN (256-256, batch 64, 128 gradient
  steps every 256 env steps, target every 10 env steps).
- `lunar_zoo` (LunarLander-v3, needs the box2d extra): SB3 rl-zoo's tuned LunarLander DQN (256-256, batch
  128, 4 gradient steps every 4 env steps -- the zoo's train_freq 4 with gradient_steps -1 --, target every
  250, buffer 50k).
- `pong_zoo` (ALE/Pong-v5, needs the atari extra): SB3 rl-zoo's `atari` DQN on the Nature CNN (batch 32, one
  update every 4 env steps, target every 1,000, lr 1e-4, buffer 100k) on dqnlab's preprocessing
  (`pong_huber`'s [atari] section: sticky actions 0.25, frame skip 4, 84x84 grayscale, 4 frames stacked);
  SB3 is given the same env object and its `CnnPolicy` (NatureCNN, linear head).
The SB3 settings start learning after 1,000 steps (the zoo's LunarLander uses 0, its Atari 100k), so that a
short benchmark measures the learning phase; both peers get the same value. Every setting gives dqnlab
PyTorch's default initialisation (`network.kernel_init` and `network.bias_init_kind` = "torch_default":
W and b ~ U(+-1/sqrt(fan_in)), what nn.Linear and nn.Conv2d draw, and what SB3's DQN policies keep) and
Adam's epsilon 1e-8 (torch's default, which SB3 and CleanRL keep). The scripts default to `sb3_cleanrl_like`
and `sb3_zoo`; `--settings lunar_zoo` or `pong_zoo` adds the others, and `cleanrl` runs in the dqnlab-only
scripts (bench_throughput.py; bench_peers.py refuses it, having no CleanRL to run).

Measurements for the scripts run one per fresh subprocess (`measure_in_subprocess`), so TensorFlow and
torch never share a process, each limited to one thread: TF intra-op = inter-op = 1, torch
`set_num_threads(1)` and `set_num_interop_threads(1)`, and OMP/OPENBLAS/MKL_NUM_THREADS=1 in the child's
environment. What is timed:
- dqnlab: the whole `dqnlab.train()` call: env creation, network build, tf.function tracing, run dir and
  run.json, acting, replay, update bursts, TensorBoard summaries (diagnostics when on) and the one final
  greedy evaluation episode. Importing TensorFlow and dqnlab is not timed.
- SB3: the whole `model.learn()` call: env reset, logger setup, acting, replay and updates. Building the
  `DQN(...)` object (its env and networks) is not timed (it is reported apart as `setup_s`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple


@dataclass(frozen=True)
class Setting:
    hidden: tuple[int, ...]
    batch_size: int
    train_every: int  # env steps between bursts
    gradient_steps: int  # updates per burst
    target_update_every: int  # env steps
    learning_rate: float
    buffer_size: int
    learning_starts: int
    gamma: float = 0.99
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 5_000
    env: str = "CartPole-v1"
    preset: str = "huber_relu"  # dqnlab's preset the setting overrides (its network kind, [atari], loss)
    reference: str = "sb3"  # the library whose users run this setting: "sb3" or "cleanrl"
    loss: str = "huber"  # SB3's DQN: F.smooth_l1_loss, i.e. Huber with kappa 1, always
    grad_clip_norm: float = 10.0  # SB3's DQN max_grad_norm default (0: no clipping)
    adam_epsilon: float = 1e-8  # torch.optim.Adam's default eps, which SB3 and CleanRL keep
    init: str = "torch_default"  # nn.Linear / nn.Conv2d's own init, which SB3's DQN and CleanRL keep
    epsilon_decay_fraction: float | None = None  # the decay as a fraction of the run (ignores decay_steps)

    def decay_steps(self, steps: int) -> int:
        """Env steps of the linear epsilon decay in a run of `steps`."""
        if self.epsilon_decay_fraction is None:
            return self.epsilon_decay_steps
        return max(1, round(self.epsilon_decay_fraction * steps))


# CleanRL's published defaults: vwxyzjn/cleanrl, cleanrl/dqn.py at commit 020cf0e5 (its argparse defaults, the
# QNetwork, the training loop); each value's line is quoted. Semantics checked against that loop: `dones`
# there is terminated or truncated, but SB3's ReplayBuffer(handle_timeout_termination=True) that CleanRL
# stores into bootstraps a time limit, as dqnlab does; it trains when `global_step > learning_starts` and
# `global_step % train_frequency == 0` with global_step counted from 0 (dqnlab counts env steps from 1, so
# its first update comes 10 env steps earlier: step 10,000 against CleanRL's global_step 10,010, i.e. 10,011
# transitions stored), and syncs the target on `global_step % target_network_frequency == 0` inside the same
# `> learning_starts` block (dqnlab: every 500 env steps once an update has happened).
CLEANRL = Setting(
    # `nn.Linear(np.array(env.single_observation_space.shape).prod(), 120)`, `nn.Linear(120, 84)`
    hidden=(120, 84),
    batch_size=128,  # `parser.add_argument("--batch-size", type=int, default=128,`
    train_every=10,  # `parser.add_argument("--train-frequency", type=int, default=10,`
    gradient_steps=1,  # one `optimizer.step()` per `global_step % args.train_frequency == 0`
    target_update_every=500,  # `parser.add_argument("--target-network-frequency", type=int, default=500,`
    learning_rate=2.5e-4,  # `parser.add_argument("--learning-rate", type=float, default=2.5e-4,`
    buffer_size=10_000,  # `parser.add_argument("--buffer-size", type=int, default=10000,`
    learning_starts=10_000,  # `parser.add_argument("--learning-starts", type=int, default=10000,`
    gamma=0.99,  # `parser.add_argument("--gamma", type=float, default=0.99,`
    epsilon_end=0.05,  # `parser.add_argument("--end-e", type=float, default=0.05,` (--start-e default=1)
    epsilon_decay_fraction=0.5,  # `parser.add_argument("--exploration-fraction", type=float, default=0.5,`
    env="CartPole-v1",  # `parser.add_argument("--env-id", type=str, default="CartPole-v1",`
    reference="cleanrl",
    # `loss = F.mse_loss(td_target, old_val)`: mean of delta^2. dqnlab's `squared` is 0.5 delta^2, half the
    # gradient; Adam's step is invariant to a constant scale of the loss but for its epsilon (1e-8 here, far
    # below sqrt(v) once training runs), so the two train alike.
    loss="squared",
    grad_clip_norm=0.0,  # no clipping: `loss.backward()` then `optimizer.step()`, no clip_grad_norm_
    adam_epsilon=1e-8,  # `optim.Adam(q_network.parameters(), lr=args.learning_rate)`: torch's default eps
    init="torch_default",  # the QNetwork's nn.Linear layers keep PyTorch's default init
)
# (--tau default=1.: hard target copies, dqnlab's target_tau 1.0; no Double DQN: `target_network(...).max`.)

SETTINGS = {
    "cleanrl": CLEANRL,
    "sb3_cleanrl_like": Setting(
        hidden=(120, 84),
        batch_size=128,
        train_every=10,
        gradient_steps=1,
        target_update_every=500,
        learning_rate=2.5e-4,
        buffer_size=10_000,
        learning_starts=1_000,
    ),
    "sb3_zoo": Setting(
        hidden=(256, 256),
        batch_size=64,
        train_every=256,
        gradient_steps=128,
        target_update_every=10,
        learning_rate=2.3e-3,
        buffer_size=100_000,
        learning_starts=1_000,
        epsilon_end=0.04,
        epsilon_decay_steps=8_000,
    ),
    "lunar_zoo": Setting(
        hidden=(256, 256),
        batch_size=128,
        train_every=4,
        gradient_steps=4,
        target_update_every=250,
        learning_rate=6.3e-4,
        buffer_size=50_000,
        learning_starts=1_000,
        epsilon_end=0.1,
        epsilon_decay_steps=12_000,  # the zoo's exploration_fraction 0.12 of 1e5 steps
        env="LunarLander-v3",
    ),
    "pong_zoo": Setting(
        hidden=(512,),  # the Nature CNN's dense layer (SB3's NatureCNN features)
        batch_size=32,
        train_every=4,
        gradient_steps=1,
        target_update_every=1_000,
        learning_rate=1e-4,
        buffer_size=100_000,
        learning_starts=1_000,
        epsilon_end=0.01,
        env="ALE/Pong-v5",
        preset="pong_huber",
    ),
}
# CartPole only: the others need the box2d or atari extra; `cleanrl` has no SB3 peer (see above).
DEFAULT_SETTINGS = ("sb3_cleanrl_like", "sb3_zoo")


def dqnlab_overrides(setting: Setting, diagnostics: bool, steps: int) -> dict[str, object]:
    """The setting's preset (huber_relu, or pong_huber) with the setting's network, init, loss, optimizer and
    cadence, for a run of `steps` env steps (a decay given as a fraction of the run needs them)."""
    return {
        "network.hidden": list(setting.hidden),
        "network.kernel_init": setting.init,
        "network.bias_init_kind": setting.init,
        "loss.kind": setting.loss,
        "optimizer.epsilon": setting.adam_epsilon,
        "train.grad_clip_norm": setting.grad_clip_norm,
        "train.batch_size": setting.batch_size,
        "train.train_every": setting.train_every,
        "train.gradient_steps": setting.gradient_steps,
        "train.target_update_every": setting.target_update_every,
        "train.learning_starts": setting.learning_starts,
        "train.gamma": setting.gamma,
        "train.epsilon_end": setting.epsilon_end,
        "train.epsilon_decay_steps": setting.decay_steps(steps),
        "train.eval_every": 0,
        "train.eval_episodes": 1,
        "optimizer.learning_rate": setting.learning_rate,
        "replay.capacity": setting.buffer_size,
        "diagnostics.enabled": diagnostics,
    }


def dqnlab_steps_per_s(setting_name: str, steps: int, diagnostics: bool, logdir: str, seed: int = 0) -> float:
    """Env steps per second of a whole dqnlab training run (acting, replay, updates, logging)."""
    import dqnlab
    from dqnlab.config import load_preset

    setting = SETTINGS[setting_name]
    cfg = load_preset(setting.preset, dqnlab_overrides(setting, diagnostics, steps))
    train = dqnlab.train  # resolve the lazy import (TensorFlow, Keras) before the clock starts
    start = time.perf_counter()
    res = train(
        cfg,
        env=setting.env,
        seed=seed,
        steps=steps,
        logdir=logdir,
        name=f"bench-{setting_name}-{'diag' if diagnostics else 'nodiag'}-{seed}",
    )
    elapsed = time.perf_counter() - start
    if res.status != "done":
        raise RuntimeError(f"benchmark run ended {res.status}: {res.error}")
    return steps / elapsed


# -- the peer: Stable-Baselines3 (benchmark-only; imported inside functions) ---------------------------

SB3_INSTALL_HINT = (
    "stable-baselines3 is not installed (a benchmark-only dependency): install a CPU torch first, "
    "`pip install torch==2.13.0` (a CPU build; elsewhere take torch from PyTorch's CPU wheel index), "
    "then `pip install -e '.[bench]'`"
)


def sb3_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "stable_baselines3"))


def sb3_kwargs(setting: Setting, steps: int, seed: int) -> dict[str, object]:
    """DQN(...) keyword arguments mapping `setting` field by field (Huber = SB3's smooth_l1 loss). On Atari
    SB3's CnnPolicy is NatureCNN (its 512-unit layer is `hidden`) with a linear head: no `net_arch`. A
    setting whose reference is not SB3 (`cleanrl`: MSE, which SB3's DQN cannot do) is refused."""
    from dqnlab.config import is_atari_env

    if setting.reference != "sb3" or setting.loss != "huber":
        raise ValueError(f"setting for {setting.reference} ({setting.loss} loss) has no SB3 equivalent")
    policy_kwargs: dict[str, object] = {} if is_atari_env(setting.env) else {"net_arch": list(setting.hidden)}
    policy_kwargs["optimizer_kwargs"] = {"eps": setting.adam_epsilon}
    return {
        "learning_rate": setting.learning_rate,
        "buffer_size": setting.buffer_size,
        "learning_starts": setting.learning_starts,
        "batch_size": setting.batch_size,
        "gamma": setting.gamma,
        "train_freq": setting.train_every,
        "gradient_steps": setting.gradient_steps,
        "target_update_interval": setting.target_update_every,
        "exploration_fraction": setting.decay_steps(steps) / steps,
        "exploration_initial_eps": 1.0,
        "exploration_final_eps": setting.epsilon_end,
        "policy_kwargs": policy_kwargs,
        "max_grad_norm": setting.grad_clip_norm,  # SB3's default 10 in every SB3 setting
        "device": "cpu",
        "seed": seed,
        "verbose": 0,
    }


def _sb3_run(setting_name: str, steps: int, seed: int) -> dict[str, float]:
    from stable_baselines3 import DQN
    from stable_baselines3.common.logger import Logger

    from dqnlab.config import is_atari_env, load_preset
    from dqnlab.envs import make_env

    start = time.perf_counter()
    setting = SETTINGS[setting_name]
    if is_atari_env(setting.env):  # dqnlab's own preprocessing (docs/atari.md), so both see the same frames
        env, policy = make_env(setting.env, atari=load_preset(setting.preset).atari), "CnnPolicy"
    else:
        env, policy = setting.env, "MlpPolicy"
    model = DQN(policy, env, **sb3_kwargs(setting, steps, seed))
    # An explicit logger with no outputs: SB3's default makes an empty /tmp/SB3-<time> dir on every learn().
    model.set_logger(Logger(folder=None, output_formats=[]))
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    elapsed = time.perf_counter() - start
    # SB3 collects whole rollouts of `train_freq` steps, so it may run up to train_freq - 1 steps past
    # `steps` (20,224 for 20,000 at train_freq 256): count the steps it really ran.
    done = int(model.num_timesteps)
    if done < steps:
        raise RuntimeError(f"SB3 ran {done} env steps, expected at least {steps}")
    return {"steps_per_s": done / elapsed, "seconds": elapsed, "setup_s": setup_s, "env_steps": done}


# -- one measurement per fresh, single-threaded subprocess ---------------------------------------------

THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_child(script: str, flag: str, spec: dict, marker: str, what: str) -> dict:
    """Run `python script flag <spec as JSON>` in a fresh process with one thread per library (THREAD_ENV)
    and return the JSON its line starting with `marker` carries; a failure raises naming `what`, with the
    child's last lines."""
    proc = subprocess.run(
        [sys.executable, script, flag, json.dumps(spec)],
        env={**os.environ, **THREAD_ENV},
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if proc.returncode == 0 and line.startswith(marker):
            return json.loads(line[len(marker) :])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")


THREADS_NOTE = (
    "one fresh process per measurement, 1 thread each: TF intra-op=1 inter-op=1, "
    "torch set_num_threads(1) set_num_interop_threads(1), OMP/OPENBLAS/MKL_NUM_THREADS=1"
)
THREADS_NOTE_DQNLAB = (
    "one fresh process per measurement, 1 thread: TF intra-op=1 inter-op=1, OMP/OPENBLAS/MKL_NUM_THREADS=1"
)
TIMED_NOTE = (
    "timed: dqnlab = whole dqnlab.train() call (env + network build, tf.function tracing, run dir, "
    "summaries, final 1-episode eval); SB3 = whole model.learn() call (DQN(...) construction not timed)"
)
FRAMEWORKS = ("dqnlab", "sb3")
_RESULT_PREFIX = "DQNLAB_BENCH_RESULT "


def _measure_here(framework: str, setting_name: str, steps: int, seed: int, diagnostics: bool) -> dict:
    """Run one measurement in this process after limiting its framework to one thread."""
    if framework == "dqnlab":
        from dqnlab._tf import tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import dqnlab.trainer  # noqa: F401  (pay for the imports before anything is timed)

        logdir = tempfile.mkdtemp(prefix="dqnlab-bench-")
        try:
            start = time.perf_counter()
            sps = dqnlab_steps_per_s(setting_name, steps, diagnostics, logdir=logdir, seed=seed)
            out = {"steps_per_s": sps, "seconds": time.perf_counter() - start, "env_steps": steps}
        finally:
            shutil.rmtree(logdir, ignore_errors=True)
        threads = (
            f"tf intra={tf.config.threading.get_intra_op_parallelism_threads()} "
            f"inter={tf.config.threading.get_inter_op_parallelism_threads()}"
        )
        other = "torch"
    elif framework == "sb3":
        sys.modules["tensorflow"] = None  # SB3's TensorBoard import would otherwise pull in TensorFlow
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        out = _sb3_run(setting_name, steps, seed)
        threads = f"torch intra={torch.get_num_threads()} inter={torch.get_num_interop_threads()}"
        other = "tensorflow"
    else:
        raise ValueError(f"unknown framework {framework!r}; valid: {', '.join(FRAMEWORKS)}")
    if sys.modules.get(other) is not None:
        raise RuntimeError(f"{other} was imported into the {framework} measurement process")
    return {
        "framework": framework,
        "setting": setting_name,
        "diagnostics": diagnostics if framework == "dqnlab" else None,
        "steps": steps,
        "seed": seed,
        "threads": threads,
        **out,
    }


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    result = _measure_here(
        spec["framework"], spec["setting"], spec["steps"], spec["seed"], spec["diagnostics"]
    )
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


def measure_in_subprocess(
    framework: str,
    setting_name: str,
    steps: int,
    *,
    diagnostics: bool = True,
    seed: int = 0,
    timeout: float | None = None,
) -> dict:
    """One measurement in a fresh child process (this file run with THREAD_ENV); returns its result dict."""
    if setting_name not in SETTINGS:
        raise ValueError(f"unknown setting {setting_name!r}; valid: {', '.join(SETTINGS)}")
    spec = {"framework": framework, "setting": setting_name, "steps": steps, "seed": seed}
    spec["diagnostics"] = bool(diagnostics)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
        env={**os.environ, **THREAD_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if proc.returncode == 0 and line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"{framework} {setting_name} measurement failed (exit {proc.returncode}):\n{tail}")


def run_schedule(
    jobs: list[tuple[str, bool]],
    settings: list[str],
    steps: int,
    repeats: int,
    *,
    seed: int = 0,
    log=None,
) -> list[dict]:
    """Measure each (framework, diagnostics) job at each setting, `repeats` times, in alternating order.

    Repeat r runs the settings in turn and, within a setting, `jobs` in order for even r and reversed for
    odd r, so slow drifts of the machine hit every job alike. `log(msg)` is told about each result.
    """
    results = []
    total = repeats * len(settings) * len(jobs)
    for r in range(repeats):
        for setting_name in settings:
            for framework, diagnostics in jobs if r % 2 == 0 else list(reversed(jobs)):
                res = measure_in_subprocess(
                    framework, setting_name, steps, diagnostics=diagnostics, seed=seed
                )
                res["repeat"] = r
                results.append(res)
                if log:
                    log(
                        f"[{len(results)}/{total}] {setting_name:8s} {job_label(framework, diagnostics):16s} "
                        f"{res['steps_per_s']:9,.0f} env steps/s ({res['seconds']:.1f} s)"
                    )
    return results


def job_label(framework: str, diagnostics: bool | None) -> str:
    if framework == "dqnlab":
        return f"dqnlab diag-{'on' if diagnostics else 'off'}"
    return "SB3"


def medians(results: list[dict]) -> dict[tuple[str, str], float]:
    """{(setting, job label): median env steps/s over repeats}."""
    groups: dict[tuple[str, str], list[float]] = {}
    for res in results:
        key = (res["setting"], job_label(res["framework"], res["diagnostics"]))
        groups.setdefault(key, []).append(res["steps_per_s"])
    return {key: statistics.median(values) for key, values in groups.items()}


def spread_note(results: list[dict]) -> str:
    """One line naming the largest max/min - 1 between repeats of one measurement: the noise floor."""
    groups: dict[tuple[str, str], list[float]] = {}
    for res in results:
        key = (res["setting"], job_label(res["framework"], res["diagnostics"]))
        groups.setdefault(key, []).append(res["steps_per_s"])
    worst, key = max((max(v) / min(v) - 1, k) for k, v in groups.items())
    if all(len(v) < 2 for v in groups.values()):
        return "noise: one repeat per measurement, so no spread is known (use --repeats 3 or more)"
    return (
        f"noise: largest spread between repeats of one measurement {100 * worst:.0f}% ({key[0]}, {key[1]}); "
        "a ratio nearer its target than that is not resolved: rerun with more --repeats"
    )


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(frameworks: tuple[str, ...] = FRAMEWORKS) -> dict[str, object]:
    """CPU model, cores, package versions and thread settings of the frameworks measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    dists = ["dqnlab", "tensorflow", "keras", "torch", "stable-baselines3", "gymnasium", "numpy"]
    if "sb3" not in frameworks:
        dists = [d for d in dists if d not in ("torch", "stable-baselines3")]
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in dists},
        "threads": THREADS_NOTE if "sb3" in frameworks else THREADS_NOTE_DQNLAB,
    }


def machine_line(info: dict) -> str:
    versions = ", ".join(f"{d} {v}" for d, v in info["versions"].items())
    return (
        f"machine: {info['cpu']}, {info['logical_cores']} logical cores ({info['usable_cores']} usable); "
        f"python {info['python']}, {versions}; threads: {info['threads']}"
    )


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def update_call_costs(
    hidden: tuple[int, ...],
    batch_size: int,
    calls: int,
    updates_per_call: int = 1,
    seed: int = 0,
    rounds: int = 5,
) -> dict[str, float]:
    """Seconds per learner call of `updates_per_call` updates, bare (no diagnostics) and with the panel on
    its last update, measured interleaved in one process (one TF thread) so machine noise hits both; medians
    of `rounds` rounds, and the median of the rounds' own panel/bare ratios."""
    from dqnlab.learner import Learner

    limit_tf_to_one_thread()
    learner = bench_learner(Learner, hidden, batch_size, seed)
    costs = interleaved_call_costs(
        {"bare": (learner, False), "panel": (learner, True)},
        batch_size,
        calls,
        updates_per_call,
        seed,
        rounds,
    )
    return {"bare_s": costs.seconds["bare"], "panel_s": costs.seconds["panel"], "ratio": costs.ratio["panel"]}


def limit_tf_to_one_thread() -> None:
    """One TensorFlow thread, as in every per-call measurement; call it before TensorFlow runs any op."""
    from dqnlab._tf import tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def bench_learner(learner_class, hidden: tuple[int, ...], batch_size: int, seed: int = 0):
    """A `learner_class` (Learner or a subclass) for `huber_relu` on CartPole's shapes with `hidden` units."""
    from dqnlab.config import load_preset
    from dqnlab.kinds import make_learner

    cfg = load_preset("huber_relu", {"network.hidden": list(hidden), "train.batch_size": batch_size})
    return make_learner(cfg, (4,), 2, seed, learner_class=learner_class)


def random_replay(seed: int = 0):
    """A replay of CartPole's shapes holding 2,000 random transitions (reward 1, 5% terminal): what the
    per-call measurements sample their batches from."""
    import numpy as np

    from dqnlab.replay import ReplayBuffer

    replay = ReplayBuffer(10_000, (4,), seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(2_000):
        replay.add(
            rng.normal(size=4), int(rng.integers(2)), 1.0, rng.normal(size=4), bool(rng.random() < 0.05)
        )
    return replay


class CallCosts(NamedTuple):
    seconds: dict[str, float]  # per call, median over rounds
    ratio: dict[str, float]  # to the first arm: the median over rounds of each round's own ratio


def interleaved_call_costs(
    arms: dict, batch_size: int, calls: int, updates_per_call: int = 1, seed: int = 0, rounds: int = 5
) -> CallCosts:
    """Seconds per update call of each arm, `label -> (learner, with_diagnostics)`, and its ratio to the
    first arm. The arms take turns, `calls` calls each per round, so machine noise hits all of them. Each
    round's ratio compares calls made within milliseconds of each other: their median is steadier on a
    shared machine than a ratio of the medians. A call includes sampling the batch, reading the weights back
    and, with diagnostics, the metrics' host pull."""
    replay = random_replay(seed)
    times: dict[str, list[float]] = {label: [] for label in arms}
    for learner, flag in arms.values():  # trace every arm first
        learner.update(replay.sample_many(updates_per_call, batch_size), flag)
    for _ in range(rounds):
        for label, (learner, flag) in arms.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = learner.update(replay.sample_many(updates_per_call, batch_size), flag)
                bool(out.finite)
                [w.numpy() for w in out.weights]
                {k: float(v) for k, v in out.metrics.items()}  # the host pull a written update pays
            times[label].append((time.perf_counter() - start) / calls)
    reference = times[next(iter(arms))]
    return CallCosts(
        {label: statistics.median(t) for label, t in times.items()},
        {
            label: statistics.median(a / b for a, b in zip(t, reference, strict=True))
            for label, t in times.items()
        },
    )


def parse_bench_args(ap, argv: list[str] | None = None, sb3: bool = False):
    """The flags the benchmark scripts share; returns (args, setting names). Bad values (a --json file that
    could not be written at the end included) exit 2 with one line when `ap` is a cliargs.OneLineParser.
    `sb3`: the script runs SB3 too, so a setting SB3 cannot run (`cleanrl`) is refused."""
    from dqnlab.cliargs import SEED, int_at_least, output_file_problem

    ap.add_argument(
        "--steps", type=int_at_least(1), default=50_000, help="env steps per measurement (default 50000)"
    )
    ap.add_argument(
        "--repeats", type=int_at_least(1), default=2, help="measurements per configuration and setting"
    )
    ap.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help=f"comma-separated, from {', '.join(SETTINGS)} (default: {','.join(DEFAULT_SETTINGS)})",
    )
    ap.add_argument("--seed", type=SEED, default=0)
    ap.add_argument("--json", metavar="FILE", help="also save the results as JSON")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = ap.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or not settings:
        ap.error(f"--settings {args.settings!r}: expected comma-separated names from {', '.join(SETTINGS)}")
    not_sb3 = [s for s in settings if sb3 and SETTINGS[s].reference != "sb3"]
    if not_sb3:
        ap.error(
            f"--settings {','.join(not_sb3)}: its reference is {SETTINGS[not_sb3[0]].reference}, not SB3, "
            "whose DQN cannot run it (always smooth L1); SB3 settings: "
            + ", ".join(n for n, s in SETTINGS.items() if s.reference == "sb3")
        )
    if problem := output_file_problem(args.json, args.force, "--json"):
        ap.error(problem)
    return args, settings


def finish_report(results: list[dict], wall: float, args, info: dict, summary: dict) -> None:
    """The closing lines every benchmark script prints, and its optional JSON file."""
    print(f"env steps/s; {len(results)} measurements in {wall:.0f} s")
    print(spread_note(results))
    if args.json:
        with open(args.json, "w") as f:
            payload = {"steps": args.steps, "repeats": args.repeats, "seed": args.seed, "wall_s": wall}
            payload.update(machine=info, medians=summary, measurements=results)
            json.dump(payload, f, indent=2)
        print(f"saved {args.json}")


if __name__ == "__main__":  # the child of measure_in_subprocess: one measurement, its result on stdout
    _child_main(sys.argv[1])
