"""`dqnlab board DIR`: TensorBoard on a run or an experiment, bound to 127.0.0.1 by default.

TensorBoard runs in this process (its own `program.TensorBoard`, serving from a background thread); the
command prints the URL and serves until Ctrl-C, then exits 0. Nothing is written to DIR.
"""

from __future__ import annotations

import time
from pathlib import Path

from dqnlab.config import ConfigError
from dqnlab.events import tensorboard_without_tensorflow


def serve(directory: str | Path, host: str = "127.0.0.1", port: int = 6006, ready=print) -> None:
    """Serve TensorBoard on `directory` until KeyboardInterrupt. `ready(url)` is called once it listens."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"no such directory: {directory}")
    if not any(directory.rglob("events.out.tfevents.*")):
        raise ConfigError(f"{directory} holds no TensorBoard event files (is it a dqnlab run or experiment?)")
    tensorboard_without_tensorflow()  # serving event files needs none of TensorFlow (and its start-up lines)
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(directory), "--host", host, "--port", str(port)])
    try:
        url = board.launch()
    except program.TensorBoardServerException as exc:  # port in use, bad host
        raise ConfigError(f"TensorBoard could not start on {host}:{port}: {exc}") from None
    ready(url)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return
