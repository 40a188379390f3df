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

    def usesTime(self) -> bool:
        return False                           # render() formats the time itself

    def formatMessage(self, record: logging.LogRecord) -> str:
        return self.render(record.created, record.msecs, record.name, record.process, record.levelname,
                           record.message)

    def render(self, created: float, msecs: float, name: str, process: int | None, levelname: str,
               message: str) -> str:
        """KV_FORMAT's line.  The time's second is made once per second
        (every session logs a line; strftime for each is a measurable part
        of it)."""
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return (f"{self._stamp},{int(msecs):03d} {name}[{process if process is not None else pid()}] "
                f"{levelname} {escape(message)}")


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


_installed: list[logging.StreamHandler] = []     # the handler setup() put on the root logger


def info(logger: logging.Logger, message: str) -> None:
    """``logger.info(message)``, for the line every session logs.  When
    logging would only hand it to the key=value handler ``setup`` installed
    (no other handler or filter on the way, INFO enabled), the line is
    rendered and written here, the same bytes without a LogRecord and the
    handler chain: that was 4 % of a plain session's CPU.  Any other
    configuration (a test's log capture, a plugin's handler, the json
    format) goes through logging as usual."""
    if not _installed or not _direct(logger, _installed[0]):
        logger.info(message)
        return
    handler = _installed[0]
    formatter = handler.formatter
    assert isinstance(formatter, KvFormatter)
    now = time.time()
    text = formatter.render(now, (now - int(now)) * 1000, logger.name, None, "INFO", message)
    handler.acquire()
    try:
        handler.stream.write(text + handler.terminator)
        handler.flush()
    except Exception:  # noqa: BLE001 - as logging does: a broken log stream does not stop the session's work
        handler.handleError(logging.makeLogRecord({"name": logger.name, "msg": message, "levelno": logging.INFO,
                                                   "levelname": "INFO"}))
    finally:
        handler.release()


def _direct(logger: logging.Logger, handler: logging.StreamHandler) -> bool:
    if not logger.isEnabledFor(logging.INFO) or handler.level > logging.INFO or handler.filters \
            or not isinstance(handler.formatter, KvFormatter):
        return False
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return False
        if node.parent is None:                # the root logger
            return len(node.handlers) == 1 and node.handlers[0] is handler
        if node.handlers or not node.propagate:
            return False
        node = node.parent
    return False


def setup(fmt: str, level: str, stream) -> None:
    """Send every logger's records to ``stream`` in format ``fmt``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KvFormatter())
    _installed[:] = [handler]
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
    logging.captureWarnings(True)       # Python's warnings too: in json mode every line is JSON
    logging.getLogger("mail.log").setLevel(logging.WARNING)   # aiosmtpd's own chatter
