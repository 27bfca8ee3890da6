"""The exceptions that command-line entry points turn into one line and an exit status."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class FstError(Exception):
    """A user-facing problem (bad path, unreadable file, no data): one ``error:`` line, exit 1."""


class UsageError(FstError):
    """The command line itself is wrong (unknown option, model or config key): exit 2."""
