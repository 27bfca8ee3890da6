"""The exceptions every fst command turns into one line and an exit status, and the wrapper that does it.

:func:`run_command` turns an :class:`FstError` into one ``error: ...`` line with exit 1,
a :class:`UsageError` (or a bad command line, through :class:`ArgumentParser`) into one
line with exit 2, and Ctrl-C into exit 130. Every command's ``main(argv)`` runs under it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class FstError(Exception):
    """A user-facing problem (bad path, unreadable file, no data): one ``error:`` line, exit 1."""


class UsageError(FstError):
    """The command line itself is wrong (unknown option, model or config key): exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a :class:`UsageError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def run_command(main: Callable[[list[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and map what it raises to one stderr line and an exit status."""
    try:
        status = main(list(argv) if argv is not None else None)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if status is None else int(status)
