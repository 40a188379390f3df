"""The log formats, and the session line's direct way to the stream
(logformat.info): the same bytes as through logging, and logging itself
whenever anything else is configured on the way."""

from __future__ import annotations

import io
import json
import logging

import pytest

from smtpfw import logformat

LINE = 'session=1a.2b.3 client=192.0.2.1 reply="250 2.0.0 Ok" odd=\x01\t'


@pytest.fixture
def logs():
    """setup() on a fresh stream; the logging configuration put back after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, list(logformat._installed), logging.logProcesses,
             logging.logThreads, logging.logMultiprocessing, logging._srcfile)
    session = logging.getLogger("smtpfw.session")
    session_saved = (list(session.handlers), session.level, session.propagate)
    stream = io.StringIO()

    def configure(fmt: str = "kv", level: str = "info") -> io.StringIO:
        logformat.setup(fmt, level, stream)
        return stream

    yield configure
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logformat._installed[:] = saved[2]
    logging.logProcesses, logging.logThreads, logging.logMultiprocessing, logging._srcfile = saved[3:]
    session.handlers[:] = session_saved[0]
    session.setLevel(session_saved[1])
    session.propagate = session_saved[2]
    logging.captureWarnings(False)


def _without_time(line: str) -> str:
    return line[len("2026-12-01 03:01:40,261 "):]


def test_the_direct_line_is_the_line_logging_writes(logs):
    stream = logs()
    session = logging.getLogger("smtpfw.session")
    session.info(LINE)
    logformat.info(session, LINE)
    through_logging, direct = stream.getvalue().splitlines()
    assert _without_time(direct) == _without_time(through_logging)
    assert _without_time(direct).startswith("smtpfw.session[")
    assert direct.endswith('reply="250 2.0.0 Ok" odd=\\x01\\t')


def test_any_other_handler_gets_the_line_through_logging(logs):
    stream = logs()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    session = logging.getLogger("smtpfw.session")
    keep = Keep()
    for where in (logging.getLogger(), logging.getLogger("smtpfw"), session):
        where.addHandler(keep)
        try:
            logformat.info(session, LINE)
        finally:
            where.removeHandler(keep)
    assert [r.getMessage() for r in seen] == [LINE] * 3
    assert len(stream.getvalue().splitlines()) == 3        # and the stream had it each time


def test_a_level_above_info_writes_nothing(logs):
    stream = logs(level="warning")
    logformat.info(logging.getLogger("smtpfw.session"), LINE)
    assert stream.getvalue() == ""


def test_the_json_format_goes_through_logging(logs):
    stream = logs(fmt="json")
    logformat.info(logging.getLogger("smtpfw.session"), logformat.LogLine(LINE, {"session": "1a.2b.3"}))
    out = json.loads(stream.getvalue())
    assert out["session"] == "1a.2b.3" and out["logger"] == "smtpfw.session" and out["level"] == "INFO"
    assert isinstance(out["pid"], int)


def test_a_broken_log_stream_does_not_stop_the_caller(logs, capsys):
    """As logging does: a write that fails is reported on stderr, and the
    session goes on to its record (log_and_record writes it after the line)."""
    logs()

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    logformat.setup("kv", "info", Broken())
    logformat.info(logging.getLogger("smtpfw.session"), LINE)
    assert "Logging error" in capsys.readouterr().err
