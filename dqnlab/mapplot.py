"""`dqnlab compare DIR --map --plot FILE.png|FILE.html`: a sweep's maps, drawn (data: `dqnlab.maps`).

Per group and facet: the doctor's verdict map first (each cell coloured by its most frequent rule, paler
when it fired in fewer seeds, with the seed counts written in; a thick line between pathological cells and
the others), then a heat map per metric some cell logged (mean over seeds, the value written in). Cells
with runs stopped early (`--stop-on-fatal`, or cut by `--halving`) are hatched, and the verdict says how.
A grid of one axis gives line plots instead: the mean over seeds, the min-max band and each seed's point,
and the verdicts as one strip. The HTML file is self-contained, like `compare --plot`'s: the text maps,
the figure as an embedded PNG, a table per cell.
"""

from __future__ import annotations

import html
import io
import math
from pathlib import Path

import numpy as np

from dqnlab.maps import (
    HEALTHY,
    NO_EVIDENCE,
    NO_RUNS,
    RETURNS,
    CellResult,
    Layout,
    MapGroup,
    SweepMap,
    axis_number,
    cell_at,
    format_map,
    shown_metrics,
)
from dqnlab.plots import write_figure

COLUMNS = 3  # panels side by side; 2 when the x axis has more than WIDE values
WIDE = 6
# One colour per category, the same on every map; a rule not listed here gets grey.
COLORS = {
    HEALTHY: "#4daf4a",
    NO_EVIDENCE: "#d9d9d9",
    NO_RUNS: "#ffffff",
    "dead_relu": "#e41a1c",
    "blocked_td_gradient": "#377eb8",
    "exploding_gradient": "#ff7f00",
    "divergence": "#a65628",
    "saturated_activation": "#984ea3",
    "vanishing_gradient": "#f781bf",
    "learning_never_starts": "#bcbd22",
    "dormant_growth": "#17becf",
    "update_ratio": "#ffd92f",
    "q_overestimation": "#c5b0d5",
}
LOG_METRICS = ("grad_norm_max", "bptt_growth")
FRACTIONS = ("blocked_frac_mean", "dead_frac_max", "saturated_frac_max")


def category_color(category: str) -> str:
    return COLORS.get(category, "#7f7f7f")


def _blocks(sweep: SweepMap, layout: Layout) -> list[tuple[MapGroup, dict[str, str], list]]:
    """(group, facet, panels): the verdict panel then one per metric shown."""
    out = []
    for group in sweep.groups:
        panels = [("verdict", "the doctor's verdict"), *shown_metrics(group)]
        for facet in layout.facet_values():
            out.append((group, facet, panels))
    return out


def figure_png(sweep: SweepMap, layout: Layout) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = _blocks(sweep, layout)
    nx, ny = len(layout.x.values), len(layout.y.values) if layout.y else 1
    columns = 2 if layout.y and nx > WIDE else COLUMNS
    nrows = sum(-(-len(panels) // columns) for _, _, panels in blocks)
    labels = max((len(v) for v in layout.y.values), default=0) if layout.y else 0
    width = max(4.6, 0.75 * nx + 1.6 + 0.055 * labels) if layout.y else 4.6  # cells wide enough to write in
    height = max(3.2, 0.45 * ny + 1.8) if layout.y else 3.2
    fig, grid = plt.subplots(nrows, columns, figsize=(width * columns, height * nrows), squeeze=False)
    axes = list(grid.ravel())
    for group, facet, panels in blocks:
        used = -(-len(panels) // columns) * columns
        block, axes = axes[:used], axes[used:]
        where = ", ".join(f"{k}={v}" for k, v in facet.items())
        prefix = group.label + (f" [{where}]" if where else "")
        for ax, (key, title) in zip(block, panels, strict=False):
            draw = _draw_verdicts if key == "verdict" else _draw_metric
            draw(ax, group, layout, facet, key)
            ax.set_title(f"{prefix}: {title}", fontsize=8)
        for ax in block[len(panels) :]:
            ax.axis("off")
    fig.suptitle(_caption(layout), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (height * nrows)))  # 0.45 in for the caption's two lines
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _caption(layout: Layout) -> str:
    if layout.y is None:
        return "mean over seeds, band = min-max over seeds, dots = seeds; verdict: seeds each rule fired in"
    return (
        "mean over seeds in each cell; verdict colour = the rule found in most seeds (paler: fewer seeds)\n"
        "thick line = boundary of the pathological cells (an error in half the seeds or more); hatched = "
        "stopped early"
    )


def _grid(group: MapGroup, layout: Layout, facet: dict[str, str]) -> list[list[CellResult | None]]:
    """Cells as rows (y values, first at the bottom) of columns (x values)."""
    ys = layout.y.values if layout.y else (None,)
    return [[cell_at(group, layout, facet, x, y) for x in layout.x.values] for y in ys]


def _frame(ax, layout: Layout) -> None:
    ax.set_xticks(
        range(len(layout.x.values)),
        layout.x.values,
        fontsize=7,
        rotation=45 if len(layout.x.values) > 6 else 0,
    )
    ax.set_xlabel(layout.x.key, fontsize=8)
    if layout.y is not None:
        ax.set_yticks(range(len(layout.y.values)), layout.y.values, fontsize=7)
        ax.set_ylabel(layout.y.key, fontsize=8)
    else:
        ax.set_yticks([])
    ax.set_xlim(-0.5, len(layout.x.values) - 0.5)
    ax.set_ylim(-0.5, (len(layout.y.values) if layout.y else 1) - 0.5)


def _draw_verdicts(ax, group: MapGroup, layout: Layout, facet: dict[str, str], _key: str) -> None:
    from matplotlib.patches import Patch, Rectangle

    cells = _grid(group, layout, facet)
    seen: dict[str, str] = {}
    for row, line in enumerate(cells):
        for col, cell in enumerate(line):
            category = cell.verdict if cell else NO_RUNS
            color = category_color(category)
            seen.setdefault(category, color)
            share = _category_share(cell, category)
            hatch = "//" if cell and cell.stopped() else None
            square = Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor=color, edgecolor="white", hatch=hatch)
            square.set_alpha(0.3 + 0.7 * share)
            ax.add_patch(square)
            ax.text(col, row, _verdict_label(cell), ha="center", va="center", fontsize=5.5)
    _draw_boundary(ax, cells)
    _frame(ax, layout)
    handles = [Patch(facecolor=c, label=k) for k, c in seen.items()]
    ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _category_share(cell: CellResult | None, category: str) -> float:
    if cell is None or not cell.seeds:
        return 1.0
    counts = cell.rule_counts()
    hits = counts.get(category, len(cell.seeds) if category in (HEALTHY, NO_EVIDENCE) else 0)
    return hits / len(cell.seeds)


def _verdict_label(cell: CellResult | None) -> str:
    if cell is None or not cell.seeds:
        return "no runs"
    n = len(cell.seeds)
    counts = cell.rule_counts()
    lines = [f"{_two_lines(rule)} {k}/{n}" for rule, k in list(counts.items())[:2]]
    if len(counts) > 2:
        lines.append(f"+{len(counts) - 2} more")
    if not counts:
        lines = ["healthy" if cell.verdict == HEALTHY else "not enough\nevidence"]
    lines += [f"{note} {k}/{n}" for note, k in cell.stop_notes().items()]
    return "\n".join(lines)


def _two_lines(rule: str) -> str:
    """'exploding_gradient' -> 'exploding\ngradient': a label as narrow as a cell."""
    first, _, rest = rule.partition("_")
    return f"{first}\n{rest.replace('_', ' ')}" if rest else first


def _draw_boundary(ax, cells: list[list[CellResult | None]]) -> None:
    """A thick line on every cell edge between a pathological cell and one that is not (or the frame)."""
    flags = np.array([[bool(c and c.pathological) for c in line] for line in cells])
    rows, cols = flags.shape
    style = {"color": "black", "linewidth": 2.2}
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols and flags[r, c] != flags[r, c + 1]:
                ax.plot([c + 0.5, c + 0.5], [r - 0.5, r + 0.5], **style)
            if r + 1 < rows and flags[r, c] != flags[r + 1, c]:
                ax.plot([c - 0.5, c + 0.5], [r + 0.5, r + 0.5], **style)


def _draw_metric(ax, group: MapGroup, layout: Layout, facet: dict[str, str], key: str) -> None:
    if layout.y is None:
        _draw_line(ax, group, layout, facet, key)
        return
    from matplotlib.colors import LogNorm, Normalize

    cells = _grid(group, layout, facet)
    means = np.array([[_mean(c, key) for c in line] for line in cells], dtype=float)
    finite = means[np.isfinite(means)]
    if key in FRACTIONS:
        norm = Normalize(0.0, 1.0)
    elif key in LOG_METRICS and finite.size and finite.min() > 0:
        norm = LogNorm(finite.min(), max(finite.max(), finite.min() * 1.0001))
    else:
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        norm = Normalize(low, high if high > low else low + 1.0)
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r" if key == "steps_to_threshold" else "viridis"]
    cmap = cmap.with_extremes(bad="#eeeeee")  # cells without a value: grey
    image = ax.imshow(np.ma.masked_invalid(means), origin="lower", cmap=cmap, norm=norm, aspect="auto")
    for row, line in enumerate(cells):
        for col, cell in enumerate(line):
            dark = np.isfinite(means[row, col]) and norm(means[row, col]) < 0.5
            label = _metric_label(cell, key)
            ax.text(col, row, label, ha="center", va="center", fontsize=6, color="white" if dark else "black")
            if cell and cell.stopped():
                ax.add_patch(_hatch(col, row))
    _frame(ax, layout)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=6, which="both")
    if isinstance(norm, LogNorm):  # plain numbers, not 1.3 x 10^0
        from matplotlib.ticker import FormatStrFormatter

        bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        if norm.vmax < 10 * norm.vmin:  # under a decade the minor ticks are the only labels
            bar.ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))


def _hatch(col: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, hatch="//", edgecolor="grey", linewidth=0)


def _mean(cell: CellResult | None, key: str) -> float:
    if cell is None:
        return math.nan
    mean = cell.summary(key)["mean"]
    return math.nan if mean is None else mean


def _metric_label(cell: CellResult | None, key: str) -> str:
    if cell is None or not cell.seeds:
        return ""
    summary = cell.summary(key)
    if summary["mean"] is None:
        return "never" if key == "steps_to_threshold" else "-"
    text = _short(summary["mean"])
    if key in RETURNS and summary["n"] < len(cell.seeds):
        text += f"\n({summary['n']}/{len(cell.seeds)})"
    return text


def _draw_line(ax, group: MapGroup, layout: Layout, facet: dict[str, str], key: str) -> None:
    """1-D: mean over seeds, min-max band, each seed's value."""
    cells = _grid(group, layout, facet)[0]
    xs, log = _positions(layout)
    means, lows, highs = [], [], []
    for x, cell in zip(xs, cells, strict=True):
        values = cell.values(key) if cell else []
        means.append(np.mean(values) if values else math.nan)
        lows.append(min(values) if values else math.nan)
        highs.append(max(values) if values else math.nan)
        ax.plot([x] * len(values), values, "o", color="C0", markersize=3, alpha=0.6)
    ax.plot(xs, means, color="C0", linewidth=1.5)
    ax.fill_between(xs, lows, highs, color="C0", alpha=0.2, linewidth=0)
    if log:
        ax.set_xscale("log")
    if key in LOG_METRICS:
        ax.set_yscale("log")
    _line_ticks(ax, layout, xs)
    ax.grid(alpha=0.3)


def _positions(layout: Layout) -> tuple[list[float], bool]:
    """x positions: the values themselves when they are numbers (log-spaced over two decades or more),
    else their indices."""
    numbers = [axis_number(v) for v in layout.x.values]
    if any(n is None for n in numbers):
        return list(range(len(numbers))), False
    log = min(numbers) > 0 and max(numbers) / min(numbers) >= 100
    return numbers, log


def _short(x: float) -> str:
    """A number in at most five characters or so: 0.0123, 95.8, 1.9k, 154k, 1.2e+06."""
    if abs(x) >= 1e6:
        return f"{x:.1e}"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.0f}k"
    if abs(x) >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.3g}"


def _line_ticks(ax, layout: Layout, xs: list[float]) -> None:
    ax.set_xticks(xs, layout.x.values, fontsize=7, rotation=45 if len(xs) > 6 else 0)
    ax.minorticks_off()
    ax.set_xlabel(layout.x.key, fontsize=8)
    ax.tick_params(labelsize=7)


def write_map(sweep: SweepMap, layout: Layout, path: str | Path) -> Path:
    axes = f"--x {layout.x.key}" + (f" --y {layout.y.key}" if layout.y else "")
    return write_figure(
        path,
        figure_png(sweep, layout),
        heading="dqnlab compare --map",
        title="dqnlab map",
        text=format_map(sweep, layout),
        alt="the verdict map and a heat map per metric",
        reproduce=f"dqnlab compare {sweep.directory} --map {axes} --plot {{name}}",
        directory=sweep.directory,
        extra_html=f"<h2>Cells</h2>\n{_cell_table(sweep)}\n",
        width_px=1600,
    )


def _cell_table(sweep: SweepMap) -> str:
    head = "<tr><th>cell</th><th>env</th><th>seeds</th><th>final return</th><th>verdict</th></tr>"
    rows = []
    for group in sweep.groups:
        for cell in group.cells:
            statuses = ", ".join(f"{n} {s}" for s, n in cell.statuses().items())
            mean = cell.summary("final_return")["mean"]
            counts = cell.rule_counts()
            n = len(cell.seeds)
            verdict = "; ".join(f"{r} {k}/{n}" for r, k in counts.items()) or cell.verdict
            rows.append(
                f"<tr><td><code>{html.escape(cell.name)}</code></td><td>{html.escape(cell.env)}</td>"
                f"<td>{html.escape(statuses)}</td><td>{'-' if mean is None else f'{mean:.1f}'}</td>"
                f"<td style='background: {category_color(cell.verdict)}40'>{html.escape(verdict)}</td></tr>"
            )
    return f"<table border='1' cellspacing='0' cellpadding='3'>{head}{''.join(rows)}</table>"
