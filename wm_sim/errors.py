"""The one exception type the command line turns into a single clear line and a non-zero exit."""


class WmSimError(Exception):
    """A user-facing error: bad input, a refused operation, or a missing dependency.

    The message names what was wrong and what was expected; the CLI prints it as one line.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    WmSimError quotes of a library's error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
