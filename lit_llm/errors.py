"""The marker that separates a user's mistake from a bug, so the command line can tell them apart.

An error whose class derives from :class:`UserInputError` says, in its message, which file, key or value was
wrong and what to do; ``lit-llm`` prints that message alone (``lit-llm: <message>``) and exits with code 2.
Any other exception is unexpected and keeps its traceback. ``LIT_LLM_TRACEBACK=1`` shows the traceback of
user errors too.

The marker is a mixin: each concrete error also derives from the builtin it refines (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` in a user's code keeps working.
"""

from __future__ import annotations

__all__ = ["InvalidArgumentError", "UserInputError"]


class UserInputError(Exception):
    """Base of every error caused by what the user gave (a file, a checkpoint, an argument), not by a bug.

    Example::
        class DataFileError(ValueError, UserInputError):
            '''A data file that cannot be used as it is.'''
    """


class InvalidArgumentError(ValueError, UserInputError):
    """An argument (flag, config key, ``__init__`` keyword) with a bad value; the message quotes it and the fix."""
