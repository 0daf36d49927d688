"""The one exception type the command line turns into a single clear line and a non-zero exit."""


class WmSimError(Exception):
    """A user-facing error: bad input, a refused operation, or a missing dependency.

    The message names what was wrong and what was expected; the CLI prints it as one line.
    """
