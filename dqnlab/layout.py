"""The custom-scalars layout of an experiment: one chart per tag with every arm on it, grouped the way the
pathologies are read, plus margin charts of the across-seed band written by `dqnlab.aggregate`.

TensorBoard's own scalars dashboard draws one chart per tag but cannot put a seed band on it
(tensorboard#376); its custom-scalars plugin can, from a layout stored in any run. The layout is stored in
the aggregate runs (not at the experiment root, where it would show up as a stray `.` run), and TensorBoard
merges the identical copies into one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.util import tensor_util

BAND_SUFFIXES = ("min", "max")  # the aggregate's band: tag/min and tag/max around the mean logged as tag

# (category title, tag patterns in chart order). A pattern names one tag or, with `*`, one chart per
# matching tag (`*` stands for a layer or variable path).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Learning",
        ("eval/return", "episode/return", "loss/td", "q/mean", "q/max", "q/target_mean"),
    ),
    (
        "Blocked TD gradient (the clipped-delta bug)",
        ("td/grad_blocked_frac", "td/beyond_bound_frac", "td/abs_mean", "grad_norm/global"),
    ),
    ("Gradient flow by layer: exact zeros", ("grad_zero_frac/*", "grad_near_zero_frac/*")),
    ("Gradient flow by layer: norms", ("grad_norm/*", "grad/depth_ratio")),
    (
        "Dead, dormant and saturated units",
        (
            "act_dead_frac/*",
            "act_dormant_frac/*",
            "act_saturated_frac/*",
            "act_zero_deriv_frac/*",
            "act_deriv_mean/*",
            "features/srank",
        ),
    ),
    (
        "Exploding gradients and BPTT",
        (
            "grad_norm/preclip_global",
            "grad/clipped",
            "grad/nonfinite",
            "rnn/spectral_radius",
            "rnn/max_singular_value",
            "bptt/jacobian_norm",
            "bptt/grad_norm/*",
        ),
    ),
    ("Update and weight health", ("update_ratio/*", "weight_norm/*", "weight_dist_init/*")),
)

# The tags whose seed band gets a margin chart: the ones an A/B is judged by.
BAND_PATTERNS = (
    "eval/return",
    "episode/return",
    "loss/td",
    "td/grad_blocked_frac",
    "grad_norm/global",
    "grad/depth_ratio",
    "act_dead_frac/*",
    "act_saturated_frac/*",
    "features/srank",
    "rnn/spectral_radius",
    "bptt/grad_norm/*",
)
BAND_CATEGORY = "Seed bands: mean and min-max over seeds (aggregate runs)"


def _matches(pattern: str, tags: Iterable[str]) -> list[str]:
    if "*" not in pattern:
        return [pattern] if pattern in tags else []
    regex = re.compile("^" + re.escape(pattern).replace(r"\*", ".+") + "$")
    return sorted(t for t in tags if regex.match(t) and not t.endswith(tuple("/" + s for s in BAND_SUFFIXES)))


def build_layout(tags: Iterable[str]) -> layout_pb2.Layout:
    """The layout for an experiment whose runs logged `tags`. Charts only for tags that exist."""
    tags = set(tags)
    layout = layout_pb2.Layout()
    # Tags named outright keep their own chart: `grad_norm/*` must not take grad_norm/global.
    placed = {p for _, patterns in CATEGORIES for p in patterns if "*" not in p}
    for title, patterns in CATEGORIES:
        charts = []
        for pattern in patterns:
            if "*" not in pattern:
                charts += [_multiline(tag) for tag in _matches(pattern, tags)]
                continue
            charts += [_multiline(tag) for tag in _matches(pattern, tags) if tag not in placed]
        if charts:
            layout.category.add(title=title, chart=charts)
    bands = [_margin(tag) for pattern in BAND_PATTERNS for tag in _matches(pattern, tags)]
    if bands:  # second, right under the learning curves: the band is what an A/B is judged by
        categories = list(layout.category)
        del layout.category[:]
        for category in [
            *categories[:1],
            layout_pb2.Category(title=BAND_CATEGORY, chart=bands),
            *categories[1:],
        ]:
            layout.category.add().CopyFrom(category)
    return layout


def _multiline(tag: str) -> layout_pb2.Chart:
    return layout_pb2.Chart(
        title=tag, multiline=layout_pb2.MultilineChartContent(tag=["^" + re.escape(tag) + "$"])
    )


def _margin(tag: str) -> layout_pb2.Chart:
    lower, upper = (f"{tag}/{suffix}" for suffix in BAND_SUFFIXES)
    series = layout_pb2.MarginChartContent.Series(value=tag, lower=lower, upper=upper)
    return layout_pb2.Chart(title=f"{tag} (band)", margin=layout_pb2.MarginChartContent(series=[series]))


def layout_summary(layout: layout_pb2.Layout) -> summary_pb2.Summary:
    """The summary TensorBoard's custom-scalars plugin reads (what its TF-bound `summary.pb` would write)."""
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=metadata.CONFIG_SUMMARY_TAG,
        metadata=metadata.create_summary_metadata(),
        tensor=tensor_util.make_tensor_proto(layout.SerializeToString()),
    )
    return summary
