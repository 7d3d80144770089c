"""One exception type for every user-facing error.

Entry points catch :class:`FgsslError` and print its message as one line
(no traceback): the message always names the offending file, path or key.
"""

#: torch's DataLoader re-raises an exception from a worker process as
#: ``type(exc)("Caught FgsslError in DataLoader worker process N.\nOriginal Traceback ...\n
#: fgssl.errors.FgsslError: <message>\n")``; the original message is the part after this marker.
_WORKER_MARKER = "fgssl.errors.FgsslError: "


class FgsslError(RuntimeError):
    """A user-facing error with a message that says what to fix."""

    def __init__(self, message: str = "", *args):
        if isinstance(message, str) and message.startswith("Caught FgsslError") and _WORKER_MARKER in message:
            message = message.rsplit(_WORKER_MARKER, 1)[1].strip()
        super().__init__(message, *args)


class ConfigError(FgsslError, ValueError):
    """A config value outside its allowed set or range; the message names the key."""


def run_or_exit(fn, *args):
    """Call ``fn(*args)``; an :class:`FgsslError` becomes one ``fgssl error: ...`` line and exit code 2."""
    import sys

    try:
        return fn(*args)
    except FgsslError as e:
        print(f"fgssl error: {e}", file=sys.stderr)
        sys.exit(2)
