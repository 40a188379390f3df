"""How smtpfw's log lines look: ``kv`` (text) or ``json``, one line per record.

Client-supplied text reaches log messages (HELO names and addresses in the
session line, rule text with ``{helo}`` placeholders in ``log`` actions).  A
raw CR, ESC, NEL or U+2028 in it could forge a log line or drive the
operator's terminal, so both formats escape every non-printable character:
``kv`` as ``\\x1b``/``\\u2028``, ``json`` by JSON's own escapes (ASCII only,
so no line separator survives either).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import time

from smtpfw.pid import pid

_NAMED = {"\t": "\\t", "\r": "\\r", "\n": "\\n"}
KV_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


def _escape_char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every non-printable character written as an escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


_QUOTED = re.compile(r'[ "=\\]')     # characters that make a value quoted


def kv_value(text: str) -> str:
    """A value for ``key=value``: quoted (``\\`` and ``"`` escaped) when it
    is empty or holds a space, quote, ``=``, backslash or anything unprintable."""
    if text and text.isprintable() and not _QUOTED.search(text):
        return text
    return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class LogLine(str):
    """A rendered log message that also carries its fields, so the json
    format can emit them as keys instead of as one string."""

    fields: dict

    def __new__(cls, text: str, fields: dict) -> "LogLine":
        line = super().__new__(cls, text)
        line.fields = fields
        return line


class KvFormatter(logging.Formatter):
    """``TIME LOGGER[PID] LEVEL message``, the message escaped."""

    def __init__(self) -> None:
        super().__init__(KV_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The default format, its second made once per second (every
        session logs a line; strftime for each is a measurable part of it)."""
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._stamp},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        if record.process is None:             # not collected (setup): this process's, without a system call
            record.process = pid()
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, pid, logger, level, and the message
    (``msg``) or, for a ``LogLine``, its fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _dt.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
               "pid": record.process if record.process is not None else pid(), "logger": record.name, "level": record.levelname}
        fields = getattr(record.msg, "fields", None)
        if isinstance(fields, dict) and not record.args:
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(fmt: str, level: str, stream) -> None:
    """Send every logger's records to ``stream`` in format ``fmt``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KvFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # What no format here shows is not collected (the logging HOWTO's
    # "Optimization"): where each call was made, thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False        # a getpid() system call per record: the formatters know the pid
    logging.captureWarnings(True)       # Python's warnings too: in json mode every line is JSON
    logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd's own chatter
