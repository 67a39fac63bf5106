"""The progress bar draws in place on a terminal and writes a line at most every 30 s to a log."""

from __future__ import annotations

import io

from dqnlab import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_every_30_seconds_and_a_terminal_the_usual_bar(monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())
    with progress.progress_bar(total=10, file=io.StringIO()) as bar:
        assert (bar.mininterval, bar.maxinterval) == (30.0, 30.0)
    monkeypatch.setattr(progress.sys, "stderr", _Terminal())
    with progress.progress_bar(total=10, file=io.StringIO()) as bar:
        assert bar.mininterval == 0.1  # tqdm's own
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(progress.sys, "stderr", closed)
    assert progress._is_terminal(closed) is False
