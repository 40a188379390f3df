"""smtpfw's own Redis client (smtpfw/state/resp.py) against a real
redis-server on loopback (tests/support/redis.py), on asyncio's event loop
and on uvloop (what the server runs on): pipelining, callers that give
up, a server killed or stopped, NOSCRIPT, AUTH and SELECT, error replies,
what stays on redis-py.  tests/test_state_store.py and
tests/test_state_rules.py run the whole state suite on this client too
(a ``redis://`` URL)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import pytest

from smtpfw.state import Bucket, Store, open_store
from smtpfw.state.redis import HIT, RedisBackend
from smtpfw.state.resp import NoScriptError, ProtocolError, ReplyError, RespClient, pack, parse, supports
from tests.support.redis import RedisInstance, free_port, redis_available

T0 = 1_790_000_000.0

pytestmark = pytest.mark.skipif(redis_available() is not None, reason=redis_available() or "")


@pytest.fixture(scope="module")
def redis_server():
    with RedisInstance() as server:
        yield server


@pytest.fixture
def server(redis_server):
    """The module's server, empty, no scripts, no password."""
    import redis as redis_py
    admin = redis_py.Redis(port=redis_server.port)
    admin.flushall()
    admin.script_flush()
    admin.close()
    return redis_server


def admin(server: RedisInstance, **kw):
    import redis as redis_py
    return redis_py.Redis(port=server.port, decode_responses=True, **kw)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """asyncio.run, on the loop under test."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")

        def go(coro):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        return go
    return asyncio.run


def backend_of(store: Store) -> RedisBackend:
    backend = store.backend
    assert isinstance(backend, RedisBackend)
    return backend


# ---- RESP2, no server ---------------------------------------------------------------


def test_parse_every_reply_type_cut_anywhere():
    """A reply split anywhere (as TCP may deliver it) parses the same once
    complete; before that it is incomplete, never wrong."""
    from smtpfw.state.resp import _Incomplete
    wire = (b"+OK\r\n" b":-42\r\n" b"$6\r\nh\xc3\xa9l\r\n\r\n" b"$-1\r\n" b"$0\r\n\r\n" b"*-1\r\n" b"*0\r\n"
            b"*4\r\n:1\r\n$3\r\n0.5\r\n*2\r\n$1\r\na\r\n$-1\r\n-ERR inner\r\n" b"-NOSCRIPT No matching script\r\n")
    values = []
    pos = 0
    while pos < len(wire):
        value, pos = parse(wire, pos)
        values.append(value)
    assert values[:7] == ["OK", -42, "hél\r\n", None, "", None, []]
    assert values[7][:3] == [1, "0.5", ["a", None]] and isinstance(values[7][3], ReplyError)
    assert isinstance(values[8], NoScriptError) and str(values[8]) == "NOSCRIPT No matching script"
    ends = []
    pos = 0
    while pos < len(wire):
        ends.append(parse(wire, pos)[1])
        pos = ends[-1]
    start = 0
    for end in ends:
        for cut in range(start + 1, end):
            with pytest.raises(_Incomplete):
                parse(wire[:cut], start)
        start = end


def test_parse_rejects_what_is_not_resp2():
    for bad in (b"!5\r\nhello\r\n", b":12x\r\n", b"$3\r\nabcde\r\n", b"*1\r\n?\r\n"):
        with pytest.raises(ProtocolError):
            parse(bad, 0)


def test_pack():
    assert pack(("SET", "k", 1, 0.5, b"\x00\xff", "é")) == (
        b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n0.5\r\n$2\r\n\x00\xff\r\n$2\r\n\xc3\xa9\r\n")
    with pytest.raises(TypeError):
        pack(("SET", None))


def test_which_urls_use_this_client_and_which_stay_on_redis_py(tmp_path):
    assert supports("redis://127.0.0.1:6379/0") and supports("redis://:pw@h") and supports("redis://u:p@h:1/15")
    for url in ("rediss://h:6380/0", "unix:///run/redis.sock", "redis://h:6379/0?protocol=3", "redis://h/x",
                "redis://h:99999/0", "redis:///0"):
        assert not supports(url), url
    assert RedisBackend("redis://127.0.0.1:1/0").pipelined
    assert isinstance(RedisBackend("redis://127.0.0.1:1/0").client, RespClient)
    assert not RedisBackend("redis://127.0.0.1:1/0", cluster=True).pipelined
    assert not RedisBackend("redis://127.0.0.1:1/0", pipelined=False).pipelined
    assert not RedisBackend("redis://127.0.0.1:1/0", health_check_interval=5).pipelined   # redis-py options
    assert not RedisBackend("rediss://127.0.0.1:1/0").pipelined
    assert not RedisBackend(f"unix://{tmp_path}/redis.sock").pipelined
    c = RespClient.from_url("redis://al%40ice:p%3Aw@10.0.0.5:6380/7")
    assert (c.host, c.port, c.username, c.password, c.db) == ("10.0.0.5", 6380, "al@ice", "p:w", 7)
    c = RespClient.from_url("redis://:secret@[::1]")
    assert (c.host, c.port, c.username, c.password, c.db) == ("::1", 6379, None, "secret", 0)


def test_a_unix_socket_stays_on_redis_py_and_works(tmp_path, run):
    sock = tmp_path / "redis.sock"
    with RedisInstance("--unixsocket", str(sock), "--unixsocketperm", "700"):
        async def go():
            store = open_store(f"unix://{sock}?db=2")
            assert not backend_of(store).pipelined
            try:
                assert (await store.hit("k", [Bucket(2, 60)], now=T0)).counts == pytest.approx((1.0,))
                assert (await store.set("v", "x", 60, now=T0)).ok
                assert (await store.get("v", now=T0)).value == "x"
            finally:
                await store.close()
        run(go())


# ---- pipelining ------------------------------------------------------------------------


def test_concurrent_calls_are_pipelined_on_one_connection_and_get_their_own_answers(server, run):
    async def go():
        client = RespClient(port=server.port)
        try:
            assert await client.call("PING") == "PONG"
            conn = client._conn
            assert conn is not None
            depth = []
            send = conn.send

            def watched(command):
                reply = send(command)
                depth.append(len(conn.waiting))
                return reply
            conn.send = watched                                      # type: ignore[method-assign]
            calls = []
            for i in range(300):
                kind = i % 4
                if kind == 0:
                    calls.append(client.call("ECHO", f"echo-{i}"))
                elif kind == 1:
                    calls.append(client.call("INCRBY", f"n{i}", i))
                elif kind == 2:
                    calls.append(client.call("SET", f"s{i}", f"v{i}"))
                else:
                    calls.append(client.call("EVAL", "return {KEYS[1], ARGV[1]}", 1, f"k{i}", "é" * i))
            replies = await asyncio.gather(*calls)
            for i, reply in enumerate(replies):
                assert reply == [f"echo-{i}", i, "OK", [f"k{i}", "é" * i]][i % 4], (i, reply)
            assert client.connections == 1
            assert max(depth) > 100                 # sent before the first reply came: one pipeline
            assert [await client.call("GET", f"s{i}") for i in (2, 6)] == ["v2", "v6"]
        finally:
            await client.close()
    run(go())


def test_every_operation_goes_through_it(server, run):
    """ping, get, set, delete, release, holders, peek, incr (and the
    scripts) on smtpfw's client: one command each, one connection."""
    async def go():
        store = open_store(server.url)
        backend = backend_of(store)
        assert backend.pipelined
        client = backend.client
        sent: list[bytes] = []
        send = client.send

        def counting(command):
            sent.append(command.split(b"\r\n")[2])
            return send(command)
        client.send = counting
        try:
            assert (await store.ping()).ok
            assert (await store.hit("k", [Bucket(3, 60)], now=T0)).allowed
            assert (await store.peek("k", [Bucket(3, 60)], now=T0)).counts == pytest.approx((1.0,))
            assert (await store.acquire("c", 2, 60, now=T0, holder="a")).acquired
            assert await store.holders("c", now=T0) == 1
            assert (await store.release("c", "a")).ok
            assert (await store.greylist("t", now=T0, client="net")).verdict == "new"
            assert (await store.set("v", "x", 60, now=T0)).ok
            assert (await store.get("v", now=T0)).value == "x"
            assert (await store.incr("n", 2, 60, now=T0)).value == 2
            assert (await store.delete("v")).ok
            assert [c for c in sent if c != b"EVAL"] == [b"PING", b"EVALSHA", b"HMGET", b"EVALSHA", b"ZCOUNT", b"ZREM",
                                                         b"EVALSHA", b"EVALSHA", b"HMGET", b"EVALSHA", b"DEL"]
            # the first EVALSHA of each script found none (flushed): EVAL followed it
            assert sent.count(b"EVAL") == 5
            assert client.connections == 1
        finally:
            await store.close()
    run(go())


def test_same_results_as_redis_py(server, run):
    """The same operations through smtpfw's client and through redis-py
    (on two databases of one server) give the same results and leave the
    same keys with the same values."""
    async def ops(store: Store) -> list:
        out: list = []
        for i in range(3):
            out.append(await store.hit("ip:192.0.2.1", [Bucket(2, 60), Bucket(5, 3600)], now=T0 + i))
            out.append(await store.hit("ip:192.0.2.1", [Bucket(2, 60)], cost=3, now=T0 + i, force=i == 2))
            out.append(await store.peek("ip:192.0.2.1", [Bucket(2, 60), Bucket(5, 3600)], now=T0 + i))
            out.append(await store.acquire("ip:{x}", 2, 30, now=T0 + i, holder=f"h{i}"))
            out.append(await store.holders("ip:{x}", now=T0 + i))
            out.append(await store.greylist("net|a@b|c@d", now=T0 + 150 * i, client="net", delay=300))
            out.append(await store.greylist("lone|é", now=T0 + 400 * i))
            out.append(await store.set(f"kv:{i}", f"välue {i}", 100, now=T0))
            out.append(await store.get(f"kv:{i}", now=T0 + 50 * i))
            out.append(await store.incr("n", 1.5, 60, now=T0 + i))
            out.append(await store.incr("m", -2, 60, now=T0 + i))
        out.append(await store.release("ip:{x}", "h0"))
        out.append(await store.release("ip:{x}", "nobody"))
        out.append(await store.delete("kv:0"))
        out.append(await store.delete("kv:0"))
        return out

    async def go():
        ours = open_store(server.url.rsplit("/", 1)[0] + "/1")
        theirs = open_store(server.url.rsplit("/", 1)[0] + "/2", pipelined=False)
        assert backend_of(ours).pipelined and not backend_of(theirs).pipelined
        try:
            a, b = await ops(ours), await ops(theirs)
        finally:
            await ours.close()
            await theirs.close()
        assert all(getattr(r, "available", True) for r in a + b)
        assert a == b
    run(go())
    one, two = admin(server, db=1), admin(server, db=2)
    keys = sorted(one.keys("*"))
    assert keys == sorted(two.keys("*")) and len(keys) == 9
    for key in keys:
        kind = one.type(key)
        if kind == "hash":
            assert one.hgetall(key) == two.hgetall(key), key
        else:
            assert one.zrange(key, 0, -1, withscores=True) == two.zrange(key, 0, -1, withscores=True), key


# ---- callers that give up ----------------------------------------------------------------


def test_a_cancelled_call_does_not_desynchronise_the_others(server, run):
    """BLPOP holds the connection: the caller gives up; the reply it would
    have had (a value pushed later) is read and dropped, and every later
    call gets its own reply."""
    async def go():
        client = RespClient(port=server.port)
        other = RespClient(port=server.port)
        try:
            blocked = asyncio.ensure_future(client.call("BLPOP", "queue", 5))
            await asyncio.sleep(0.05)
            behind = [asyncio.ensure_future(client.call("ECHO", f"behind-{i}")) for i in range(5)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(blocked, 0.1)
            assert blocked.cancelled()
            assert not any(f.done() for f in behind)            # still waiting behind BLPOP
            assert await other.call("RPUSH", "queue", "for-the-blpop") == 1
            assert await asyncio.gather(*behind) == [f"behind-{i}" for i in range(5)]
            assert await client.call("ECHO", "after") == "after"
            assert await client.call("LLEN", "queue") == 0      # BLPOP did take it: its reply was dropped
            # many at once, every other one cancelled before its reply
            tasks = [asyncio.ensure_future(client.call("ECHO", str(i))) for i in range(200)]
            await asyncio.sleep(0)
            for t in tasks[::2]:
                t.cancel()
            for i, t in enumerate(tasks):
                if i % 2:
                    assert await t == str(i)
                else:
                    with pytest.raises(asyncio.CancelledError):
                        await t
            assert await client.call("ECHO", "last") == "last"
            assert client.connections == 1
        finally:
            await client.close()
            await other.close()
    run(go())


def test_operations_that_time_out_in_the_store_do_not_desynchronise_later_ones(server, run):
    """Redis stopped (SIGSTOP): the Store's timeout gives up on operations
    in flight; when Redis answers again their replies come first, are
    dropped, and every later operation gets its own result."""
    async def go():
        store = open_store(server.url, timeout=0.2, failures=100)
        try:
            for i in range(10):
                assert (await store.set(f"k{i}", f"v{i}", 60, now=T0)).ok
            # the script loaded first: an EVALSHA whose caller gave up is not followed by an EVAL
            assert (await store.incr("n", 1, 60, now=T0)).value == 1
            server.pause()
            try:
                results = await asyncio.gather(*(store.get(f"k{i}", now=T0) for i in range(10)),
                                               *(store.incr("n", 1, 60, now=T0) for _ in range(10)))
                assert not any(r.available for r in results)
                assert all("no answer within 0.2 s" in r.reason for r in results)
            finally:
                server.resume()
            for _ in range(3):
                got = await asyncio.gather(*(store.get(f"k{i}", now=T0) for i in range(10)))
                assert [g.value for g in got] == [f"v{i}" for i in range(10)]
            assert (await store.incr("n", 1, 60, now=T0)).value == 12   # the 10 that timed out were done
            assert backend_of(store).client.connections == 1
        finally:
            await store.close()
    run(go())


# ---- a server that goes away --------------------------------------------------------------


def test_redis_killed_mid_run_callers_fail_within_the_timeout_and_it_reconnects(run):
    server = RedisInstance().start()
    try:
        async def go():
            store = open_store(server.url, timeout=0.3, failures=1000)
            client = backend_of(store).client
            try:
                assert (await store.set("x", "1", 60, now=T0)).ok
                assert (await store.hit("loaded", [Bucket(5, 60)], now=T0)).available   # the script loaded
                # in flight when it dies: Redis stopped first, so they wait on the connection
                server.pause()
                flight = [asyncio.ensure_future(store.hit(f"k{i}", [Bucket(5, 60)], now=T0)) for i in range(20)]
                await asyncio.sleep(0.05)
                start = time.monotonic()
                assert server.proc is not None
                os.kill(server.proc.pid, signal.SIGKILL)        # stopped: it answers nothing more
                server.proc.wait(10)
                results = await asyncio.gather(*flight)
                assert time.monotonic() - start < 0.3
                assert all(not r.available and r.allowed for r in results)   # fail-open answers
                assert all("ConnectionError: redis 127.0.0.1" in r.reason and "connection lost" in r.reason
                           for r in results), [r.reason for r in results]
                # gone: refused at once
                start = time.monotonic()
                g = await store.greylist("t", now=T0)
                assert not g.available and g.verdict == "pass" and time.monotonic() - start < 0.3
                assert "ConnectionRefusedError" in g.reason or "ConnectionError" in g.reason, g.reason
                server.start()
                r = await store.hit("k", [Bucket(5, 60)], now=T0)
                assert r.available and r.counts == pytest.approx((1.0,))
                assert (await store.get("x", now=T0)).value is None      # a new server, empty
                assert client.connections == 2
            finally:
                await store.close()
        run(go())
    finally:
        server.__exit__(None, None, None)


def test_direct_callers_get_connection_error_when_the_connection_is_lost(server, run):
    async def go():
        client = RespClient(port=server.port)
        try:
            assert await client.call("CLIENT", "SETNAME", "victim") == "OK"
            waiting = [asyncio.ensure_future(client.call("BLPOP", "nothing", 5)) for _ in range(3)]
            await asyncio.sleep(0.05)
            killer = RespClient(port=server.port)
            assert await killer.call("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal") >= 1
            await killer.close()
            for f in waiting:
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(f, 1.0)
            assert await client.call("ECHO", "again") == "again"      # the next call reconnects
            assert client.connections == 2
        finally:
            await client.close()
    run(go())


def test_a_connection_that_stalls_is_given_up_by_the_next_call(server, run):
    async def go():
        client = RespClient(port=server.port, stall=0.3, connect_timeout=0.2)
        try:
            assert await client.call("PING") == "PONG"
            server.pause()
            try:
                first = asyncio.ensure_future(client.call("ECHO", "1"))
                await asyncio.sleep(0.4)
                assert not first.done()
                second = asyncio.ensure_future(client.call("ECHO", "2"))
                with pytest.raises(ConnectionError, match="no reply for 0.3 s"):
                    await asyncio.wait_for(first, 1.0)
                with pytest.raises(TimeoutError):                  # a new connection, to a server still stopped
                    await asyncio.wait_for(second, 0.3)
            finally:
                server.resume()
            assert await client.call("ECHO", "3") == "3"
        finally:
            await client.close()
    run(go())


def test_connect_timeout(run):
    """A server that accepts TCP and never answers AUTH: the connect fails
    within connect_timeout, and so does the next one."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        async def go():
            client = RespClient(port=port, password="x", connect_timeout=0.2)
            for _ in range(2):
                start = time.monotonic()
                with pytest.raises(ConnectionError, match="not connected within 0.2 s"):
                    await client.call("PING")
                assert time.monotonic() - start < 0.5
            await client.close()
        run(go())
    finally:
        listener.close()


def test_refused_is_connection_error(run):
    async def go():
        client = RespClient(port=free_port())
        with pytest.raises(ConnectionError):
            await client.call("PING")
        await client.close()
    run(go())


# ---- scripts ---------------------------------------------------------------------


def test_noscript_after_script_flush(server, run):
    async def go():
        store = open_store(server.url)
        try:
            assert (await store.hit("k", [Bucket(100, 60)], now=T0)).counts == pytest.approx((1.0,))
            assert admin(server).script_exists(backend_of(store)._hit.sha) == [True]
            admin(server).script_flush()
            # many at once, all finding the script gone: each is run by EVAL
            results = await asyncio.gather(*(store.hit("k", [Bucket(100, 60)], now=T0) for _ in range(20)))
            assert all(r.available and r.allowed for r in results)
            assert sorted(r.counts[0] for r in results) == pytest.approx([float(n) for n in range(2, 22)])
            assert admin(server).script_exists(backend_of(store)._hit.sha) == [True]
            assert (await store.greylist("t", now=T0)).verdict == "new"
            assert all(s.failures == 0 for s in store.stats.values())
        finally:
            await store.close()
    run(go())


def test_the_script_sha_is_redis_s(server, run):
    async def go():
        client = RespClient(port=server.port)
        try:
            script = client.script(HIT)
            assert await client.call("SCRIPT", "LOAD", HIT) == script.sha
            with pytest.raises(NoScriptError):
                await client.call("EVALSHA", "0" * 40, 0)
        finally:
            await client.close()
    run(go())


# ---- AUTH, SELECT ------------------------------------------------------------------------


def test_auth_with_a_password_and_a_db_number(run):
    with RedisInstance() as server:
        a = admin(server)
        a.config_set("requirepass", "s3cr:et")
        pw = admin(server, password="s3cr:et")
        base = f"redis://:s3cr%3Aet@127.0.0.1:{server.port}"

        async def go():
            store = open_store(base + "/3")
            try:
                assert (await store.set("v", "x", 60, now=T0)).ok
                assert (await store.hit("k", [Bucket(5, 60)], now=T0)).available
                assert (await store.get("v", now=T0)).value == "x"
            finally:
                await store.close()
            # wrong password, no password: unavailable, and says why
            for url in (f"redis://:nope@127.0.0.1:{server.port}/3", f"redis://127.0.0.1:{server.port}/3"):
                store = open_store(url)
                try:
                    r = await store.get("v", now=T0)
                    assert not r.available
                    assert "WRONGPASS" in r.reason or "NOAUTH" in r.reason, r.reason
                finally:
                    await store.close()
        run(go())
        assert sorted(admin(server, password="s3cr:et", db=3).keys("*")) == ["smtpfw:k:{v}", "smtpfw:r:{k}"]
        assert pw.dbsize() == 0                                        # nothing in db 0

        # an ACL user with a password of its own
        pw.acl_setuser("alice", enabled=True, passwords=["+al!ce pw"], keys=["smtpfw:*"], commands=["+@all"])

        async def user():
            store = open_store(f"redis://alice:al%21ce%20pw@127.0.0.1:{server.port}/5")
            try:
                assert (await store.set("u", "y", 60, now=T0)).ok
                assert (await store.get("u", now=T0)).value == "y"
            finally:
                await store.close()
        run(user())
        assert admin(server, password="s3cr:et", db=5).keys("*") == ["smtpfw:k:{u}"]


def test_select_of_a_database_that_does_not_exist_fails(server, run):
    async def go():
        client = RespClient(port=server.port, db=99999)
        with pytest.raises(ConnectionError, match="DB index is out of range"):
            await client.call("PING")
        await client.close()
    run(go())


# ---- errors -------------------------------------------------------------------------------


def test_error_replies_are_errors_and_the_connection_goes_on(server, run):
    async def go():
        client = RespClient(port=server.port)
        store = open_store(server.url)
        try:
            with pytest.raises(ReplyError, match="unknown command"):
                await client.call("NOSUCHCOMMAND", "x")
            with pytest.raises(ReplyError, match="wrong number of arguments"):
                await client.call("GET")
            await client.call("SET", "str", "x")
            with pytest.raises(ReplyError, match="WRONGTYPE"):
                await client.call("HGET", "str", "f")
            # errors in the middle of a pipeline stay with their callers
            replies = await asyncio.gather(client.call("ECHO", "a"), client.call("GET"), client.call("ECHO", "b"),
                                           return_exceptions=True)
            assert replies[0] == "a" and isinstance(replies[1], ReplyError) and replies[2] == "b"
            assert client.connections == 1
            # through the store: a key of the wrong type makes the script fail: unavailable, with the reason
            admin(server).set("smtpfw:r:{ip:1}", "not a hash")
            r = await store.hit("ip:1", [Bucket(5, 60)], now=T0)
            assert not r.available and r.allowed and "ReplyError" in r.reason and "WRONGTYPE" in r.reason
            assert (await store.hit("ip:2", [Bucket(5, 60)], now=T0)).available
        finally:
            await client.close()
            await store.close()
    run(go())


def test_a_server_that_does_not_speak_resp2(run):
    """Garbage from the server: the callers get ProtocolError (a
    ConnectionError), the connection is dropped, the next call connects again."""
    async def go():
        connections = []

        async def fake(reader, writer):
            connections.append(writer)
            await reader.read(100)
            writer.write(b"+OK\r\n" if len(connections) > 1 else b"%3\r\nwhat\r\n")
            await writer.drain()
            await reader.read()                             # until the client closes
            writer.close()
        srv = await asyncio.start_server(fake, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        client = RespClient(port=port)
        try:
            with pytest.raises(ProtocolError, match="unknown reply type"):
                await client.call("PING")
            assert await client.call("PING") == "OK"
            assert client.connections == 2
        finally:
            await client.close()
            srv.close()
            await srv.wait_closed()
    run(go())


# ---- the event loop, closing ----------------------------------------------------------------


def test_a_store_used_from_a_new_event_loop_connects_again(server, run):
    store = open_store(server.url)

    async def go(n):
        assert (await store.incr("n", 1, 60, now=T0)).value == n
    run(go(1))
    run(go(2))                          # asyncio.run's loop is gone: a new connection on the new one
    assert backend_of(store).client.connections == 2
    run(store.close())


def test_close_fails_the_waiting_callers_and_a_later_call_connects_again(server, run):
    async def go():
        client = RespClient(port=server.port)
        assert await client.call("PING") == "PONG"
        waiting = asyncio.ensure_future(client.call("BLPOP", "nothing", 5))
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(ConnectionError):
            await waiting
        await client.close()                                    # twice: nothing
        assert await client.call("CLIENT", "SETNAME", "closing") == "OK"
        names = [c["name"] for c in admin(server).client_list()]
        await client.close()
        assert client.connections == 2
        store = open_store(server.url)
        await store.close()                                     # never connected
        return names
    assert "closing" in run(go())
    assert "closing" not in [c["name"] for c in admin(server).client_list()]   # closed on the server too


def test_not_on_a_connection_inherited_across_fork(server):
    """A worker forked after the store connected makes its own connection
    (a new event loop in the child)."""
    store = open_store(server.url)
    asyncio.run(store.set("k", "parent", 60, now=T0))
    pid = os.fork()
    if pid == 0:                                               # pragma: no cover - the child
        code = 1
        try:
            async def child():
                r = await store.get("k", now=T0)
                return r.value == "parent" and backend_of(store).client.connections == 2
            code = 0 if asyncio.run(child()) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    asyncio.run(store.close())
