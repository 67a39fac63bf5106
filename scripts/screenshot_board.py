"""Screenshots of the TensorBoard dashboards of an experiment, for docs/dashboards.md.

    python scripts/screenshot_board.py runs/<experiment> docs/img

Starts `dqnlab board` on a free port of 127.0.0.1, opens it in Debian's headless chromium (/usr/bin/chromium,
driven by Playwright; nothing is downloaded), writes `custom_scalars.png`, `seed_bands.png`, `hparams.png`,
`doctor_text.png` and `scalars.png` into the output folder, and stops the board. The output folder is
created if need be; PNGs already in it are not overwritten unless --force is given.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dqnlab.cliargs import OneLineParser, creation_problem, directory

CHROMIUM = "/usr/bin/chromium"
SHOTS = ("custom_scalars.png", "seed_bands.png", "hparams.png", "doctor_text.png", "scalars.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_board(url: str, board: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if board.poll() is not None:  # its own one-line error is on stderr above
            raise SystemExit(f"screenshot_board.py: dqnlab board exited {board.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=2) as r:
                if json.loads(r.read()):
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"TensorBoard did not answer at {url} within {timeout_s:.0f} s")


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{url}/#custom_scalars")
        page.get_by_text("Blocked TD gradient (the clipped-delta bug)").wait_for(timeout=60_000)
        page.wait_for_timeout(4000)  # let the charts draw
        page.screenshot(path=str(out / "custom_scalars.png"))
        bands = page.get_by_text("Seed bands: mean and min-max over seeds (aggregate runs)")
        bands.scroll_into_view_if_needed()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(out / "seed_bands.png"))
        page.goto(f"{url}/#hparams")
        page.get_by_text("loss.kind").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "hparams.png"))
        page.goto(f"{url}/#text")
        page.wait_for_timeout(5000)
        page.screenshot(path=str(out / "doctor_text.png"))
        page.goto(f"{url}/#scalars&tagFilter=grad_zero_frac")
        page.wait_for_timeout(5000)
        page.screenshot(path=str(out / "scalars.png"))
        browser.close()


def input_problem(experiment: Path, out: Path, force: bool) -> str | None:
    """Why the screenshots cannot be taken and written as asked, or None (checked before anything starts)."""
    if not experiment.is_dir():
        return f"no such directory: {experiment}"
    if not any(experiment.rglob("events.out.tfevents.*")):
        return f"{experiment} holds no TensorBoard event files (is it a dqnlab run or experiment?)"
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not a directory"
    if not out.exists() and (problem := creation_problem(out)):
        return f"cannot create {out}: {problem}"
    taken = [name for name in SHOTS if (out / name).exists()]
    if taken and not force:
        return f"{out} already holds {', '.join(taken)}; pass --force to overwrite them"
    if not Path(CHROMIUM).is_file() or importlib.util.find_spec("playwright") is None:
        return f"needs Playwright (pip install playwright) and Debian's chromium at {CHROMIUM}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", type=directory, help="a run or experiment directory")
    ap.add_argument("out", type=directory, help="the folder the PNGs are written to (created if need be)")
    ap.add_argument("--force", action="store_true", help="overwrite PNGs of the same names in OUT")
    args = ap.parse_args(argv)
    experiment, out = Path(args.experiment), Path(args.out)
    if problem := input_problem(experiment, out, args.force):
        ap.error(problem)
    port = free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "dqnlab.cli", "board", str(experiment), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_board(url, board)
        out.mkdir(parents=True, exist_ok=True)
        shoot(url, out)
    finally:
        if board.poll() is None:
            board.send_signal(signal.SIGINT)
            board.wait(timeout=30)
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
