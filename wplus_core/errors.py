"""The one exception type the pack raises for user-fixable problems.

Messages name the input (file, image index, socket) and say what to do; the node layer shows
them as they are.
"""


class WPlusError(ValueError):
    """A bad input, file or setting, with a message meant for the user."""
