"""The post, reproduced: each backward-pass claim next to its fix, with numbers measured from the event files.

Four studies, each an A/B experiment of shipped presets (`STUDIES`). `run_studies` trains them one after the
other (each in parallel local processes), `measure` reads every claimed number back from the event files,
`dqnlab.doctor` gives its verdict on every arm, and `write_report` writes `report.md` and a self-contained
`report.html` (figures embedded) into the output folder. `scripts/reproduce_post.py`, next to it, is the
command; this module is not one (the script imports it as `import reproduce`).
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dqnlab.compare import compare, format_comparison
from dqnlab.doctor import examine
from dqnlab.events import read_series


@dataclass(frozen=True)
class Study:
    key: str
    title: str
    claim: str
    arms: tuple[str, ...]
    env: str
    steps: int  # default budget (env steps per run); --full uses FULL_STEPS
    expected: dict[str, frozenset[str]] = field(default_factory=dict)  # arm -> the doctor's rules on it
    # Probes every ~1k env steps (the presets' 2,560 updates is ~5k): enough probes in a short run for the
    # doctor's sustained criteria (3 or more in the late half).
    overrides: tuple[str, ...] = ("diagnostics.probe_every=512",)


STUDIES = (
    Study(
        "clipped_delta",
        "The clipped-delta loss zeroes the gradient of the transitions with large error",
        "`square(clip_by_value(delta, -1, 1))` has derivative 0 wherever |delta| > 1, so every transition "
        "whose TD error exceeds the bound teaches nothing; Huber's derivative there is +-1.",
        ("clipped_delta_relu", "huber_relu"),
        "CartPole-v1",
        30_000,
        {"clipped_delta_relu": frozenset({"blocked_td_gradient"}), "huber_relu": frozenset()},
    ),
    Study(
        "sigmoid",
        "A sigmoid layer passes at most a quarter of the gradient, and a saturated one almost nothing",
        "The sigmoid's local derivative z(1 - z) is at most 0.25, so each sigmoid layer shrinks the backward "
        "signal at least 4x; saturated units (z near 0 or 1) pass almost nothing, so the first layer hears "
        "orders of magnitude less than the last.",
        ("sigmoid_saturated", "sigmoid_glorot", "huber_relu"),
        "CartPole-v1",
        20_000,
        {
            "sigmoid_saturated": frozenset({"saturated_activation", "vanishing_gradient"}),
            "sigmoid_glorot": frozenset(),
            "huber_relu": frozenset(),
        },
    ),
    Study(
        "dead_relu",
        "Dead ReLUs never recover, and can be a large share of a layer",
        "A ReLU unit whose input is negative on every state outputs 0 and has local gradient 0: its weights "
        "get exactly zero gradient, so nothing can bring it back.",
        ("relu_dead", "huber_relu"),
        "CartPole-v1",
        20_000,
        {"relu_dead": frozenset({"dead_relu"}), "huber_relu": frozenset()},
    ),
    Study(
        "rnn",
        "A vanilla RNN's gradient through time scales like the spectral radius to the power of the distance",
        "Backprop through time multiplies by diag(f') W_hh^T once per step, so with W_hh's spectral radius "
        "above 1 the gradient reaching k steps back grows geometrically in k; clipping bounds the step "
        "taken, gating (LSTM) removes the repeated multiplication.",
        ("rnn_exploding", "rnn_exploding_clipped", "lstm"),
        "dqnlab/CartPole-masked-v1",
        12_000,
        {
            "rnn_exploding": frozenset({"exploding_gradient"}),
            "rnn_exploding_clipped": frozenset({"exploding_gradient"}),
            "lstm": frozenset(),
        },
        overrides=(),  # the recurrent presets already probe every ~1.3k env steps
    ),
)
FULL_STEPS = 50_000
# The pathological arm of each study (flagged by the doctor), the rest are its fixes or controls.
PATHOLOGICAL = {
    "clipped_delta_relu",
    "sigmoid_saturated",
    "relu_dead",
    "rnn_exploding",
    "rnn_exploding_clipped",
}


# ---- running --------------------------------------------------------------------------------------------


def run_studies(
    out: Path, seeds: int, full: bool, workers: int | None, quiet: bool, scale: float = 1.0, extra=()
) -> None:
    """Train every study into `out/<study key>/` (an experiment directory each). `scale` shrinks the short
    budgets and `extra` adds `section.key=value` overrides to every run (the tests use both)."""
    from dqnlab.runner import plan_experiment, run_experiment

    for study in STUDIES:
        steps = FULL_STEPS if full else max(1, int(study.steps * scale))
        arms, envs, seed_list = list(study.arms), [study.env], list(range(seeds))
        overrides = [*study.overrides, *extra]
        specs, _ = plan_experiment(arms, envs, seed_list, steps, out, study.key, overrides)
        run_experiment(specs, workers=workers, quiet=quiet)


# ---- measuring ------------------------------------------------------------------------------------------


def _runs(exp: Path, arm: str) -> list[dict]:
    return [read_series(p) for p in sorted((exp / arm).glob("*/seed_*"))]


def _late_median(values: np.ndarray) -> float:
    return float(np.median(values[len(values) // 2 :])) if values.size else math.nan


def _family(series: dict, prefix: str) -> dict[str, np.ndarray]:
    return {tag[len(prefix) :]: v for tag, (_, v) in series.items() if tag.startswith(prefix)}


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def measure_clipped_delta(exp: Path) -> dict[str, dict[str, float]]:
    out = {}
    for arm in ("clipped_delta_relu", "huber_relu"):
        runs = _runs(exp, arm)
        out[arm] = {
            "blocked_frac_mean": _mean([float(np.mean(s["td/grad_blocked_frac"][1])) for s in runs]),
            "blocked_frac_late": _mean([_late_median(s["td/grad_blocked_frac"][1]) for s in runs]),
            "beyond_bound_late": _mean([_late_median(s["td/beyond_bound_frac"][1]) for s in runs]),
            "final_eval": _mean([float(s["eval/return"][1][-1]) for s in runs]),
        }
    return out


def measure_sigmoid(exp: Path) -> dict[str, dict[str, float]]:
    out = {}
    for arm in ("sigmoid_saturated", "sigmoid_glorot", "huber_relu"):
        runs = _runs(exp, arm)
        out[arm] = {
            # the largest mean local derivative any layer had at any probe
            "deriv_mean_max": _mean(
                [max(float(v.max()) for v in _family(s, "act_deriv_mean/").values()) for s in runs]
            ),
            "saturated_frac_late": _mean(
                [max(_late_median(v) for v in _family(s, "act_saturated_frac/").values()) for s in runs]
            ),
            "depth_ratio_late": _mean([_late_median(s["grad/depth_ratio"][1]) for s in runs]),
            "final_eval": _mean([float(s["eval/return"][1][-1]) for s in runs]),
        }
    return out


def measure_dead_relu(exp: Path) -> dict[str, dict[str, float]]:
    out = {}
    for arm in ("relu_dead", "huber_relu"):
        runs = _runs(exp, arm)
        row: dict[str, float] = {}
        for layer in sorted(_family(runs[0], "act_dead_frac/")):
            row[f"{layer}_first"] = _mean([float(s[f"act_dead_frac/{layer}"][1][0]) for s in runs])
            row[f"{layer}_last"] = _mean([float(s[f"act_dead_frac/{layer}"][1][-1]) for s in runs])
        row["final_eval"] = _mean([float(s["eval/return"][1][-1]) for s in runs])
        out[arm] = row
    return out


def bptt_growth(series: dict) -> tuple[float, np.ndarray]:
    """Fitted growth per step back of the median `bptt/grad_norm/t-<k>` curve, and the curve."""
    ks = sorted(int(tag.rsplit("-", 1)[1]) for tag in series if tag.startswith("bptt/grad_norm/t-"))
    curve = np.array([np.median(series[f"bptt/grad_norm/t-{k}"][1]) for k in ks])
    slope = np.polyfit(np.array(ks, np.float64), np.log(np.maximum(curve, 1e-30)), 1)[0]
    return float(math.exp(slope)), curve


def measure_rnn(exp: Path) -> dict[str, dict[str, float]]:
    out = {}
    for arm in ("rnn_exploding", "rnn_exploding_clipped", "lstm"):
        runs = _runs(exp, arm)
        length = len(bptt_growth(runs[0])[1])
        out[arm] = {
            "bptt_growth_per_step": _mean([bptt_growth(s)[0] for s in runs]),
            "bptt_last_over_first": _mean(
                [float(bptt_growth(s)[1][-1] / bptt_growth(s)[1][0]) for s in runs]
            ),
            "spectral_radius": _mean([float(np.median(s["rnn/spectral_radius"][1])) for s in runs]),
            "jacobian_growth_per_step": _mean(
                [float(np.median(s["bptt/jacobian_norm"][1])) ** (1 / length) for s in runs]
            ),
            "grad_norm_median": _mean([float(np.median(s["grad_norm/global"][1])) for s in runs]),
            "final_eval": _mean([float(s["eval/return"][1][-1]) for s in runs]),
        }
    return out


MEASURES = {
    "clipped_delta": measure_clipped_delta,
    "sigmoid": measure_sigmoid,
    "dead_relu": measure_dead_relu,
    "rnn": measure_rnn,
}


def verdicts(exp: Path) -> dict[str, set[str]]:
    """The doctor's rules on each arm (the union over its seeds)."""
    found: dict[str, set[str]] = {}
    for run in examine(exp).runs:
        found.setdefault(run.preset, set()).update(f.rule for f in run.findings)
    return found


# ---- reporting -----------------------------------------------------------------------------------------


def _evidence_lines(key: str, m: dict[str, dict[str, float]]) -> list[str]:
    if key == "clipped_delta":
        c, h = m["clipped_delta_relu"], m["huber_relu"]
        return [
            f"Blocked-gradient fraction (`td/grad_blocked_frac`, mean over the run): clipped-delta "
            f"**{c['blocked_frac_mean']:.3f}** (late half {c['blocked_frac_late']:.3f}) vs Huber "
            f"**{h['blocked_frac_mean']:.3f}**; the clipped arm blocks exactly the share beyond the bound "
            f"({c['beyond_bound_late']:.3f} late).",
            f"Final greedy return: clipped-delta {c['final_eval']:.1f} vs Huber {h['final_eval']:.1f}.",
        ]
    if key == "sigmoid":
        s, g, r = m["sigmoid_saturated"], m["sigmoid_glorot"], m["huber_relu"]
        return [
            "Largest mean local derivative of any sigmoid layer at any probe: saturated "
            f"**{s['deriv_mean_max']:.2e}**, Glorot **{g['deriv_mean_max']:.3f}** (both <= 0.25); "
            f"ReLU {r['deriv_mean_max']:.3f}.",
            "First/last hidden-layer gradient-norm ratio (`grad/depth_ratio`, late median): saturated "
            f"**{s['depth_ratio_late']:.1e}**, Glorot {g['depth_ratio_late']:.2f}, "
            f"ReLU {r['depth_ratio_late']:.2f}.",
            f"Saturated share of the most saturated layer (late): saturated {s['saturated_frac_late']:.2f}, "
            f"Glorot {g['saturated_frac_late']:.2f}. Final return: {s['final_eval']:.1f} / "
            f"{g['final_eval']:.1f} / {r['final_eval']:.1f}.",
        ]
    if key == "dead_relu":
        d, h = m["relu_dead"], m["huber_relu"]
        layers = sorted({k.rsplit("_", 1)[0] for k in d if k.endswith("_first")})
        parts = [
            f"{layer}: killed {d[layer + '_first']:.2f} -> **{d[layer + '_last']:.2f}**, healthy "
            f"{h[layer + '_first']:.2f} -> {h[layer + '_last']:.2f}"
            for layer in layers
        ]
        return [
            "Dead fraction (`act_dead_frac`, first probe -> last probe): " + "; ".join(parts) + ".",
            f"Final greedy return: killed {d['final_eval']:.1f} vs healthy {h['final_eval']:.1f}.",
        ]
    x, c, lstm = m["rnn_exploding"], m["rnn_exploding_clipped"], m["lstm"]
    return [
        f"Fitted growth of `bptt/grad_norm/t-<k>` per step back: vanilla **{x['bptt_growth_per_step']:.2f}** "
        f"(x{x['bptt_last_over_first']:.0f} across the window; spectral radius {x['spectral_radius']:.2f}, "
        f"window-Jacobian rate {x['jacobian_growth_per_step']:.2f}), "
        f"clipped {c['bptt_growth_per_step']:.2f}, "
        f"LSTM **{lstm['bptt_growth_per_step']:.2f}** (spectral radius {lstm['spectral_radius']:.2f}).",
        f"Applied global gradient norm (median): vanilla {x['grad_norm_median']:.3g}, clipped "
        f"{c['grad_norm_median']:.3g}, LSTM {lstm['grad_norm_median']:.3g}. Final return: "
        f"{x['final_eval']:.1f} / {c['final_eval']:.1f} / {lstm['final_eval']:.1f}.",
    ]


def _rnn_figure(exp: Path) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for arm in ("rnn_exploding", "rnn_exploding_clipped", "lstm"):
        curves = [bptt_growth(s)[1] for s in _runs(exp, arm)]
        ax.plot(np.median(np.stack(curves), axis=0), marker="o", markersize=3, label=arm)
    ax.set_yscale("log")
    ax.set_xlabel("k: steps back from the end of the window")
    ax.set_ylabel("median ||dL/dh||")
    ax.set_title("bptt/grad_norm/t-<k>", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class StudyResult:
    study: Study
    experiment: Path
    numbers: dict[str, dict[str, float]]
    found: dict[str, set[str]]
    table: str
    figures: dict[str, bytes]

    @property
    def doctor_agrees(self) -> bool:
        return all(self.found.get(arm, set()) == set(rules) for arm, rules in self.study.expected.items())


def collect(out: Path) -> list[StudyResult]:
    from dqnlab.plots import figure_png

    results = []
    for study in STUDIES:
        exp = out / study.key
        comparison = compare(exp)
        figures = {"curves": figure_png(comparison)}
        if study.key == "rnn":
            figures["bptt"] = _rnn_figure(exp)
        results.append(
            StudyResult(
                study, exp, MEASURES[study.key](exp), verdicts(exp), format_comparison(comparison), figures
            )
        )
    return results


def _verdict_lines(r: StudyResult) -> list[str]:
    lines = []
    for arm in r.study.arms:
        found = sorted(r.found.get(arm, set()))
        expected = sorted(r.study.expected.get(arm, set()))
        role = "pathological" if arm in PATHOLOGICAL else "fix / control"
        mark = "as expected" if found == expected else f"EXPECTED {', '.join(expected) or 'nothing'}"
        lines.append(f"`{arm}` ({role}): {', '.join(found) or 'healthy, no finding'} ({mark})")
    return lines


def write_report(out: Path, results: list[StudyResult], command: str) -> tuple[Path, Path]:
    """report.md (figures as PNG files beside it) and a self-contained report.html."""
    md = [
        "# The post, reproduced",
        "",
        f"Made by `{command}`; every number below is read from the event files.",
        "",
    ]
    made = f"<p>Made by <code>{html.escape(command)}</code>; every number is read from the event files.</p>"
    body = ["<h1>The post, reproduced</h1>", made]
    for r in results:
        s = r.study
        evidence, verdict = _evidence_lines(s.key, r.numbers), _verdict_lines(r)
        again = f"dqnlab ab {' '.join(s.arms)} --env {s.env}"
        md += [f"## {s.title}", "", f"**Claim.** {s.claim}", "", "**Measured.**", ""]
        md += [f"- {line}" for line in evidence] + ["", "**Doctor.**", ""] + [f"- {v}" for v in verdict]
        md += ["", "```", r.table, "```", ""]
        body += [f"<h2>{html.escape(s.title)}</h2>", f"<p><b>Claim.</b> {html.escape(s.claim)}</p>", "<ul>"]
        body += [f"<li>{html.escape(line)}</li>" for line in evidence] + ["</ul><p><b>Doctor.</b></p><ul>"]
        body += [f"<li>{html.escape(v)}</li>" for v in verdict] + [
            "</ul>",
            f"<pre>{html.escape(r.table)}</pre>",
        ]
        for name, png in r.figures.items():
            path = out / f"{s.key}_{name}.png"
            path.write_bytes(png)
            md.append(f"![{s.key} {name}]({path.name})")
            image = base64.b64encode(png).decode("ascii")
            body.append(
                f"<img style='max-width:100%' alt='{s.key} {name}' src='data:image/png;base64,{image}'>"
            )
        md += [
            "",
            f"Reproduce this study alone: `{again} --seeds N --steps N`, then `dqnlab doctor` on it.",
            "",
        ]
        body.append(f"<p>Reproduce this study alone: <code>{html.escape(again)}</code></p>")
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md))
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>dqnlab: the post, reproduced</title></head>"
        "<body style='font-family:sans-serif;max-width:1200px;margin:auto'>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    return md_path, html_path
