"""The one exception type for mistakes in a user's input."""


class UserError(Exception):
    """Bad input from the user: entrypoints print its message as one line and exit 2."""
