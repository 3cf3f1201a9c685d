"""Errors a user can cause (bad config, bad input file, missing model folder).

The command line prints these as one clear line and exits with status 2, instead of a traceback.
Everything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Base class of every error caused by user input; the message names the file, line or key."""


class DataError(UserError):
    """Malformed or missing input data; the message names the file and line number."""
