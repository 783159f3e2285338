"""The project's error types: every error ndt reports to a user derives from :class:`NdtError`
(the CLI prints its message, no traceback)."""


class NdtError(Exception):
    """An error whose message names what is wrong and is fit to show a user."""


class StateError(NdtError, ValueError):
    """A network state, or a file describing one, is invalid; the message names what."""
