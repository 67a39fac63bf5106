"""dqnlab's healthy arm against the reference DQN at the reference's own settings, seed by seed (#21).

    python scripts/parity.py cartpole --seeds 10                   # dqnlab vs SB3 at rl-zoo's CartPole DQN
    python scripts/parity.py acrobot --seeds 10                    # rl-zoo's Acrobot-v1 DQN, 100k steps
    python scripts/parity.py lunarlander --seeds 10                # rl-zoo's LunarLander-v3 DQN (box2d extra)
    python scripts/parity.py cartpole --seeds 10 --reference none  # the dqnlab side only (no SB3 needed)

Each task is a dqnlab preset that maps rl-zoo's tuned hyperparameters (hyperparams/dqn.yml) field by field,
and SB3's own choices where rl-zoo leaves a field at the library's default (PyTorch's default init of W and
b, Adam's epsilon 1e-8, max_grad_norm 10), run as it ships (LunarLander's with the task's `mirror`
overrides, which make them), against SB3's DQN given rl-zoo's values (`RL_ZOO`). Both sides are evaluated
the same way: every `--eval-every` env steps (and at the end), `--eval- episodes` greedy episodes on a
separate env with the online weights of that moment; the first reset of each evaluation is seeded seed +
10,000 + step. Runs are interleaved (seed k: dqnlab then SB3 for even k, SB3 then dqnlab for odd k), each in
a fresh subprocess with one thread (scripts/bench.py's THREAD_ENV).

Per seed it prints the final greedy return, the AUC (`dqnlab compare`'s: the greedy curve's trapezoid area
divided by its span) and the env steps to the task's threshold; per metric, a Welch t-test and a two-sided
Mann-Whitney U test, with Hedges' g and the common-language effect size (the chance a dqnlab seed beats a
reference seed, ties half). "Indistinguishable" is #21's bar: p > 0.1 on both tests for both metrics, and
threshold counts within 2 of each other.

SB3 and torch are benchmark-only: `pip install -e '.[bench]'` after a CPU torch (scripts/bench.py's hint).
Exit status: 0 after printing, 2 on bad input or when the reference is not installed.
CleanRL is not a package: its defaults are scripts/bench.py's `cleanrl` setting; a CleanRL reference side
(its dqn.py loop on that setting) is not implemented here yet.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Task:
    preset: str
    env: str
    steps: int  # rl-zoo's n_timesteps
    threshold: float  # gymnasium's reward threshold (CartPole-v1: 475)
    zoo: dict = field(default_factory=dict)  # SB3 DQN(...) kwargs: rl-zoo's hyperparams/dqn.yml entry
    # overrides that give the preset SB3's own choices, where the preset does not make them itself
    mirror: dict = field(default_factory=dict)


# rl-zoo (DLR-RM/rl-baselines3-zoo) hyperparams/dqn.yml; the presets' comments map each value.
RL_ZOO = {
    "cartpole": Task(
        "huber_relu",
        "CartPole-v1",
        50_000,
        475.0,
        dict(
            learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000, gamma=0.99,
            target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
            exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]),
        ),
    ),
    "acrobot": Task(
        "acrobot_huber",
        "Acrobot-v1",
        100_000,
        -100.0,
        dict(
            learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0, gamma=0.99,
            target_update_interval=250, train_freq=4, gradient_steps=-1, exploration_fraction=0.12,
            exploration_final_eps=0.1, policy_kwargs=dict(net_arch=[256, 256]),
        ),
    ),
    "lunarlander": Task(
        "lunarlander_huber",
        "LunarLander-v3",
        100_000,
        200.0,
        dict(
            learning_rate=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=0, gamma=0.99,
            target_update_interval=250, train_freq=4, gradient_steps=-1, exploration_fraction=0.12,
            exploration_final_eps=0.1, policy_kwargs=dict(net_arch=[256, 256]),
        ),
        # The LunarLander presets keep He-uniform kernels, zero biases and Keras' epsilon (their A/B in
        # docs/results.md was measured so); parity gives the dqnlab side SB3's choices here.
        mirror={"network.kernel_init": "torch_default", "network.bias_init_kind": "torch_default",
                "optimizer.epsilon": 1e-8},
    ),
}  # fmt: skip


# -- statistics ------------------------------------------------------------------------------------------


def two_sample(a: list[float], b: list[float]) -> dict[str, float]:
    """Welch's t-test and the two-sided Mann-Whitney U test of a against b, with effect sizes: the mean
    difference, Hedges' g (Cohen's d on the pooled SD, bias-corrected) and the common-language effect size
    U / (n_a n_b) (the chance a value of a exceeds one of b, ties counting half; 0.5: no effect). Two constant
    samples give p = 1 when equal and 0 when not (the tests' statistics are undefined there)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        raise ValueError(f"two_sample needs at least 2 values a side, got {n1} and {n2}")
    diff = float(x.mean() - y.mean())
    pooled = math.sqrt(((n1 - 1) * x.var(ddof=1) + (n2 - 1) * y.var(ddof=1)) / (n1 + n2 - 2))
    correction = 1.0 - 3.0 / (4.0 * (n1 + n2) - 9.0)
    u = float(stats.mannwhitneyu(x, y, alternative="two-sided").statistic)
    if pooled == 0.0:
        same = 1.0 if diff == 0.0 else 0.0
        t, t_p, u_p, g = 0.0 if diff == 0.0 else math.copysign(math.inf, diff), same, same, 0.0
    else:
        welch = stats.ttest_ind(x, y, equal_var=False)
        t, t_p = float(welch.statistic), float(welch.pvalue)
        u_p = float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
        g = diff / pooled * correction
    return {
        "n_a": n1, "n_b": n2, "mean_a": float(x.mean()), "mean_b": float(y.mean()), "mean_diff": diff,
        "welch_t": t, "welch_p": t_p, "mwu_u": u, "mwu_p": u_p, "hedges_g": g, "cles": u / (n1 * n2),
    }  # fmt: skip


def curve_metrics(steps: list[int], returns: list[float], threshold: float) -> dict[str, object]:
    """Final greedy return, AUC (`dqnlab compare`'s: the curve's trapezoid area over its span) and the first
    step at or past threshold."""
    from dqnlab.stats import area_under_curve

    reached = next((int(s) for s, r in zip(steps, returns, strict=True) if r >= threshold), None)
    return {
        "final": float(returns[-1]),
        "auc": area_under_curve(steps, returns),
        "steps_to_threshold": reached,
    }


def indistinguishable(tests: dict[str, dict[str, float]], reached: tuple[int, int]) -> bool:
    """#21's bar: p > 0.1 on both tests for every metric, and threshold counts within 2."""
    ps = [t[k] for t in tests.values() for k in ("welch_p", "mwu_p")]
    return all(p > 0.1 for p in ps) and abs(reached[0] - reached[1]) <= 2


# -- one run of each side --------------------------------------------------------------------------------


def run_dqnlab(task: Task, seed: int, steps: int, eval_every: int, episodes: int) -> dict:
    """One dqnlab run of the task's preset (with the task's `mirror` overrides), its greedy curve."""
    import dqnlab
    from dqnlab.config import load_preset
    from dqnlab.events import read_series

    overrides = {**task.mirror, "train.eval_every": eval_every, "train.eval_episodes": episodes}
    overrides["diagnostics.enabled"] = False  # they do not change learning; they cost time
    cfg = load_preset(task.preset, overrides)
    with tempfile.TemporaryDirectory(prefix="dqnlab-parity-") as logdir:
        res = dqnlab.train(cfg, env=task.env, seed=seed, steps=steps, logdir=logdir, name="parity")
        if res.status != "done":
            raise RuntimeError(f"dqnlab run ended {res.status}: {res.error}")
        st, ret = read_series(res.run_dir, tags=["eval/return"])["eval/return"]
    return {"steps": [int(s) for s in st], "returns": [float(r) for r in ret]}


def run_sb3(task: Task, seed: int, steps: int, eval_every: int, episodes: int) -> dict:
    """One SB3 DQN run at rl-zoo's values, greedy evaluations as dqnlab's (see the module docstring)."""
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    curve: dict[str, list] = {"steps": [], "returns": []}
    eval_env = gym.make(task.env)

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            step = self.num_timesteps
            if step % eval_every == 0 or step == steps:
                total, obs = 0.0, eval_env.reset(seed=seed + 10_000 + step)[0]
                for _ in range(episodes):
                    done = False
                    while not done:
                        action, _ = self.model.predict(obs, deterministic=True)
                        obs, reward, terminated, truncated, _ = eval_env.step(int(action))
                        total += float(reward)
                        done = terminated or truncated
                    obs = eval_env.reset()[0]
                curve["steps"].append(step)
                curve["returns"].append(total / episodes)
            return step < steps  # SB3 finishes its rollout past `steps` otherwise

    model = DQN("MlpPolicy", task.env, seed=seed, device="cpu", verbose=0, **task.zoo)
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.learn(total_timesteps=steps, callback=Evaluate())
    return curve


# -- the schedule: one fresh single-threaded process per run ----------------------------------------------

_RESULT = "PARITY_RESULT "


def _child(spec: dict) -> None:
    task = RL_ZOO[spec["task"]]
    if spec["side"] == "dqnlab":
        from dqnlab._tf import tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        out = run_dqnlab(task, spec["seed"], spec["steps"], spec["eval_every"], spec["episodes"])
    else:
        sys.modules["tensorflow"] = None  # SB3's TensorBoard import would otherwise pull TensorFlow in
        import torch

        torch.set_num_threads(1)
        out = run_sb3(task, spec["seed"], spec["steps"], spec["eval_every"], spec["episodes"])
    print(_RESULT + json.dumps(out), flush=True)


def run_in_subprocess(spec: dict) -> dict:
    import bench

    what = f"{spec['side']} seed {spec['seed']}"
    return bench.run_child(str(Path(__file__).resolve()), "--child", spec, _RESULT, what)


# -- the report -------------------------------------------------------------------------------------------


def _fmt_steps(s) -> str:
    return "-" if s is None else f"{s:,}"


def report(task: Task, per_seed: dict[str, dict[int, dict]], sides: list[str]) -> tuple[list[str], dict]:
    """The per-seed table and, with two sides, the tests; returns (lines, summary)."""
    seeds = sorted(per_seed[sides[0]])
    header = "seed " + "".join(f"| {s} final  {s} AUC  {s} steps>={task.threshold:g} " for s in sides)
    lines = [header]
    for k in seeds:
        cells = [
            f"| {m['final']:8.1f} {m['auc']:8.1f} {_fmt_steps(m['steps_to_threshold']):>10} "
            for m in (per_seed[s][k] for s in sides)
        ]
        lines.append(f"{k:4d} " + "".join(cells))
    summary: dict = {"reached": {}}
    for s in sides:
        summary["reached"][s] = sum(per_seed[s][k]["steps_to_threshold"] is not None for k in seeds)
        lines.append(f"{s}: reached {task.threshold:g} on {summary['reached'][s]}/{len(seeds)} seeds")
    if len(sides) == 2 and len(seeds) >= 2:
        tests = {}
        for metric in ("final", "auc"):
            a = [per_seed[sides[0]][k][metric] for k in seeds]
            b = [per_seed[sides[1]][k][metric] for k in seeds]
            t = tests[metric] = two_sample(a, b)
            a_name, b_name = sides
            lines.append(
                f"{metric:5s}: {a_name} {t['mean_a']:.1f} vs {b_name} {t['mean_b']:.1f} "
                f"(diff {t['mean_diff']:+.1f}); Welch t {t['welch_t']:+.2f} p={t['welch_p']:.3f}; "
                f"Mann-Whitney U {t['mwu_u']:.1f} p={t['mwu_p']:.3f}; Hedges g {t['hedges_g']:+.2f}; "
                f"P({a_name} > {b_name}) {t['cles']:.2f}"
            )
        summary["tests"] = tests
        reached = (summary["reached"][sides[0]], summary["reached"][sides[1]])
        summary["indistinguishable"] = indistinguishable(tests, reached)
        lines.append(
            "indistinguishable (p > 0.1 on both tests for final and AUC, reached within 2): "
            + ("yes" if summary["indistinguishable"] else "NO")
        )
    return lines, summary


def main(argv: list[str] | None = None) -> int:
    import bench

    from dqnlab.cliargs import OneLineParser, int_at_least, output_file_problem

    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(RL_ZOO), help="the reference setting")
    ap.add_argument("--seeds", type=int_at_least(2), default=10, help="seeds 0..N-1 per side (default 10)")
    ap.add_argument("--steps", type=int_at_least(1), help="env steps per run (default: rl-zoo's n_timesteps)")
    ap.add_argument("--eval-every", type=int_at_least(1), default=5_000, help="env steps between evaluations")
    ap.add_argument(
        "--eval-episodes", type=int_at_least(1), default=10, help="greedy episodes per evaluation"
    )
    ap.add_argument("--reference", choices=("sb3", "none"), default="sb3", help="none: the dqnlab side only")
    ap.add_argument("--json", metavar="FILE", help="also save every curve and test as JSON")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = ap.parse_args(argv)
    if problem := output_file_problem(args.json, args.force, "--json"):
        ap.error(problem)
    if args.reference == "sb3" and not bench.sb3_available():
        ap.error(bench.SB3_INSTALL_HINT)
    task = RL_ZOO[args.task]
    steps = args.steps or task.steps
    sides = ["dqnlab"] + (["sb3"] if args.reference == "sb3" else [])
    curves: dict[str, dict[int, dict]] = {s: {} for s in sides}
    per_seed: dict[str, dict[int, dict]] = {s: {} for s in sides}
    for k in range(args.seeds):
        for side in sides if k % 2 == 0 else sides[::-1]:
            spec = {"task": args.task, "side": side, "seed": k, "steps": steps, "eval_every": args.eval_every}
            spec["episodes"] = args.eval_episodes
            curves[side][k] = run_in_subprocess(spec)
            per_seed[side][k] = curve_metrics(
                curves[side][k]["steps"], curves[side][k]["returns"], task.threshold
            )
            m = per_seed[side][k]
            print(
                f"[{side} seed {k}] final {m['final']:.1f}, AUC {m['auc']:.1f}", file=sys.stderr, flush=True
            )
    print(
        f"{task.env}: dqnlab `{task.preset}` vs "
        + ("SB3 DQN at rl-zoo's values" if args.reference == "sb3" else "no reference")
        + f"; {args.seeds} seeds, {steps:,} env steps, "
        + f"{args.eval_episodes} greedy episodes every {args.eval_every:,}"
    )
    lines, summary = report(task, per_seed, sides)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"task": args.task, "steps": steps, "curves": curves, "per_seed": per_seed, **summary}, f
            )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
