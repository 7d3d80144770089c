"""One exception type for every user-facing error.

Entry points catch :class:`FgsslError` and print its message as one line
(no traceback): the message always names the offending file, path or key.
"""


class FgsslError(RuntimeError):
    """A user-facing error with a message that says what to fix."""
