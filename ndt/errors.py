"""The one base class of every error ndt reports to a user (the CLI prints the message, no traceback)."""


class NdtError(Exception):
    """An error whose message names what is wrong and is fit to show a user."""
