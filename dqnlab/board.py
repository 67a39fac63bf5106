"""`dqnlab board DIR`: TensorBoard on a run or an experiment, bound to 127.0.0.1 by default.

TensorBoard runs in this process (its own `program.TensorBoard`, serving from a background thread); the
command prints the URL and serves until Ctrl-C, then exits 0. Nothing is written to DIR. TensorBoard has no
authentication: bound to any address but a loopback one, it serves DIR to whoever can reach that address,
and a warning says so on stderr.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
import time
from pathlib import Path

from dqnlab.cliargs import not_a_directory
from dqnlab.config import ConfigError
from dqnlab.events import tensorboard_without_tensorflow

MAX_PORT = 65535


def check_address(host: str, port: int) -> None:
    """Raise ConfigError (one line naming the host and the reason) unless TensorBoard can listen on
    (host, port): a non-empty host that resolves, a port in 0-65535 (0: any free port), and nothing already
    listening there. Binds a throwaway socket as TensorBoard's server would, so its own errors, which come
    after its start-up lines or as a bare traceback, are not reached."""
    if not host or not host.strip():
        raise ConfigError("empty host: give an address to bind, e.g. 127.0.0.1 (0.0.0.0 for all interfaces)")
    if not 0 <= port <= MAX_PORT:
        raise ConfigError(f"port {port} is out of range (1-{MAX_PORT}, or 0 for any free port)")
    # The address family and lookup of TensorBoard's werkzeug server: IPv6 if the host holds a ':'.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sockaddr = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)[0][4]
    except UnicodeError:  # the IDNA encoding of a malformed name ("a..b", a label over 63 characters)
        raise ConfigError(f"cannot serve on host {host!r}: not a valid host name") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot serve on host {host!r}: it does not resolve ({reason})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise ConfigError(_bind_failure(host, port, exc)) from None
    if port and _localhost_listens(port):  # TensorBoard refuses a port that answers on localhost too
        raise ConfigError(f"cannot serve on port {port}: it is already in use on localhost")


def _bind_failure(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot serve on {host!r} port {port}: the port is already in use"
    if exc.errno == errno.EACCES:
        return f"cannot serve on {host!r} port {port}: permission denied (ports below 1024 need root)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot serve on host {host!r}: not an address of this machine ({exc.strerror})"
    return f"cannot serve on host {host!r} port {port}: {exc.strerror or exc}"


def _localhost_listens(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            return s.connect_ex(("localhost", port)) == 0
        except OSError:
            return False


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback one (127.0.0.0/8, ::1): only this machine
    can connect. 0.0.0.0 and :: (every interface) are not."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return False
    addresses = {info[4][0].split("%")[0] for info in infos}  # an IPv6 scope (%eth0) is not an address
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def exposure_warning(directory: str | Path, host: str) -> str | None:
    """The one-line warning for serving `directory` on `host` beyond this machine, or None on loopback."""
    if is_loopback(host):
        return None
    return (
        f"dqnlab: warning: serving on {host}, which is not a loopback address: TensorBoard has no "
        f"authentication, so everything under {directory} is readable by anyone who can reach this address"
    )


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve(
    directory: str | Path, host: str = "127.0.0.1", port: int = 6006, ready=print, warn=_print_to_stderr
) -> None:
    """Serve TensorBoard on `directory` until KeyboardInterrupt. `ready(url)` is called once it listens;
    `warn(line)` first, when `host` is not a loopback address (`exposure_warning`). Bad input (no event
    files, a host or port TensorBoard could not listen on) raises ConfigError before TensorBoard starts."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(not_a_directory(directory))
    if not any(directory.rglob("events.out.tfevents.*")):
        raise ConfigError(f"{directory} holds no TensorBoard event files (is it a dqnlab run or experiment?)")
    check_address(host, port)
    if warning := exposure_warning(directory, host):
        warn(warning)
    tensorboard_without_tensorflow()  # serving event files needs none of TensorFlow (and its start-up lines)
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(directory), "--host", host, "--port", str(port)])
    try:
        url = board.launch()
    except (program.TensorBoardServerException, OSError, UnicodeError) as exc:  # e.g. the port taken since
        raise ConfigError(f"TensorBoard could not start on {host}:{port}: {exc}") from None
    ready(url)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return
