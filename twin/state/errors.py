"""The project's error types: every error ndt reports to a user derives from :class:`NdtError`
(the CLI prints its message, no traceback), and :func:`shown`, how a message quotes a value."""

import reprlib

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 4, 4, 40, 40, 40


def shown(value) -> str:
    """``value`` quoted for a one-line message: a few elements, two levels, about 40 characters."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # Python will not print integers of more than 4,300 digits
        if isinstance(value, int):
            return f"an integer of {int(value.bit_length() * 0.30103) + 1} digits"
        return f"a {type(value).__name__} holding an integer of thousands of digits"


class NdtError(Exception):
    """An error whose message names what is wrong and is fit to show a user."""


class StateError(NdtError, ValueError):
    """A network state, or a file describing one, is invalid; the message names what."""
