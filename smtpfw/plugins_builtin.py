"""Plugins shipped with smtpfw, as working examples of the plugin API."""

from __future__ import annotations

import re

from smtpfw.plugins import Plugin, PluginResult

_SUBJECT_SHOUTING = re.compile(rb"^Subject:[^\r\n]*[A-Z]{8,}", re.MULTILINE)


class HeaderScore(Plugin):
    """A tiny content score: the kind of check rules cannot express.

    Points: +2 no Message-ID, +2 no Date, +1 Subject shouting in capitals,
    +3 a bare-IP URL in the body.  Rules decide what to do with
    ``<name>.points``.
    """

    fields = {"points": "int", "reasons": "string"}

    async def run(self, stage, state, message):
        if message is None:
            return None
        head, _, body = message.partition(b"\r\n\r\n")
        lower = head.lower()
        points, reasons = 0, []
        if b"\nmessage-id:" not in b"\n" + lower:
            points += 2
            reasons.append("no-message-id")
        if b"\ndate:" not in b"\n" + lower:
            points += 2
            reasons.append("no-date")
        if _SUBJECT_SHOUTING.search(head):
            points += 1
            reasons.append("subject-caps")
        if re.search(rb"https?://\d{1,3}(\.\d{1,3}){3}", body):
            points += 3
            reasons.append("ip-url")
        return PluginResult(fields={"points": points, "reasons": ",".join(reasons)})
