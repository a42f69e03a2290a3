"""Errors a user can fix. The apps print them as one line instead of a traceback."""


class SimpsonsError(Exception):
    """Base class: the message names the bad value and what would be accepted."""


class ConfigError(SimpsonsError):
    """A config value is invalid (unknown choice, out of range, missing file)."""


class DataError(SimpsonsError):
    """The data set cannot be used as configured (missing folder, no usable images)."""


class ServerLost(SimpsonsError):
    """The tracking server stopped answering mid-command; the next command, once it answers, goes on."""
