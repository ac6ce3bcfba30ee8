"""The one exception type for mistakes a user can fix: the console scripts print it as one line."""


class UserError(Exception):
    """A problem with the user's input, data or files; the message names it and the fix."""
