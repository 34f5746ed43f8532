"""The one exception type for bad input: the CLI prints its message as one line."""


class UserError(Exception):
    """Bad input from the user (config, data, paths): message names the file and problem."""
