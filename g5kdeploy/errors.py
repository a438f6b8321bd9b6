"""Errors a user can cause: one line that says what to do, never a deep traceback."""


class UserError(Exception):
    """A mistake in the user's input or environment; the message says how to fix it."""
