"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (unknown plugin, malformed spec, missing file, ...)."""


class CheckFailed(Exception):
    """A check the user asked for failed (e.g. a regression gate); exit code 1."""
