"""`smtpfw docs`: the documentation installed with smtpfw."""

from __future__ import annotations

from smtpfw import docs as pages
from smtpfw.commands.errors import CommandError


def docs(page: str | None = None) -> str:
    """The list of pages (no ``page``), or PAGE / PAGE#SECTION."""
    if not page:
        return pages.listing()
    try:
        return pages.show(page)
    except pages.NoSuchPage as err:
        raise CommandError(str(err)) from None
