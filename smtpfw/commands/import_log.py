"""`smtpfw import postfix`: a Postfix mail log -> session records."""

from __future__ import annotations

import gzip
import json
from contextlib import AbstractContextManager, nullcontext
from typing import IO

from smtpfw.commands.errors import CommandError
from smtpfw.replay.postfix import ImportReport, import_lines


def import_postfix(maillog: str, output: str | None, year: int | None, *, stdin, stdout) -> ImportReport:
    """Read ``maillog`` (a file, .gz, or "-" for ``stdin``) and write one
    record a line to ``output`` (.gz compresses; None or "-": ``stdout``)."""
    source: AbstractContextManager[IO[str]]
    sink: AbstractContextManager[IO[str]]
    try:
        if maillog == "-":
            source = nullcontext(stdin)
        elif maillog.endswith(".gz"):
            source = gzip.open(maillog, "rt", encoding="utf-8", errors="replace")
        else:
            source = open(maillog, "r", encoding="utf-8", errors="replace")
    except OSError as e:
        raise CommandError(f"{maillog}: {e.strerror or e}") from None
    try:
        with source as fh:
            records, report = import_lines(fh, year, maillog)
    except (OSError, EOFError) as e:
        raise CommandError(f"{maillog}: cannot read: {e}") from None
    try:
        if not output or output == "-":
            sink = nullcontext(stdout)
        elif output.endswith(".gz"):
            sink = gzip.open(output, "wt", encoding="utf-8")
        else:
            sink = open(output, "w", encoding="utf-8")
    except OSError as e:
        raise CommandError(f"{output}: {e.strerror or e}") from None
    with sink as out:
        for rec in records:
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return report
