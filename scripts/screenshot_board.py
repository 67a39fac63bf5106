"""Screenshots of the TensorBoard dashboards of an experiment, for docs/dashboards.md.

    python scripts/screenshot_board.py runs/<experiment> docs/img

Starts `dqnlab board` on a free port of 127.0.0.1, opens it in Debian's headless chromium (/usr/bin/chromium,
driven by Playwright; nothing is downloaded), writes `custom_scalars.png`, `seed_bands.png`, `hparams.png`,
`doctor_text.png` and `scalars.png` into the output folder, and stops the board.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_board(url: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "dqnlab.cli", "board", str(args.experiment), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_board(url)
        shoot(url, args.out)
    finally:
        board.send_signal(signal.SIGINT)
        board.wait(timeout=30)
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
