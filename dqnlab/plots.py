"""`dqnlab compare --plot FILE.png|FILE.html`: learning curves with seed bands and a diagnostics panel.

One row per env. Columns: the greedy eval return (mean over seeds, min-max band, the threshold dashed),
then each diagnostic some arm logged: blocked TD-gradient fraction, global gradient norm (pre-clip when
clipping is on; log scale), the largest dead and saturated fraction over the hidden layers, and the
first/last-layer gradient-norm ratio (log scale). The saturated panel is drawn only when some arm's network
can saturate (a sigmoid or tanh layer, or a tanh recurrent cell): a ReLU network logs 0 there, a flat line
that says nothing. The HTML report is self-contained: the comparison table and the figure embedded as a PNG.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dqnlab.aggregate import aggregate_series
from dqnlab.compare import EVAL_TAG, Comparison, EnvComparison, Run, format_comparison
from dqnlab.config import ConfigError
from dqnlab.rundir import RUN_JSON

SATURATED = "act_saturated_frac/"
SATURATING = ("sigmoid", "tanh")
# (panel title, tag or `family/` (max over the family at each step), log scale)
PANELS = (
    ("eval return", EVAL_TAG, False),
    ("blocked TD-gradient fraction", "td/grad_blocked_frac", False),
    ("global grad norm", "grad_norm/preclip_global|grad_norm/global", True),
    ("max dead fraction (hidden layers)", "act_dead_frac/", False),
    ("max saturated fraction (hidden layers)", SATURATED, False),
    ("first/last-layer grad-norm ratio", "grad/depth_ratio", True),
)
SUFFIXES = (".png", ".html")
COLUMNS = 3


def check_plot_path(path: str | Path, overwrite: bool = True) -> Path:
    """`path` as a plot file: a .png or .html in an existing directory; with `overwrite` False, not a file
    that is already there (the command line asks for --force)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--plot wants a .png or .html file, got {path.name!r}")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot: no such directory: {path.parent}")
    if path.is_dir():
        raise ConfigError(f"--plot {path} is a directory, not a file")
    if path.exists() and not overwrite:
        raise ConfigError(f"--plot {path} exists; pass --force to overwrite it")
    return path


def _panel_series(run: Run, spec: str) -> tuple[np.ndarray, np.ndarray] | None:
    for tag in spec.split("|"):
        if not tag.endswith("/"):
            if tag in run.series:
                return run.series[tag]
            continue
        family = [s for t, s in run.series.items() if t.startswith(tag) and s[0].size]
        if family:  # layers are probed together, so their steps agree; max over layers at each step
            steps = family[0][0]
            same = [v for s, v in family if s.shape == steps.shape and np.array_equal(s, steps)]
            return steps, np.max(np.stack(same), axis=0)
    return None


def can_saturate(config: Mapping) -> bool:
    """Whether a network of this config (run.json's `config`) has units with bounded outputs: a sigmoid or
    tanh hidden layer, or a recurrent cell with tanh (LSTM and GRU always have it, and sigmoid gates)."""
    network = config.get("network") or {}
    recurrent = config.get("recurrent") or {}
    if network.get("activation") in SATURATING:
        return True
    cell_has_tanh = recurrent.get("cell") in ("lstm", "gru") or recurrent.get("activation") in SATURATING
    return network.get("kind") == "rnn" and cell_has_tanh


def _run_can_saturate(run: Run) -> bool:
    """From the run's config; a run whose config cannot be read counts as one that can (panel kept)."""
    try:
        config = json.loads((run.path / RUN_JSON).read_text())["config"]
        return can_saturate(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True


def env_panels(env: EnvComparison) -> list[tuple[str, str, bool]]:
    """The panels drawn for one env: those some run logged, the saturated one only when some arm's network
    can saturate; the eval return alone when nothing was logged."""
    runs = [r for a in env.arms for r in a.runs]
    saturating = any(_run_can_saturate(r) for r in runs)
    panels = [
        p
        for p in PANELS
        if (p[1] != SATURATED or saturating) and any(_panel_series(r, p[1]) is not None for r in runs)
    ]
    return panels or list(PANELS[:1])


def _draw_env(axes, env: EnvComparison, panels) -> None:
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, spec, log) in zip(axes, panels, strict=True):
        for i, arm in enumerate(env.arms):
            curves = [{"x": s} for run in arm.runs if (s := _panel_series(run, spec)) is not None]
            if not curves:
                continue
            steps, mean, low, high = aggregate_series(curves)["x"]
            color = colors[i % len(colors)]
            ax.plot(steps, mean, color=color, label=f"{arm.preset} (n={len(curves)})", linewidth=1.5)
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        if spec == EVAL_TAG and env.threshold is not None:
            ax.axhline(env.threshold, color="grey", linestyle="--", linewidth=1)
        if log:
            ax.set_yscale("symlog", linthresh=1e-6)
        ax.set_title(f"{env.env}: {title}", fontsize=9)
        ax.set_xlabel("env step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # no curve (no run logged this panel's tag): no legend
        axes[0].legend(fontsize=7, loc="best")


def figure_png(comparison: Comparison) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (env, its panels): each env takes ceil(panels / COLUMNS) rows of the grid
    blocks = [(env, env_panels(env)) for env in comparison.envs]
    nrows = sum(-(-len(panels) // COLUMNS) for _, panels in blocks)
    fig, grid = plt.subplots(nrows, COLUMNS, figsize=(4.6 * COLUMNS, 3.2 * nrows), squeeze=False)
    axes = list(grid.ravel())
    for env, panels in blocks:
        used = -(-len(panels) // COLUMNS) * COLUMNS
        block, axes = axes[:used], axes[used:]
        _draw_env(block[: len(panels)], env, panels)
        for ax in block[len(panels) :]:
            ax.axis("off")
    fig.suptitle("mean over seeds, band = min-max over seeds", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_plot(comparison: Comparison, path: str | Path) -> Path:
    return write_figure(
        path,
        figure_png(comparison),
        heading="dqnlab compare",
        title="dqnlab compare",
        text=format_comparison(comparison),
        alt="learning curves and diagnostics per arm",
        reproduce=f"dqnlab compare {comparison.directory} --plot {{name}}",
        directory=comparison.directory,
    )


def write_figure(
    path: str | Path,
    png: bytes,
    *,
    heading: str,
    title: str,
    text: str,
    alt: str,
    reproduce: str,
    directory: Path,
    extra_html: str = "",
    width_px: int = 1400,
) -> Path:
    """`png` to `path` as it is, or (for .html) as one self-contained page: `heading`, the directory, `text`
    as a preformatted block, the image inline, `extra_html`, and the command that makes it again (`{name}`
    in `reproduce` becomes the file's name). Shared by `compare --plot` and `compare --map --plot`."""
    path = check_plot_path(path)
    if path.suffix.lower() == ".png":
        path.write_bytes(png)
        return path
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    image = base64.b64encode(png).decode("ascii")
    where = html.escape(str(directory))
    command = html.escape(reproduce).replace("{name}", html.escape(path.name))
    path.write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)} {where}</title></head>\n"
        f"<body style='font-family: sans-serif; max-width: {width_px}px; margin: auto'>\n"
        f"<h1>{html.escape(heading)}</h1><p><code>{where}</code>, {stamp}</p>\n"
        f"<pre>{html.escape(text)}</pre>\n"
        f"<img alt='{alt}' style='max-width: 100%' src='data:image/png;base64,{image}'>\n"
        f"{extra_html}"
        f"<p>Reproduce: <code>{command}</code></p>\n"
        "</body></html>\n"
    )
    return path
