"""The dashboards of a real short A/B, as TensorBoard serves them: over its HTTP API, and in a real browser.

The browser test drives Debian's `/usr/bin/chromium` with Playwright (never a downloaded browser). It is
marked `browser`; where chromium is missing it is skipped, unless DQNLAB_REQUIRE_BROWSER=1 (set by
.ci/run, which installs chromium) turns that into a failure."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, dqnlab_cmd

ARMS = ("clipped_delta_relu", "huber_relu")
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("dash")
    out = dqnlab_cmd(
        "ab", *ARMS, "--seeds", "2", "--steps", "400", "--logdir", str(logdir), "--name", "ab", "--quiet",
        *FAST, "--set", "diagnostics.probe_every=2",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return logdir / "ab"


@pytest.fixture(scope="module")
def board(experiment):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"from dqnlab.cli import main; sys.exit(main(['board', {str(experiment)!r}, '--port', '{port}']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if len(get_json(f"{url}/data/runs")) == 6:
                break
        except OSError:
            time.sleep(0.5)
    yield url
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)


def get_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def test_tensorboard_serves_every_arm_the_aggregates_the_layout_and_hparams(board):
    runs = get_json(f"{board}/data/runs")
    seeds = [f"{arm}/CartPole-v1/seed_{s}" for arm in ARMS for s in (0, 1)]
    aggregates = [f"_aggregate/{arm}/CartPole-v1" for arm in ARMS]
    assert sorted(runs) == sorted(seeds + aggregates)  # and no stray "." run
    layout = get_json(f"{board}/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c for cat in layout["category"] for c in cat["chart"]}
    assert {"eval/return", "td/grad_blocked_frac", "act_dead_frac/hidden_1", "eval/return (band)"} <= set(
        charts
    )
    tags = get_json(f"{board}/data/plugin/scalars/tags")
    assert {"eval/return", "eval/return/min", "eval/return/max"} <= set(tags[aggregates[1]])
    experiment = get_json(f"{board}/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    assert set(hparams["preset"]["domainDiscrete"]) == set(ARMS)
    assert set(hparams["loss.kind"]["domainDiscrete"]) == {"clipped_delta_squared", "huber"}
    assert {"network.activation", "optimizer.learning_rate", "seed"} <= set(hparams)


def chromium_or_skip() -> None:
    have = Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is not None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        have = False
    if not have:
        if os.environ.get("DQNLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DQNLAB_REQUIRE_BROWSER=1 but {CHROMIUM} or the playwright package is missing")
        pytest.skip(f"needs {CHROMIUM} (Debian's chromium) and playwright")


@pytest.mark.browser
def test_a_real_browser_sees_the_arms_the_custom_scalars_and_the_hparams_table(board):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{board}/#custom_scalars")
            # Locators pierce TensorBoard's shadow DOM.
            page.get_by_text("Blocked TD gradient (the clipped-delta bug)").wait_for(timeout=60_000)
            for title in ("Learning", "Dead, dormant and saturated units", "Seed bands"):
                assert page.get_by_text(title, exact=False).count() >= 1, title
            for run in ("clipped_delta_relu/CartPole-v1/seed_0", "_aggregate/huber_relu/CartPole-v1"):
                assert page.get_by_text(run, exact=True).count() >= 1, run
            assert page.get_by_text("td/grad_blocked_frac", exact=True).count() >= 1
            page.goto(f"{board}/#hparams")
            # The table shows one row per run: each arm's preset and loss kind, visible (the run selector
            # of the other dashboards keeps hidden copies of the run names in the page).
            page.get_by_text("clipped_delta_squared").filter(visible=True).first.wait_for(timeout=60_000)
            for arm in ARMS:  # two rows each (2 seeds); the table fills in as TensorBoard reads the runs
                rows = page.get_by_text(arm, exact=True).filter(visible=True)
                rows.nth(1).wait_for(timeout=60_000)
                assert rows.count() >= 2, arm
        finally:
            browser.close()


def fifty_cell_map(tmp_path: Path) -> tuple[Path, list[str]]:
    """The HTML map of a 50-cell x 2-seed sweep (10 learning rates x 5 biases), drawn from made-up
    numbers: the page's size and layout are those of the real one (docs/sweeps.md's dead-ReLU map)."""
    from dqnlab.mapplot import write_map
    from dqnlab.maps import CellResult, MapAxis, MapGroup, SeedResult, SweepMap

    rates = [f"{r:.3g}" for r in np.logspace(-4, -1, 10)]
    biases = ["0", "-0.5", "-1", "-2", "-3"]
    cells = []
    for rate in rates:
        for bias in biases:
            name = f"huber_relu@learning_rate={rate},bias_init={bias}"
            dead = float(bias) <= -2
            seeds = [
                SeedResult(
                    seed,
                    "done",
                    {"final_return": 100.0 + seed, "dead_frac_max": 1.0 if dead else 0.4},
                    [("dead_relu", "error", "hidden_1")] if dead else [],
                    [],
                )  # fmt: skip
                for seed in (0, 1)
            ]
            cells.append(CellResult(name, {"optimizer.learning_rate": rate, "network.bias_init": bias},
                                    "CartPole-v1", seeds))  # fmt: skip
    axes = [MapAxis("optimizer.learning_rate", tuple(rates)), MapAxis("network.bias_init", tuple(biases))]
    sweep = SweepMap(tmp_path, axes, [MapGroup("CartPole-v1", cells)], [])
    return write_map(sweep, sweep.layout(), tmp_path / "map.html"), [c.name for c in cells]


def open_map(path: Path, cells: list[str]) -> None:
    """A real browser shows the map: its figure decoded, a table row per cell, every cell named."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(path.resolve().as_uri())
            page.get_by_text("dqnlab compare --map").wait_for(timeout=30_000)
            assert page.evaluate("document.querySelector('img').naturalWidth") > 1000
            assert page.locator("table tr").count() == len(cells) + 1
            for cell in cells:
                assert page.get_by_text(cell, exact=True).count() == 1, cell
        finally:
            browser.close()


@pytest.mark.browser
def test_a_real_browser_opens_the_maps_of_a_50_cell_sweep_and_of_the_ab(experiment, tmp_path):
    chromium_or_skip()
    page, cells = fifty_cell_map(tmp_path)
    open_map(page, cells)
    ab_map = tmp_path / "ab_map.html"
    out = dqnlab_cmd("compare", str(experiment), "--map", "--plot", str(ab_map))
    assert out.returncode == 0, out.stderr
    open_map(ab_map, list(ARMS))  # an A/B maps as one axis, its arms
    real = os.environ.get("DQNLAB_MAP_HTML")  # a map drawn elsewhere, e.g. by scripts/sweep_dead_relu.py
    if real:
        names = re.findall(r"<tr><td><code>([^<]+)</code>", Path(real).read_text())
        open_map(Path(real), [html.unescape(name) for name in names])
