"""The one exception type that the command-line entry points turn into a one-line error."""


class FstError(Exception):
    """A user-facing problem (bad path, bad config key, no data): printed as one line, exit 1."""
