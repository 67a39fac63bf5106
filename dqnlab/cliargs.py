"""Command-line input checks shared by `dqnlab` and scripts/*.py: bad input gets one line, exit status 2.

    ap = OneLineParser(description=...)
    ap.add_argument("--seeds", type=int_at_least(1), default=3)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    if problem := output_file_problem(args.json, args.force, "--json"):
        ap.error(problem)

`OneLineParser.error` prints `<prog>: error: <message> (see `<prog> --help`)` on one line and exits 2,
instead of argparse's usage dump; `--help` is argparse's own. The `*_problem` checks return a message
naming what is wrong (or None), so a script calls them before any work starts and nothing is created or
overwritten on bad input. This module imports nothing of dqnlab (it is imported before anything heavy).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXIT_BAD_INPUT = 2


def one_line(message: str) -> str:
    """A message quoting what the user typed stays one line even when that contained line breaks."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2 (never the usage dump)."""

    def error(self, message: str):
        name = self.prog.split()[0]  # "dqnlab train" -> "dqnlab"
        self.exit(EXIT_BAD_INPUT, f"{name}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def int_at_least(low: int, below: int | None = None):
    """An argparse type: an integer >= low (and < below, if given), with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be < {below}, got {value}")
        return value

    return parse


SEED = int_at_least(0, below=2**31)  # what `dqnlab train --seed` takes: numpy's seeds stop at 2**32


def directory(text: str) -> str:
    """An argparse type: a non-empty path (an empty argument would silently mean the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory, got an empty argument")
    return text


def nonempty(what: str):
    """An argparse type: a non-empty value (for --env, --name, --ray-address an empty argument, as an unset
    shell variable gives, would silently mean the default: the preset's env, a timestamp, a local Ray)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {what}, got an empty argument")
        return text

    return parse


def file_name(text: str) -> str:
    """An argparse type: a non-empty file name (an empty one would silently write nothing)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name, got an empty argument")
    return text


def creation_problem(path: str | Path) -> str | None:
    """Why the absent `path` could not be created by this process (a file or an unwritable folder on the
    way), or None."""
    for ancestor in Path(path).absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"{ancestor} is a file, not a directory"
            if not os.access(ancestor, os.W_OK | os.X_OK):
                return f"{ancestor} is not writable"
            return None
    return None


def new_directory_problem(path: str | Path, flag: str) -> str | None:
    """Why `path` cannot be made a new directory (it exists, or cannot be created), or None."""
    path = Path(path)
    if not str(path).strip():
        return f"{flag}: expected a directory, got an empty argument"
    if path.exists() or path.is_symlink():
        return f"{flag} {path} exists; pass a new one (nothing is overwritten)"
    problem = creation_problem(path)
    return f"{flag} {path}: cannot create it: {problem}" if problem else None


def output_file_problem(path: str | Path | None, force: bool, flag: str) -> str | None:
    """Why the file `path` cannot be written (its folder missing or read-only, a directory there, or a file
    there without `force`), or None; None too when no path was given."""
    if path is None:
        return None
    path = Path(path)
    if not str(path).strip():
        return f"{flag}: expected a file name, got an empty argument"
    if path.is_dir():
        return f"{flag} {path} is a directory, not a file"
    parent = path.absolute().parent
    if not parent.is_dir():
        return f"{flag} {path}: no such directory: {parent}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{flag} {path}: {parent} is not writable"
    if path.exists() and not force:
        return f"{flag} {path} exists; pass --force to overwrite it"
    return None


def not_a_directory(path: Path) -> str:
    """Why `path`, which is not a directory, cannot be read as one: it does not exist, or it is a file."""
    if path.exists():
        return f"{path} is a file, not a directory (give a run or experiment directory)"
    return f"no such directory: {path}"
