"""`dqnlab board --host`: serving beyond this machine is allowed, but never without a word.

TensorBoard has no authentication. These tests never bind a non-loopback address: the CLI runs in process
with TensorBoard replaced by a stand-in that records what it was asked to serve."""

from __future__ import annotations

import contextlib
import importlib
import io

import pytest

from dqnlab import cli
from dqnlab.board import exposure_warning, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_get_no_warning(tmp_path, host):
    assert is_loopback(host) and exposure_warning(tmp_path, host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_any_other_host_gets_a_warning_naming_what_it_exposes(tmp_path, host):
    warning = exposure_warning(tmp_path, host)
    assert warning is not None and "\n" not in warning
    assert f"serving on {host}" in warning and "no authentication" in warning
    assert f"everything under {tmp_path} is readable by anyone who can reach this address" in warning


class StandInBoard:
    """tensorboard.program.TensorBoard without a server: `launch` returns a URL and binds nothing."""

    served: list[list[str]] = []

    def configure(self, argv):
        self.served.append(argv)

    def launch(self):
        return "http://stand-in:6006/"


def run_board(monkeypatch, directory, host: str) -> tuple[int, str, str]:
    # The module itself: `from tensorboard import program` is a lazy proxy, and an attribute set on the
    # proxy would not reach the module serve() reads it from.
    program = importlib.import_module("tensorboard.program")
    monkeypatch.setattr(program, "TensorBoard", StandInBoard)
    monkeypatch.setattr("dqnlab.board.check_address", lambda host, port: None)  # nothing is bound here

    class CtrlCAtOnce:  # board's `time`: the serving loop's first sleep is interrupted
        @staticmethod
        def sleep(seconds):
            raise KeyboardInterrupt

    monkeypatch.setattr("dqnlab.board.time", CtrlCAtOnce)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["board", str(directory), "--host", host])
    return code, out.getvalue(), err.getvalue()


def test_board_on_every_interface_warns_on_stderr_once_before_serving(tmp_path, monkeypatch):
    (tmp_path / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    code, out, err = run_board(monkeypatch, tmp_path, "0.0.0.0")
    assert code == 0 and "http://stand-in:6006/" in out
    assert err.count("\n") == 1 and err.startswith("dqnlab: warning: serving on 0.0.0.0"), err
    assert "TensorBoard has no authentication" in err and str(tmp_path) in err
    assert StandInBoard.served[-1][-4:] == ["--host", "0.0.0.0", "--port", "6006"]


def test_board_on_localhost_says_nothing_on_stderr(tmp_path, monkeypatch):
    (tmp_path / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    code, out, err = run_board(monkeypatch, tmp_path, "127.0.0.1")
    assert code == 0 and "http://stand-in:6006/" in out and err == ""
