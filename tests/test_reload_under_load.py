"""Rules under change (issue 9).

100 reloads (two valid rulesets A and B alternating, and every sixth a
broken one of six kinds) while client threads run complete sessions
non-stop.  Each ruleset names itself in its refusals (``ruleset A``, with
``option reply_rule_id = yes`` the rule id too), so every session can tell
which ruleset served each of its steps.  Checked:

* no session failed or was cut; every message accepted is in the Maildir;
* each session saw exactly one ruleset, even sessions that spanned reloads
  (a session keeps the ruleset it started with), and that ruleset was the
  current one when it connected;
* a broken ruleset is refused by reload (diagnostics returned) and the
  running one stays: sessions that start after it see the previous one.

Plus the automatic reload (server.reload_on_change): a rules file caught
half-written is never loaded, even though a cut-off rules file usually
compiles (and without its final reject-all rule relays for everyone).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path


import smtpfw.server
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.policy import Policy
from smtpfw.session import SessionState
from smtpfw.verdict import Stage
from tests.smtp_client import RawClient
from tests.support.server import REPO, maildir_messages, running_server

SEED = int(os.environ.get("SMTPFW_SEED", "20240909"))
COMMON = 'on helo:\n    [helo-gate] reject 550 5.7.1 "bad helo" if helo = "bad.example"\n'


def valid(name: str) -> str:
    return f"""# ruleset {name}
option reply_rule_id = yes
include "common.rules"
list probes = file "probes-{name}.list"

on mail:
    [{name}-mail] reject 550 5.7.1 "ruleset {name}" if sender in probes
on rcpt:
    [{name}-rcpt] reject 550 5.7.1 "ruleset {name}" if rcpt = "probe@localhost"
    [{name}-local] accept if rcpt.domain in localnames
    [{name}-relay] reject 554 5.7.1 "ruleset {name}: relaying denied"
on data:
    [{name}-data] reject 550 5.7.1 "ruleset {name}" if header.subject = "probe"
"""


BROKEN = {
    "syntax": 'on rcpt:\n    reject 550 5.7.1 "x" if\n',
    "unknown field": 'on rcpt:\n    reject if rcpt.domian = "x"\n',
    "missing include": 'include "missing.rules"\non rcpt:\n    reject\n',
    "missing list": 'list x = file "nope.list"\non rcpt:\n    reject if rcpt in x\n',
    "bad plugin": 'plugin p = "no.such.module:Plugin"\non data:\n    run p\n',
    "code mismatch": 'on rcpt:\n    reject 451 "x"\n',
}


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def version_named(reply: str) -> str:
    assert reply.startswith("550 5.7.1 ruleset "), reply
    return reply.split("ruleset ")[1][0]


class SessionRecord:
    def __init__(self):
        self.t_connect = self.t_greeted = self.t_end = 0.0
        self.versions: list[str] = []
        self.error = ""


def one_session(address, sid: int, rng: random.Random) -> SessionRecord:
    rec = SessionRecord()
    rec.t_connect = time.monotonic()
    try:
        with RawClient(address, timeout=10) as c:
            assert c.reply().startswith("220")
            rec.t_greeted = time.monotonic()
            assert c.cmd("EHLO client.test").startswith("250")
            rec.versions.append(version_named(c.cmd("MAIL FROM:<probe@client.test>")))
            assert c.cmd("MAIL FROM:<real@client.test>").startswith("250")
            rec.versions.append(version_named(c.cmd("RCPT TO:<probe@localhost>")))
            time.sleep(rng.uniform(0, 0.03))           # let reloads land mid-session
            assert c.cmd("RCPT TO:<u@localhost>").startswith("250")
            assert c.cmd("DATA").startswith("354")
            c.send(f"Subject: real {sid}\r\n\r\nbody\r\n.\r\n".encode())
            assert c.reply().startswith("250 2.0.0")
            time.sleep(rng.uniform(0, 0.03))
            assert c.cmd("MAIL FROM:<real@client.test>").startswith("250")
            assert c.cmd("RCPT TO:<u@localhost>").startswith("250")
            assert c.cmd("DATA").startswith("354")
            c.send(b"Subject: probe\r\n\r\nbody\r\n.\r\n")
            rec.versions.append(version_named(c.reply()))
            assert c.cmd("QUIT").startswith("221")
    except (AssertionError, OSError, ConnectionError) as err:
        rec.error = repr(err)
    rec.t_end = time.monotonic()
    return rec


def test_100_reloads_under_load(tmp_path):
    site = tmp_path / "site.rules"
    (tmp_path / "common.rules").write_text(COMMON)
    for name in "AB":
        (tmp_path / f"probes-{name}.list").write_text("probe@client.test\n")
    write_atomically(site, valid("A"))
    # timeline: (t_start, t_end, name current after this reload)
    timeline: list[tuple[float, float, str]] = [(0.0, 0.0, "A")]
    with running_server(site) as srv:
        stop = threading.Event()
        sessions: list[SessionRecord] = []
        lock = threading.Lock()

        def client(wid: int) -> None:
            rng = random.Random(f"{SEED}:reload:{wid}")
            sid = wid * 100_000
            while not stop.is_set():
                sid += 1
                rec = one_session(srv.address, sid, rng)
                rec.sid = sid
                with lock:
                    sessions.append(rec)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        rng = random.Random(f"{SEED}:reloads")
        current, broken_kinds, refused = "A", list(BROKEN), 0
        for i in range(1, 101):
            if i % 6 == 0:
                kind = broken_kinds[(i // 6) % len(broken_kinds)]
                write_atomically(site, BROKEN[kind])
                t0 = time.monotonic()
                diags = srv.reload()
                t1 = time.monotonic()
                assert diags, f"broken ruleset ({kind}) was accepted"
                refused += 1
            else:
                current = "B" if current == "A" else "A"
                write_atomically(site, valid(current))
                t0 = time.monotonic()
                diags = srv.reload()
                t1 = time.monotonic()
                assert diags is None, diags
            timeline.append((t0, t1, current))
            time.sleep(rng.uniform(0.005, 0.03))
        time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(30)
        assert srv.server.reloads == 100 - refused
        delivered = maildir_messages(srv.server.config.maildir)

    def possible(t_from: float, t_to: float) -> set[str]:
        """Rulesets that may have been current at some instant of [t_from, t_to]."""
        names = set()
        for i, (start, end, name) in enumerate(timeline):
            nxt = timeline[i + 1] if i + 1 < len(timeline) else None
            current_from, current_to = start, (nxt[1] if nxt else float("inf"))
            if current_from <= t_to and current_to >= t_from:
                names.add(name)
        return names

    failed = [s for s in sessions if s.error]
    assert not failed, f"{len(failed)} sessions failed, e.g. {failed[0].error}"
    spanning = 0
    for s in sessions:
        assert len(set(s.versions)) == 1, f"session {s.sid} saw rulesets {s.versions}"
        allowed = possible(s.t_connect, s.t_greeted)
        assert s.versions[0] in allowed, (s.sid, s.versions, allowed)
        if any(s.t_greeted < t0 < s.t_end for t0, _t1, _n in timeline[1:]):
            spanning += 1
    subjects = [m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in delivered]
    assert sorted(subjects) == sorted(f"real {s.sid}".encode() for s in sessions)
    print(f"\n{len(sessions)} sessions, {spanning} spanning a reload, 100 reloads ({refused} refused)")
    assert len(sessions) >= 40 and spanning >= 10


# ---- the automatic reload: never a half-written file ---------------------

INTERVAL = 1234.5          # a sleep of this length is the watcher's, driven by the test


class ManualClock:
    """Stands in for ``asyncio`` inside smtpfw.server: the watcher's
    sleep(INTERVAL) returns only when the test ticks."""

    def __init__(self, loop):
        self.loop = loop
        self.parked = 0
        self.ticks: asyncio.Queue | None = None

    def __getattr__(self, name):
        return getattr(asyncio, name)

    async def sleep(self, seconds, *args):
        if seconds != INTERVAL:
            return await asyncio.sleep(seconds, *args)
        if self.ticks is None:
            self.ticks = asyncio.Queue()
        self.parked += 1
        await self.ticks.get()

    def tick(self) -> None:
        """Let the watcher run one poll; return when it is asleep again."""
        parked = self.parked
        self.loop.call_soon_threadsafe(self.ticks.put_nowait, None)
        deadline = time.monotonic() + 5
        while self.parked == parked:
            assert time.monotonic() < deadline, "watcher did not come back"
            time.sleep(0.002)


def test_watcher_never_loads_a_half_written_rules_file(tmp_path, monkeypatch):
    """Regression: reload_on_change reloaded as soon as a rules file changed.
    An editor saving in place (truncate, then write) can be caught in
    between, and a cut-off rules file usually compiles: default.rules cut
    before its last rule accepts every recipient.  Now a change is loaded
    only once the file has stopped changing for a whole interval."""
    full = (REPO / "rules" / "default.rules").read_text()
    cut = full[:full.index("    [no-relay]")]
    # the danger is real: the cut-off ruleset compiles and relays
    (tmp_path / "cut.rules").write_text(cut)
    cut_rs, diags = compile_ruleset(tmp_path / "cut.rules")
    assert cut_rs is not None, diags

    async def rcpt_outcome(rs):
        st = SessionState(client_ip="192.0.2.1")
        policy = Policy(rs, st, None)
        st.set_rcpt("victim@relay.example")
        return await policy.run(Stage.RCPT)
    assert not asyncio.run(rcpt_outcome(cut_rs)).outcome.refuses

    site = tmp_path / "site.rules"
    site.write_text(full)
    with running_server(site) as srv:
        clock = ManualClock(srv.loop)
        monkeypatch.setattr(smtpfw.server, "asyncio", clock)
        loaded: list[str] = []
        reload = srv.server.reload

        def recording_reload():
            result = reload()
            loaded.append(srv.server.ruleset.version)
            return result
        srv.server.reload = recording_reload
        watcher = asyncio.run_coroutine_threadsafe(srv.server.watch(INTERVAL), srv.loop)
        try:
            deadline = time.monotonic() + 5
            while clock.parked == 0:
                assert time.monotonic() < deadline
                time.sleep(0.002)
            site.write_text(cut)                      # the save has truncated and written half
            clock.tick()                              # a poll lands right now
            assert srv.server.ruleset.version != cut_rs.version, "half-written rules went live"
            site.write_text(full + "# saved\n")       # the save completes
            clock.tick()
            clock.tick()
            assert cut_rs.version not in loaded
            assert loaded and srv.server.ruleset.version == loaded[-1]
            assert srv.server.ruleset.sources[str(site)].endswith("# saved\n")
            with RawClient(srv.address) as c:
                c.reply()
                c.cmd("EHLO client.test")
                c.cmd("MAIL FROM:<a@client.test>")
                assert c.cmd("RCPT TO:<victim@relay.example>").startswith("554 5.7.1")
        finally:
            watcher.cancel()
