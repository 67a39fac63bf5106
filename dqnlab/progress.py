"""The progress bar of a long command (`train`, `ab`, `sweep`, a Ray batch): tqdm's, redrawn at most every
30 seconds when stderr is not a terminal (a CI log, `nohup`, a file), where each redraw is another line of
the log rather than a bar drawn in place."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between a bar's lines in a log


def progress_bar(**kwargs) -> tqdm:
    """`tqdm(**kwargs)` writing to stderr, redrawn at tqdm's pace on a terminal, every `LOG_INTERVAL_S`
    elsewhere."""
    if not _is_terminal(sys.stderr):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL_S, kwargs["mininterval"]))
    return tqdm(**kwargs)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
