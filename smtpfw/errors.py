"""Telling smtpfw's faults from the user's: an ``InternalError`` is a bug in
smtpfw (the CLI says so and exits 3), never reported as bad input."""

from __future__ import annotations

PLEASE_REPORT = "this is a bug in smtpfw, please report it"


class InternalError(Exception):
    """A bug in smtpfw, found while doing something for the user."""
