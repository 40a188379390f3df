"""The clamd and spamd clients (smtpfw/checks/scanners.py) against the real
daemons (Debian's clamav-daemon and spamassassin, tests/support/scanners.py)
and, for the protocol's edge cases, against loopback fakes written here."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import pytest

from smtpfw.checks.scanners import (
    ScannerAddress,
    ScanResult,
    clamd_scan,
    parse_address,
    spamd_check,
)
from tests.support.scanners import (
    EICAR,
    EICAR_VIRUS,
    GTUBE,
    ClamdInstance,
    ScannerError,
    SpamdInstance,
    scanners_available,
)
from tests.support.process import free_port

MB = 1024 * 1024
BIG = 50 * MB          # max_bytes when the size limit is not what is tested


def _need(kind: str) -> None:
    why = scanners_available(kind)
    if why:
        pytest.fail(why)


@pytest.fixture(scope="module")
def clamd():
    _need("clamd")
    with ClamdInstance() as instance:
        yield instance


@pytest.fixture(scope="module")
def spamd():
    _need("spamd")
    with SpamdInstance() as instance:
        yield instance


def run(coro: Awaitable):
    return asyncio.run(coro)


def timed(coro: Awaitable) -> tuple[ScanResult, float]:
    began = time.monotonic()
    result = asyncio.run(coro)
    return result, time.monotonic() - began


# -- messages -------------------------------------------------------------------

HEADERS = ("From: Alice Example <alice@example.org>\r\n"
           "To: Bob Example <bob@example.net>\r\n"
           "Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
           "Message-ID: <20261130100000.4711@mail.example.org>\r\n")

PLAIN = (HEADERS + "Subject: lunch tomorrow\r\n\r\n"
         "Hi Bob,\r\n\r\nshall we have lunch tomorrow at noon, at the usual place?\r\n\r\nAlice\r\n").encode()

SPAM = (HEADERS + "Subject: test\r\n\r\nThis is the GTUBE:\r\n\r\n" + GTUBE + "\r\n").encode()


def with_attachment(payload: bytes, filename: str = "report.bin") -> bytes:
    """A multipart/mixed message: a text part and ``payload`` as a base64 attachment."""
    b64 = base64.encodebytes(payload).decode().replace("\n", "\r\n")
    return (HEADERS + "Subject: the report\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="=-=boundary=-="\r\n\r\n'
            "This is a multi-part message in MIME format.\r\n"
            "--=-=boundary=-=\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            "The report is attached.\r\n\r\n"
            "--=-=boundary=-=\r\nContent-Type: application/octet-stream; name=\"" + filename + "\"\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename=\"" + filename + "\"\r\n\r\n"
            + b64 + "\r\n--=-=boundary=-=--\r\n").encode()


INFECTED = with_attachment(EICAR, "eicar.com")


# -- clamd, the real one ------------------------------------------------------------

def test_clamd_finds_eicar_in_a_base64_attachment(clamd):
    assert EICAR not in INFECTED            # only MIME decoding can find it
    for address in (clamd.address, clamd.tcp_address):
        result = run(clamd_scan(address, INFECTED, timeout=10, max_bytes=BIG))
        assert result == ScanResult("clamd", "infected", virus=EICAR_VIRUS), (address, result)


def test_clamd_finds_eicar_in_a_plain_body(clamd):
    message = HEADERS.encode() + b"Subject: raw\r\n\r\n" + EICAR + b"\r\n"
    assert run(clamd_scan(clamd.address, message, timeout=10, max_bytes=BIG)).status == "infected"


def test_clamd_passes_a_plain_message_and_a_harmless_attachment(clamd):
    for message in (PLAIN, with_attachment(b"just some bytes\x00\x01\x02" * 1000)):
        for address in (clamd.address, clamd.tcp_address):
            result = run(clamd_scan(address, message, timeout=10, max_bytes=BIG))
            assert result == ScanResult("clamd", "clean"), (address, result)
            assert result.answered


def test_clamd_decodes_mime_itself():
    """The attachment is found because clamd decodes the MIME: with
    ScanMail off the same message is clean."""
    _need("clamd")
    with ClamdInstance("ScanMail no") as blind:
        assert run(clamd_scan(blind.address, INFECTED, timeout=10, max_bytes=BIG)).status == "clean"
        raw = HEADERS.encode() + b"Subject: raw\r\n\r\n" + EICAR + b"\r\n"
        assert run(clamd_scan(blind.address, raw, timeout=10, max_bytes=BIG)).status == "infected"


def test_clamd_scans_a_message_of_many_chunks(clamd):
    """Larger than one INSTREAM chunk (64 KiB), the virus in the last one."""
    message = with_attachment(b"\x00" * (700 * 1024) + EICAR)
    assert len(message) > 10 * 64 * 1024
    assert run(clamd_scan(clamd.address, message, timeout=10, max_bytes=BIG)).status == "infected"


def test_clamd_size_limit_exceeded_is_an_error(clamd):
    """Over clamd's StreamMaxLength (1M here): clamd says so and hangs up while
    we are still sending; its reply is the reason, every time."""
    message = PLAIN + b"x" * (3 * MB)
    for _ in range(5):
        for address in (clamd.address, clamd.tcp_address):
            result, elapsed = timed(clamd_scan(address, message, timeout=10, max_bytes=BIG))
            assert result.status == "error", result
            assert "INSTREAM size limit exceeded" in result.reason and "StreamMaxLength" in result.reason, result
            assert elapsed < 5


def test_clamd_skips_a_message_over_max_bytes_without_connecting():
    async def main():
        connections = []
        server = await asyncio.start_server(lambda r, w: connections.append(w), "127.0.0.1", 0)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            over = await clamd_scan(address, b"x" * 101, timeout=1, max_bytes=100)
            spam_over = await spamd_check(address, b"x" * 101, timeout=1, max_bytes=100)
            await asyncio.sleep(0.1)
            return over, spam_over, connections
    over, spam_over, connections = run(main())
    assert over == ScanResult("clamd", "skipped", reason="larger than 100 bytes")
    assert spam_over == ScanResult("spamd", "skipped", reason="larger than 100 bytes")
    assert not over.answered and connections == []


def test_clamd_max_bytes_is_inclusive(clamd):
    assert run(clamd_scan(clamd.address, PLAIN, timeout=10, max_bytes=len(PLAIN))).status == "clean"
    assert run(clamd_scan(clamd.address, PLAIN, timeout=10, max_bytes=len(PLAIN) - 1)).status == "skipped"
    assert run(clamd_scan(clamd.address, b"", timeout=10, max_bytes=0)).status == "clean"


def test_clamd_paused_is_an_error_within_the_timeout(clamd):
    clamd.pause()
    try:
        for address in (clamd.address, clamd.tcp_address):
            for message in (PLAIN, PLAIN + b"y" * (900 * 1024)):    # small, and more than the socket buffers
                result, elapsed = timed(clamd_scan(address, message, timeout=1, max_bytes=BIG))
                assert result.status == "error", result
                assert "no answer within 1 s" in result.reason and address in result.reason, result
                assert 0.9 < elapsed < 2, elapsed
    finally:
        clamd.resume()
    assert run(clamd_scan(clamd.address, PLAIN, timeout=10, max_bytes=BIG)).status == "clean"


def test_clamd_killed_is_an_error_at_once_and_back_after_a_restart():
    _need("clamd")
    with ClamdInstance() as victim:
        assert run(clamd_scan(victim.address, INFECTED, timeout=5, max_bytes=BIG)).status == "infected"
        victim.kill()
        for address in (victim.address, victim.tcp_address):
            result, elapsed = timed(clamd_scan(address, PLAIN, timeout=1, max_bytes=BIG))
            assert result.status == "error" and "cannot connect" in result.reason, result
            assert elapsed < 1
        victim.start()
        assert run(clamd_scan(victim.tcp_address, INFECTED, timeout=5, max_bytes=BIG)).status == "infected"


def test_clamd_killed_mid_scan_is_an_error_before_the_timeout():
    """A scan waiting on a hung clamd ends when clamd dies, not at the timeout."""
    _need("clamd")
    with ClamdInstance() as victim:
        for address in (victim.address, victim.tcp_address):
            victim.pause()

            async def main(address: str = address):
                scan = asyncio.ensure_future(clamd_scan(address, PLAIN, timeout=5, max_bytes=BIG))
                await asyncio.sleep(0.3)
                assert not scan.done()
                await asyncio.to_thread(victim.kill)
                return await scan
            result, elapsed = timed(main())
            assert result.status == "error" and "no answer" not in result.reason, result
            assert elapsed < 2, (elapsed, result)
            victim.start()


def test_a_scanner_that_does_not_start_says_why():
    _need("clamd")
    broken = ClamdInstance("NoSuchOption yes")
    with pytest.raises(ScannerError, match=r"(?s)exited \(status 1\) before answering.*Unknown option NoSuchOption"):
        broken.start()
    assert not broken.root.exists()


# -- spamd, the real one --------------------------------------------------------------

def test_spamd_scores_gtube_as_spam(spamd):
    for address in (spamd.address, spamd.unix_address):
        result = run(spamd_check(address, SPAM, timeout=20, max_bytes=BIG))
        assert result.status == "spam", (address, result)
        assert result.score is not None and result.required == 5.0
        assert result.score >= 1000 >= result.required
        assert "GTUBE" in result.tests and result.reason == "" and result.answered


def test_spamd_scores_a_normal_message_as_ham(spamd):
    for address in (spamd.address, spamd.unix_address):
        result = run(spamd_check(address, PLAIN, timeout=20, max_bytes=BIG))
        assert result.status == "ham", (address, result)
        assert result.score is not None and result.required is not None
        assert result.score < result.required == 5.0
        assert "GTUBE" not in result.tests


def test_spamd_with_a_user(spamd):
    assert run(spamd_check(spamd.address, SPAM, timeout=20, user="bob", max_bytes=BIG)).status == "spam"
    assert run(spamd_check(spamd.address, PLAIN, timeout=20, user="nobody", max_bytes=BIG)).status == "ham"


def test_spamd_uses_the_packaged_rules(spamd):
    """The shipped rules are there (many tests hit, not just GTUBE), and the
    log says no rule failed to load."""
    assert not spamd.minimal_rules, "the spamassassin package ships no rules here"
    message = b"Subject: x\r\n\r\nhi\r\n"       # no From, no Date, no Message-ID
    result = run(spamd_check(spamd.address, message, timeout=20, max_bytes=BIG))
    assert {"MISSING_FROM", "MISSING_DATE", "MISSING_MID"} <= set(result.tests), result
    assert "failed to parse" not in spamd.log and "cannot scan" not in spamd.log, spamd.log_tail()


def test_spamd_skips_a_message_over_max_bytes(spamd):
    result = run(spamd_check(spamd.address, SPAM, timeout=20, max_bytes=len(SPAM) - 1))
    assert result == ScanResult("spamd", "skipped", reason=f"larger than {len(SPAM) - 1} bytes")
    assert run(spamd_check(spamd.address, SPAM, timeout=20, max_bytes=len(SPAM))).status == "spam"


def test_spamd_paused_is_an_error_within_the_timeout(spamd):
    spamd.pause()
    try:
        for address in (spamd.address, spamd.unix_address):
            result, elapsed = timed(spamd_check(address, SPAM, timeout=1, max_bytes=BIG))
            assert result.status == "error", result
            assert "no answer within 1 s" in result.reason and address in result.reason, result
            assert 0.9 < elapsed < 2, elapsed
    finally:
        spamd.resume()
    assert run(spamd_check(spamd.address, SPAM, timeout=20, max_bytes=BIG)).status == "spam"


def test_spamd_with_minimal_rules_killed_and_restarted():
    """The one-rule GTUBE file (what a system without shipped rules gets);
    then spamd killed: an error at once; killed while a scan waits: an error
    before the timeout; and back after a restart."""
    _need("spamd")
    with SpamdInstance(rules="minimal") as victim:
        assert victim.minimal_rules
        result = run(spamd_check(victim.address, SPAM, timeout=20, max_bytes=BIG))
        assert result.status == "spam" and result.tests == ("GTUBE",), result
        assert run(spamd_check(victim.address, PLAIN, timeout=20, max_bytes=BIG)) == \
            ScanResult("spamd", "ham", score=0.0, required=5.0)

        victim.kill()
        for address in (victim.address, victim.unix_address):
            result, elapsed = timed(spamd_check(address, SPAM, timeout=1, max_bytes=BIG))
            assert result.status == "error" and "cannot connect" in result.reason, result
            assert elapsed < 1

        victim.start()
        assert run(spamd_check(victim.unix_address, SPAM, timeout=20, max_bytes=BIG)).status == "spam"
        victim.pause()

        async def main():
            scan = asyncio.ensure_future(spamd_check(victim.address, SPAM, timeout=5, max_bytes=BIG))
            await asyncio.sleep(0.3)
            assert not scan.done()
            await asyncio.to_thread(victim.kill)
            return await scan
        result, elapsed = timed(main())
        assert result.status == "error" and "no answer" not in result.reason, result
        assert elapsed < 2, (elapsed, result)


def _loops() -> list[str]:
    import importlib.util
    return ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


@pytest.mark.parametrize("loop", _loops())
def test_the_main_cases_on_each_event_loop(loop, clamd, spamd):
    """smtpfw serve runs on uvloop when it is installed (the "fast" extra)."""
    if loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    async def main():
        out = []
        for address in (clamd.address, clamd.tcp_address):
            out.append(await clamd_scan(address, INFECTED, timeout=10, max_bytes=BIG))
            out.append(await clamd_scan(address, PLAIN + b"x" * (3 * MB), timeout=10, max_bytes=BIG))
        for address in (spamd.address, spamd.unix_address):
            out.append(await spamd_check(address, SPAM, timeout=20, max_bytes=BIG))
            out.append(await spamd_check(address, PLAIN, timeout=20, max_bytes=BIG))
        clamd.pause()
        try:
            began = time.monotonic()
            out.append(await clamd_scan(clamd.tcp_address, PLAIN, timeout=1, max_bytes=BIG))
            out.append(time.monotonic() - began)
        finally:
            clamd.resume()
        return out

    with asyncio.Runner(loop_factory=factory) as runner:
        infected1, limit1, infected2, limit2, spam1, ham1, spam2, ham2, paused, elapsed = runner.run(main())
    assert infected1.virus == infected2.virus == EICAR_VIRUS
    assert "INSTREAM size limit exceeded" in limit1.reason and "INSTREAM size limit exceeded" in limit2.reason
    assert spam1.status == spam2.status == "spam" and "GTUBE" in spam1.tests
    assert ham1.status == ham2.status == "ham"
    assert paused.status == "error" and "no answer within 1 s" in paused.reason and elapsed < 2


# -- protocol edges, against fakes ---------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _fake(handler: Handler, call: Callable[[str], Awaitable[ScanResult]]) -> ScanResult:
    """``call(address)`` against a loopback server that runs ``handler`` per connection."""
    async def serve(reader, writer):
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        return await call(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")


async def read_instream(reader: asyncio.StreamReader) -> bytes:
    """The message a client sent with zINSTREAM."""
    assert await reader.readexactly(10) == b"zINSTREAM\0"
    data = b""
    while True:
        n = int.from_bytes(await reader.readexactly(4), "big")
        if n == 0:
            return data
        data += await reader.readexactly(n)


def fake_clamd(reply: bytes | None, close: bool = True, read_all: bool = True, delay: float = 0.0,
               timeout: float = 1.0, message: bytes = PLAIN) -> tuple[ScanResult, float]:
    async def handler(reader, writer):
        if read_all:
            assert await read_instream(reader) == message
        await asyncio.sleep(delay)
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        if not close:
            await asyncio.sleep(30)
    return timed(_fake(handler, lambda a: clamd_scan(a, message, timeout=timeout, max_bytes=BIG)))


@pytest.mark.parametrize("reply, status, detail", [
    (b"stream: OK\0", "clean", ""),
    (b"stream: Win.Test.Foo-1 FOUND\0", "infected", "Win.Test.Foo-1"),
    (b"stream: Heuristics.Phishing.Email.SpoofedDomain FOUND\0", "infected",
     "Heuristics.Phishing.Email.SpoofedDomain"),
    (b"INSTREAM size limit exceeded. ERROR\0", "error", "clamd: INSTREAM size limit exceeded."),
    (b"Can't allocate memory ERROR\0", "error", "clamd: Can't allocate memory"),
    (b"stream: lstat() failed: No such file or directory. ERROR\0", "error", "lstat() failed"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n\0", "error", "unexpected reply 'HTTP/1.1 400 Bad Request"),
    (b"stream: OK", "error", "closed in the middle of the reply 'stream: OK'"),     # no terminator
    (b"", "error", "closed without a reply"),
    (b"\xff\xfe garbage \x00", "error", "unexpected reply"),
    (b"x" * 100_000, "error", "longer than 65536 bytes"),
])
def test_clamd_replies(reply, status, detail):
    result, elapsed = fake_clamd(reply)
    assert result.status == status, result
    assert detail in (result.virus if status == "infected" else result.reason), result
    assert elapsed < 1


def test_clamd_hangs_up_before_reading_the_message():
    """It closes with our message unread, so the kernel resets the connection."""
    for message in (PLAIN, PLAIN + b"z" * (4 * MB)):       # small, and more than the socket buffers
        result, elapsed = fake_clamd(None, read_all=False, message=message)
        assert result.status == "error", result
        assert "closed without a reply" in result.reason or "connection lost" in result.reason, result
        assert elapsed < 1


def test_clamd_answers_too_late_or_never():
    for reply, close in ((b"stream: OK\0", True), (None, False)):
        result, elapsed = fake_clamd(reply, close=close, delay=3 if reply else 0, timeout=0.5)
        assert result.status == "error" and result.reason.endswith("no answer within 0.5 s (waiting for the reply)")
        assert 0.45 < elapsed < 1.5, elapsed


def test_a_slow_trickle_does_not_outlast_the_timeout():
    async def trickle(reader, writer):
        await read_instream(reader)
        for byte in b"stream: OK\0":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)
    result, elapsed = timed(_fake(trickle, lambda a: clamd_scan(a, PLAIN, timeout=1, max_bytes=BIG)))
    assert result.status == "error" and "no answer within 1 s" in result.reason, result
    assert elapsed < 1.5


def fake_spamd(reply: bytes, user: str | None = None, expect: bytes | None = None) -> ScanResult:
    async def handler(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        if expect is not None:
            assert head + body == expect
        writer.write(reply)
        await writer.drain()
    result, elapsed = timed(_fake(handler, lambda a: spamd_check(a, SPAM, timeout=1, user=user, max_bytes=BIG)))
    assert elapsed < 1.5
    return result


def test_spamd_request_on_the_wire():
    reply = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE"
    expect = b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\nUser: carol\r\n\r\n" % len(SPAM) + SPAM
    assert fake_spamd(reply, user="carol", expect=expect) == \
        ScanResult("spamd", "spam", score=1000.0, required=5.0, tests=("GTUBE",))
    expect = b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(SPAM) + SPAM
    assert fake_spamd(reply, expect=expect).status == "spam"


@pytest.mark.parametrize("reply, expected", [
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.0 / 5.0\r\n\r\n",
     ScanResult("spamd", "ham", score=0.0, required=5.0)),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -1.9 / 5.0\r\n\r\nALL_TRUSTED, DKIM_VALID\r\n",  # no Content-length
     ScanResult("spamd", "ham", score=-1.9, required=5.0, tests=("ALL_TRUSTED", "DKIM_VALID"))),
    (b"SPAMD/1.0 0 EX_OK\r\nspam: yes ; 7 / 5\r\ncontent-length: 8\r\n\r\nA,B,C_D,",
     ScanResult("spamd", "spam", score=7.0, required=5.0, tests=("A", "B", "C_D"))),
])
def test_spamd_replies(reply, expected):
    assert fake_spamd(reply) == expected


@pytest.mark.parametrize("reply, reason", [
    (b"SPAMD/1.0 76 Bad header line: BOGUS\r\n", "spamd: 76 Bad header line: BOGUS"),
    (b"SPAMD/1.0 64 EX_USAGE\r\n", "spamd: 64 EX_USAGE"),
    (b"220 mail.example ESMTP\r\n", "unexpected reply '220 mail.example ESMTP"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", "no Spam header in the reply (headers: content-length)"),
    (b"SPAMD/1.1 0 EX_OK\r\n", "no Spam header in the reply (headers: none)"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe ; 1 / 5\r\n\r\n", "bad Spam header in the reply: 'maybe ; 1 / 5'"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1e400 / 5\r\n\r\n", "bad Spam header"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam True\r\n\r\n", "bad header line in the reply"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 50\r\nSpam: True ; 9 / 5\r\n\r\nGTUBE", "closed in the middle"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 999999999\r\n\r\n", "bad Content-length"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 7\r\nSpam: True ; 9 / 5\r\n\r\nA B,\x01 C", "unexpected rule names"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9 / 5", "closed in the middle of the reply 'Spam: True"),
    (b"SPAMD/1.1 0 EX", "closed in the middle of the reply 'SPAMD/1.1 0 EX'"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9 / 5\r\n\r\n" + b"A," * 40_000, "reply longer than 65536 bytes"),
    (b"", "closed without a reply"),
])
def test_spamd_bad_replies(reply, reason):
    result = fake_spamd(reply)
    assert result.status == "error" and reason in result.reason, result
    assert result.score is None and result.tests == ()


def test_spamd_never_answers():
    async def silent(reader, writer):
        await asyncio.sleep(30)
    result, elapsed = timed(_fake(silent, lambda a: spamd_check(a, SPAM, timeout=0.5, max_bytes=BIG)))
    assert result.status == "error" and "no answer within 0.5 s" in result.reason
    assert 0.45 < elapsed < 1.5


# -- connecting ---------------------------------------------------------------------

def test_nothing_listening(tmp_path):
    port = free_port()
    for call in (lambda a: clamd_scan(a, PLAIN, timeout=1, max_bytes=BIG),
                 lambda a: spamd_check(a, PLAIN, timeout=1, max_bytes=BIG)):
        for address in (f"127.0.0.1:{port}", f"unix:{tmp_path / 'nothing.sock'}"):
            result, elapsed = timed(call(address))
            assert result.status == "error" and result.reason.startswith(f"{result.scanner} at {address}: "
                                                                         "cannot connect ("), result
            assert elapsed < 1


def test_an_unresolvable_host_is_an_error():
    result = run(clamd_scan("no-such-host.invalid:3310", PLAIN, timeout=2, max_bytes=BIG))
    assert result.status == "error" and "cannot connect" in result.reason, result


@pytest.mark.parametrize("text, parsed", [
    ("unix:/run/clamav/clamd.ctl", ScannerAddress(path="/run/clamav/clamd.ctl")),
    ("unix:relative.sock", ScannerAddress(path="relative.sock")),
    ("127.0.0.1:3310", ScannerAddress(host="127.0.0.1", port=3310)),
    ("clamav.example:3310", ScannerAddress(host="clamav.example", port=3310)),
    ("[::1]:783", ScannerAddress(host="::1", port=783)),
])
def test_parse_address(text, parsed):
    assert parse_address(text) == parsed
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["", "unix:", "localhost", ":3310", "::1:783", "[::1]783", "[::1]",
                                  "host:0", "host:65536", "host:http", "host:", "ho st:1", "host:３３１０"])
def test_bad_addresses(text):
    with pytest.raises(ValueError, match="scanner address"):
        parse_address(text)
    with pytest.raises(ValueError):
        run(clamd_scan(text, PLAIN, timeout=1, max_bytes=BIG))


def test_bad_arguments():
    for kw in ({"timeout": 0}, {"timeout": -1}, {"timeout": float("inf")}, {"timeout": float("nan")},
               {"max_bytes": -1}, {"max_bytes": 1.5}, {"user": ""}, {"user": "a b"}, {"user": "a\r\nX: y"}):
        args = {"timeout": 1, "max_bytes": BIG, **kw}
        with pytest.raises(ValueError):
            run(spamd_check("127.0.0.1:783", PLAIN, **args))


# -- results ------------------------------------------------------------------------

@pytest.mark.parametrize("result", [
    ScanResult("clamd", "clean"),
    ScanResult("clamd", "infected", virus="Eicar-Test-Signature"),
    ScanResult("spamd", "spam", score=1000.0, required=5.0, tests=("GTUBE", "MISSING_DATE")),
    ScanResult("spamd", "ham", score=-0.5, required=5.0),
    ScanResult("spamd", "error", reason="spamd at 127.0.0.1:783: no answer within 1 s (connecting)"),
    ScanResult("clamd", "skipped", reason="larger than 100 bytes"),
])
def test_result_json_round_trip(result):
    import json
    assert ScanResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_result_json_shape():
    assert ScanResult("clamd", "clean").to_json() == {"scanner": "clamd", "status": "clean"}
    assert ScanResult("spamd", "ham", score=0.0, required=5.0).to_json() == \
        {"scanner": "spamd", "status": "ham", "score": 0.0, "required": 5.0}
    assert ScanResult.from_json({"scanner": "spamd", "status": "spam", "score": 7, "required": 5,
                                 "tests": ["A"]}) == ScanResult("spamd", "spam", score=7.0, required=5.0,
                                                                tests=("A",))
    assert ScanResult("spamd", "ham", tests=["A", "B"]).tests == ("A", "B")       # type: ignore[arg-type]


def test_result_rejects_unknown_scanners_and_statuses():
    with pytest.raises(ValueError, match="unknown scanner"):
        ScanResult("rspamd", "spam")
    with pytest.raises(ValueError, match="unknown clamd status 'spam'"):
        ScanResult("clamd", "spam")
    with pytest.raises(ValueError, match="unknown spamd status 'infected'"):
        ScanResult("spamd", "infected")


def test_a_ruleset_testing_scans_runs_where_no_scanner_can(tmp_path):
    """`smtpfw test` (and replay) has no scanner to ask: the scan is an
    error, which rules see as no verdict, not a crash ("unknown scanner ''")."""
    from tests.support.cli import run
    (tmp_path / "s.rules").write_text('on data:\n    [spam] reject 550 5.7.1 "spam" if spam.score >= 5\n'
                                      '    [virus] reject 554 5.7.1 "virus" if virus = "infected"\n'
                                      'on rcpt:\n    accept if rcpt.domain = "example.net"\n')
    (tmp_path / "s.tests").write_text("client 192.0.2.1 ehlo mx.example.org from a@example.org "
                                      "rcpt u@example.net -> accept\n")
    proc = run("test", tmp_path / "s.rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
