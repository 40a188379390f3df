"""What every front end does the same way at a session's edges: name it,
take the client's address in one form, and log and record it at its end."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import time

from smtpfw import logformat, metrics
from smtpfw.pid import pid
from smtpfw.protocol.stream import Stream
from smtpfw.recording import log_line, session_record
from smtpfw.session import SessionState

log = logging.getLogger("smtpfw.smtp")
session_log = logging.getLogger("smtpfw.session")

_ids = itertools.count(1)


def new_session_id() -> str:
    """Unique across the workers of a host: time, process id, a counter."""
    return f"{int(time.time()):x}.{pid():x}.{next(_ids):x}"


def plain_ip(text: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a dual-stack
    listener reports for IPv4 clients) as the IPv4 address it is; anything
    else unchanged.  Done once at the edge, so rules, limits, DNSBL lookups,
    logs and recordings all see one form."""
    if text.startswith("::ffff:") or text.startswith("::FFFF:"):
        try:
            mapped = ipaddress.IPv6Address(text).ipv4_mapped
        except ValueError:
            return text
        if mapped is not None:
            return str(mapped)
    return text


class MtaConnection(Stream):
    """A connection from the MTA in front (policy, milter): the server
    knows it while it lasts (shutdown closes it); when it is lost, its
    task ends with it."""

    def __init__(self, server, listener):
        super().__init__(server.loop)
        self.server = server
        self.listener = listener

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.server.sessions.add(self)

    def connection_lost(self, error) -> None:
        super().connection_lost(error)
        if self.task is not None:
            self.task.cancel()

    async def shutdown(self) -> None:
        self.close()


def log_and_record(server, state: SessionState, ruleset_version: str, duration: float) -> None:
    """The session's log line, and its record when recording is on."""
    metrics.session_done(state)
    try:
        logformat.info(session_log, log_line(state, ruleset_version, duration, server.config.log_format))
        if server.recorder is not None or server.canary is not None:
            record = session_record(state, ruleset_version, duration)
            if server.canary is not None:
                server.canary.judge(record)
            if server.recorder is not None:
                server.recorder.write(record)
    except Exception:
        log.exception("could not log or record session %s", state.session_id)
