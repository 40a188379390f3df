"""`smtpfw import postfix`: Postfix mail log -> session records (format v1).

One record per smtpd connection (grouped by smtpd process id between
"connect from" and "disconnect from" / "lost connection"), built from:

    smtpd   connect from NAME[IP]            client IP (and port), rDNS name
            warning: hostname X does not resolve to address IP
            ... TLS connection established from ...
            NOQUEUE: reject: STAGE from ...: CODE X.Y.Z text; from=<> to=<> proto= helo=<>
            QUEUEID: client=NAME[IP], sasl_username=...
            QUEUEID: reject: RCPT|END-OF-MESSAGE from ...
            lost connection / timeout / too many errors after CMD from ...
            disconnect from NAME[IP] ehlo=1 starttls=1 mail=1 rcpt=1 data=1 quit=1
    cleanup QUEUEID: message-id=<...>
            QUEUEID: reject: header|body ... from ...; from=<> to=<> ...: 5.7.1 text
    qmgr    QUEUEID: from=<...>, size=N, nrcpt=M (queue active)
    smtp/local/lmtp/virtual/pipe/error/discard
            QUEUEID: to=<...>, orig_to=<...>, relay=..., status=...

A log does not hold everything a recording does: see docs/dry-run.md
("What a Postfix log cannot tell").  Lines that cannot be read are counted
and reported with their line numbers; they never stop the import.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from dataclasses import dataclass, field

from smtpfw.recording import FORMAT_VERSION

_SYSLOG = re.compile(
    r"^(?P<ts>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?"
    r"(?:Z|[+-]\d\d:?\d\d)?) (?P<host>\S+) (?P<prog>[\w./-]+)\[(?P<pid>\d+)\]: (?P<msg>.*)$")
_CLIENT = r"(?P<name>[^\s\[\]]+)\[(?P<ip>[^\]]*)\](?::(?P<port>\d+))?"
_CONNECT = re.compile(rf"^connect from {_CLIENT}$")
_DISCONNECT = re.compile(rf"^disconnect from {_CLIENT}(?P<stats>.*)$")
_LOST = re.compile(rf"^(?P<what>lost connection|timeout|too many errors) after (?P<cmd>[\w-]+)"
                   rf"(?: \(\d+ bytes\))? from {_CLIENT}$")
_TLS = re.compile(rf"^(?:Anonymous|Trusted|Verified|Untrusted) TLS connection established from {_CLIENT}")
_UNVERIFIED = re.compile(r"^warning: hostname (?P<host>\S+) does not resolve to address (?P<ip>[^\s:]+)")
_QID = r"(?P<qid>[0-9A-Za-z]{5,})"
_CLIENT_LINE = re.compile(rf"^{_QID}: client={_CLIENT}(?P<rest>.*)$")
_REJECT = re.compile(rf"^(?:NOQUEUE|{_QID}): (?P<action>reject|defer): (?P<stage>[A-Z-]+) from {_CLIENT}: "
                     r"(?P<reply>.*)$")
_CONTENT_REJECT = re.compile(rf"^{_QID}: (?P<action>reject|discard): (?P<what>header|body|END-OF-MESSAGE) "
                             r"(?P<rest>.*)$")
_REPLY = re.compile(r"^(?P<code>[245]\d\d)(?: (?P<enh>[245]\.\d{1,3}\.\d{1,3}))? ?(?P<text>.*)$")
_FIELD = re.compile(r"\b(from|to|helo|orig_to)=<([^>]*)>")
_PROTO = re.compile(r"\bproto=(\w+)")
_QMGR_FROM = re.compile(rf"^{_QID}: from=<(?P<from>[^>]*)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+)")
_DELIVERY = re.compile(rf"^{_QID}: to=<(?P<to>[^>]*)>(?:, orig_to=<(?P<orig>[^>]*)>)?, .*\bstatus=(?P<status>\w+)")
_MESSAGE_ID = re.compile(rf"^{_QID}: message-id=(?P<mid>.*)$")
_SASL = re.compile(r"sasl_username=(?P<user>[^,\s]+)")
_BLOCKED = re.compile(r"(?P<what>Client host|Sender address|Helo command|Recipient address|Reverse client host)"
                      r" \[(?P<name>[^\]]*)\] blocked using (?P<zone>[^\s;,]+)(?:[;,] (?P<txt>.*))?")

_DELIVERY_AGENTS = {"smtp", "lmtp", "local", "virtual", "pipe", "error", "discard", "relay", "retry"}
_STAGE_EVENTS = {"CONNECT": "connect", "HELO": "helo", "EHLO": "helo", "MAIL": "mail", "RCPT": "rcpt",
                 "DATA": "data", "END-OF-MESSAGE": "data", "BDAT": "data"}
# What a Postfix reject text says about the restriction that made it.
_RESTRICTIONS = [
    (re.compile(r"Client host \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rbl_client {0}"),
    (re.compile(r"Reverse client host \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rhsbl_reverse_client {0}"),
    (re.compile(r"Sender address \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rhsbl_sender {0}"),
    (re.compile(r"Helo command \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rhsbl_helo {0}"),
    (re.compile(r"Recipient address \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rhsbl_recipient {0}"),
    (re.compile(r"Relay access denied"), "reject_unauth_destination"),
    (re.compile(r"Sender address rejected: Domain not found"), "reject_unknown_sender_domain"),
    (re.compile(r"Recipient address rejected: Domain not found"), "reject_unknown_recipient_domain"),
    (re.compile(r"Recipient address rejected: User unknown"), "reject_unlisted_recipient"),
    (re.compile(r"Client host rejected: cannot find your (reverse )?hostname"), "reject_unknown_client_hostname"),
    (re.compile(r"Helo command rejected: Host not found"), "reject_unknown_helo_hostname"),
    (re.compile(r"Helo command rejected: need fully-qualified hostname"), "reject_non_fqdn_helo_hostname"),
    (re.compile(r"Helo command rejected: Invalid name"), "reject_invalid_helo_hostname"),
    (re.compile(r"Sender address rejected: need fully-qualified address"), "reject_non_fqdn_sender"),
    (re.compile(r"Recipient address rejected: need fully-qualified address"), "reject_non_fqdn_recipient"),
    (re.compile(r"Helo command rejected"), "check_helo_access"),
    (re.compile(r"Sender address rejected"), "check_sender_access"),
    (re.compile(r"Recipient address rejected"), "check_recipient_access"),
    (re.compile(r"Client host rejected"), "check_client_access"),
    (re.compile(r"no valid recipients|need RCPT|need MAIL|Improper use of SMTP command pipelining"), "protocol"),
]


def restriction(text: str, content: str | None = None) -> str:
    """A rule id naming the Postfix restriction a reject text comes from."""
    if content:
        return f"postfix:{content}_checks"
    for rx, name in _RESTRICTIONS:
        m = rx.search(text)
        if m:
            return "postfix:" + name.format(*m.groups())
    return "postfix:reject"


# ---- the model -------------------------------------------------------------------

@dataclass
class Txn:
    qid: str | None = None
    sender: str | None = None
    mail_reject: dict | None = None       # decision
    rcpts: list = field(default_factory=list)      # (addr, decision or None = accepted)
    delivered: list = field(default_factory=list)  # recipients from delivery lines
    data_reject: dict | None = None
    queued: bool = False                  # qmgr saw it: the message was accepted
    size: int | None = None
    nrcpt: int | None = None
    headers: dict = field(default_factory=dict)


@dataclass
class Session:
    pid: str
    host: str
    service: str
    first_line: int
    started: float
    ip: str = ""
    port: int = 0
    name: str = "unknown"
    unverified: str | None = None         # PTR name that did not resolve back
    tls: bool = False
    auth_user: str | None = None
    helo: str | None = None
    proto: str | None = None
    connect_reject: dict | None = None
    helo_reject: dict | None = None
    txns: list = field(default_factory=list)
    listings: dict = field(default_factory=dict)   # (kind, name, zone) -> answer json
    ended: float | None = None
    end: str = ""
    last_line: int = 0
    stats: dict = field(default_factory=dict)

    def current(self) -> Txn | None:
        return self.txns[-1] if self.txns else None


@dataclass
class ImportReport:
    lines: int = 0
    used: int = 0
    ignored: int = 0
    unparseable: int = 0
    examples: list = field(default_factory=list)     # (line number, text)
    sessions: int = 0
    messages: int = 0
    rejections: int = 0
    without_recipients: int = 0

    def bad(self, number: int, line: str) -> None:
        self.unparseable += 1
        if len(self.examples) < 5:
            self.examples.append((number, line.rstrip("\n")[:160]))


class PostfixImporter:
    def __init__(self, year: int | None = None, source: str = ""):
        self.year = year or _dt.date.today().year
        self.source = source
        self.open: dict[str, Session] = {}          # smtpd pid -> session
        self.done: list[Session] = []
        self.by_qid: dict[str, tuple[Session, Txn]] = {}
        self.pending_warnings: dict[str, tuple[str, str]] = {}   # pid -> (ip, name)
        self.report = ImportReport()

    # -- reading -------------------------------------------------------------------

    def feed(self, number: int, line: str) -> None:
        rep = self.report
        rep.lines += 1
        text = line.rstrip("\r\n")
        if not text.strip():
            rep.lines -= 1
            return
        m = _SYSLOG.match(text)
        if m is None:
            rep.bad(number, text)
            return
        prog = m.group("prog")
        parts = prog.split("/")
        if not parts[0].startswith("postfix") or len(parts) < 2:
            rep.ignored += 1
            return
        daemon = parts[-1]
        service = parts[1] if len(parts) > 2 else "smtpd"
        ts = self._time(m.group("ts"))
        if ts is None:
            rep.bad(number, text)
            return
        msg, pid = m.group("msg"), m.group("pid")
        try:
            if daemon == "smtpd":
                ok = self._smtpd(number, ts, m.group("host"), service, pid, msg)
            elif daemon == "cleanup":
                ok = self._cleanup(msg)
            elif daemon == "qmgr":
                ok = self._qmgr(msg)
            elif daemon in _DELIVERY_AGENTS:
                ok = self._delivery(msg)
            else:
                ok = None
        except (ValueError, IndexError):
            ok = False
        if ok is None:
            rep.ignored += 1
        elif ok:
            rep.used += 1
        else:
            rep.bad(number, text)

    def _time(self, text: str) -> float | None:
        try:
            if text[0].isdigit():
                return _dt.datetime.fromisoformat(text.replace(" ", "T", 1)).timestamp()
            t = time.strptime(f"{self.year} {' '.join(text.split())}", "%Y %b %d %H:%M:%S")
            return time.mktime(t)
        except (ValueError, OverflowError):
            return None

    # -- smtpd -----------------------------------------------------------------------

    def _smtpd(self, number: int, ts: float, host: str, service: str, pid: str, msg: str) -> bool | None:
        m = _CONNECT.match(msg)
        if m:
            old = self.open.pop(pid, None)
            if old is not None:
                old.end = old.end or "no disconnect line"
                self._close(old)
            new = Session(pid, host, service, number, ts, m.group("ip"), int(m.group("port") or 0),
                          m.group("name"), last_line=number)
            warn = self.pending_warnings.pop(pid, None)
            if warn and warn[0] == new.ip:
                new.unverified = warn[1]
            self.open[pid] = new
            return True
        m = _UNVERIFIED.match(msg)
        if m:
            self.pending_warnings[pid] = (m.group("ip"), m.group("host").lower().rstrip("."))
            return True
        s = self.open.get(pid)
        m = _REJECT.match(msg)
        if m:
            return self._reject(s, number, m)
        m = _CLIENT_LINE.match(msg)
        if m:
            if s is None or m.group("ip") != s.ip:
                return False
            s.last_line = number
            qid = m.group("qid")
            txn = s.current()
            if txn is None or txn.qid is not None or txn.mail_reject is not None or txn.queued:
                txn = Txn()
                s.txns.append(txn)
            txn.qid = qid
            self.by_qid[qid] = (s, txn)
            sasl = _SASL.search(m.group("rest"))
            if sasl:
                s.auth_user = sasl.group("user")
            return True
        m = _TLS.match(msg)
        if m:
            if s is None:
                return None
            s.tls = True
            s.last_line = number
            return True
        m = _LOST.match(msg)
        if m:
            if s is None:
                return None
            s.end = f"{m.group('what')} after {m.group('cmd')}"
            s.last_line = number
            return True
        m = _DISCONNECT.match(msg)
        if m:
            if s is None:
                return None
            s.stats = dict(kv.split("=", 1) for kv in m.group("stats").split() if "=" in kv)
            if "starttls" in s.stats and not s.stats["starttls"].startswith("0"):
                s.tls = True
            s.end = s.end or "disconnect"
            s.ended = ts
            s.last_line = number
            del self.open[pid]
            self._close(s)
            return True
        if msg.startswith("NOQUEUE:") or re.match(rf"^{_QID}: (reject|defer):", msg):
            return False          # a reject we could not read
        return None               # warnings, statistics, TLS setup, ...

    def _reject(self, s: Session | None, number: int, m) -> bool:
        if s is None or m.group("ip") != s.ip:
            return False
        s.last_line = number
        reply = m.group("reply")
        head, sep, tail = reply.rpartition("; from=<")
        if sep:
            text, fields = head, "from=<" + tail
        else:
            head, sep, tail = reply.rpartition("; proto=")
            text, fields = (head, "proto=" + tail) if sep else (reply, "")
        r = _REPLY.match(text)
        if r is None:
            return False
        values = dict(_FIELD.findall(fields))
        proto = _PROTO.search(fields)
        if proto:
            s.proto = proto.group(1)
        if values.get("helo"):
            s.helo = s.helo or values["helo"]
        code = int(r.group("code"))
        decision = _decision(code, r.group("enh"), r.group("text"), restriction(r.group("text")))
        self.report.rejections += 1
        self._note_listing(s, r.group("text"), values)
        stage = _STAGE_EVENTS.get(m.group("stage"))
        if stage == "connect":
            s.connect_reject = decision
            return True
        if stage == "helo":
            s.helo_reject = decision
            return True
        if stage is None:
            return True                      # VRFY, ETRN: not part of a message
        qid = m.group("qid")
        sender = values.get("from")
        txn = self.by_qid[qid][1] if qid and qid in self.by_qid else None
        if txn is None:
            txn = s.current()
            if (txn is None or txn.qid is not None or txn.queued or txn.mail_reject is not None
                    or txn.data_reject is not None or (sender is not None and txn.sender is not None
                                                       and txn.sender != sender)):
                txn = Txn()
                s.txns.append(txn)
        if sender is not None and txn.sender is None:
            txn.sender = sender
        if stage == "mail":
            txn.mail_reject = decision
        elif stage == "rcpt":
            txn.rcpts.append((values.get("to", ""), decision))
        elif stage == "data":
            if decision["rule"] == "postfix:protocol":
                return True                  # DATA with no valid recipients: no policy decision
            txn.data_reject = decision
        return True

    def _note_listing(self, s: Session, text: str, values: dict) -> None:
        m = _BLOCKED.search(text)
        if not m:
            if "Sender address rejected: Domain not found" in text and values.get("from"):
                domain = values["from"].rpartition("@")[2].lower()
                if domain:
                    s.listings[("resolvable", domain, "")] = {"status": "no"}
            return
        what, name, zone = m.group("what"), m.group("name"), m.group("zone").rstrip(";,.")
        answer = {"status": "listed"}
        if m.group("txt"):
            answer["txt"] = m.group("txt").strip()
        if what == "Client host":
            s.listings[("dnsbl", name, zone)] = answer
        else:
            domain = name.rpartition("@")[2].lower().rstrip(".")
            s.listings[("rhsbl", domain, zone)] = answer

    def _close(self, s: Session) -> None:
        self.done.append(s)

    # -- cleanup, qmgr, delivery ------------------------------------------------------

    def _cleanup(self, msg: str) -> bool | None:
        m = _MESSAGE_ID.match(msg)
        if m:
            hit = self.by_qid.get(m.group("qid"))
            if hit is None:
                return None
            hit[1].headers["message-id"] = m.group("mid").strip()
            return True
        m = _CONTENT_REJECT.match(msg)
        if m:
            hit = self.by_qid.get(m.group("qid"))
            if hit is None:
                return None
            s, txn = hit
            rest = m.group("rest")
            left, sep, right = rest.partition("; from=<")
            if not sep:
                return False
            shown, _, _client = left.rpartition(" from ")
            fields, _, reply = ("from=<" + right).partition(": ")
            values = dict(_FIELD.findall(fields))
            if values.get("helo"):
                s.helo = s.helo or values["helo"]
            if txn.sender is None and "from" in values:
                txn.sender = values["from"]
            if values.get("to") and values["to"] not in txn.delivered:
                txn.delivered.append(values["to"])     # cleanup names the (first) recipient
            what = m.group("what")
            if what == "header":
                name, colon, value = shown.partition(":")
                if colon:
                    txn.headers.setdefault(name.strip().lower(), value.strip())
            if m.group("action") == "discard":
                return True
            enh, _, text = reply.partition(" ")
            if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", enh):
                enh, text = "5.7.1", reply
            code = 550 if enh[0] == "5" else 451
            txn.data_reject = _decision(code, enh, text or "Message content rejected",
                                        restriction(text, what.lower() if what != "END-OF-MESSAGE" else None))
            self.report.rejections += 1
            return True
        return None

    def _qmgr(self, msg: str) -> bool | None:
        m = _QMGR_FROM.match(msg)
        if not m:
            return None
        hit = self.by_qid.get(m.group("qid"))
        if hit is None:
            return None            # pickup, bounces: not from an SMTP session
        txn = hit[1]
        txn.queued = True
        txn.sender = m.group("from") if txn.sender is None else txn.sender
        txn.size = int(m.group("size"))
        txn.nrcpt = int(m.group("nrcpt"))
        return True

    def _delivery(self, msg: str) -> bool | None:
        m = _DELIVERY.match(msg)
        if not m:
            return None
        hit = self.by_qid.get(m.group("qid"))
        if hit is None:
            return None
        txn = hit[1]
        addr = m.group("orig") or m.group("to")
        if addr not in txn.delivered:
            txn.delivered.append(addr)
        return True

    # -- output ----------------------------------------------------------------------

    def finish(self) -> list[dict]:
        for s in list(self.open.values()):
            s.end = s.end or "log ends before disconnect"
            self._close(s)
        self.open.clear()
        records = [self._record(s) for s in sorted(self.done, key=lambda s: (s.started, s.first_line))]
        self.report.sessions = len(records)
        return records

    def _record(self, s: Session) -> dict:
        events: list[dict] = []
        esmtp = s.proto != "SMTP" and not (s.stats.get("helo") and not s.stats.get("ehlo"))
        helo = s.helo
        greeted = bool(s.txns) or s.helo_reject is not None or any(
            k in s.stats and not s.stats[k].startswith("0") for k in ("helo", "ehlo"))
        missing = ["headers (except message-id and rejected header lines)", "dns (except listings named in rejects)"]
        if greeted:
            if helo is None:
                helo = f"[{s.ip}]"
                missing.append("helo name (the log shows it only in reject lines)")
            ev = {"cmd": "ehlo" if esmtp else "helo", "arg": helo,
                  "decision": s.helo_reject or _CONTINUE, "reply": _reply(s.helo_reject) or "250"}
            events.append(ev)
        open_txn = False
        for txn in s.txns:
            if txn.sender is None and not txn.rcpts and not txn.queued and txn.data_reject is None:
                continue             # nothing known about it (e.g. lost during DATA)
            if open_txn:
                events.append({"cmd": "rset", "reply": "250 2.0.0 Ok"})
            accepted = [a for a in txn.delivered if a not in {r for r, _ in txn.rcpts}]
            unknown_rcpts = txn.queued and not accepted and txn.data_reject is None
            if unknown_rcpts:
                self.report.without_recipients += 1
            events.append({"cmd": "mail", "addr": txn.sender or "", "params": {},
                           "decision": txn.mail_reject or _CONTINUE,
                           "reply": _reply(txn.mail_reject) or "250 2.1.0 Ok"})
            if txn.mail_reject is not None:
                open_txn = False
                continue
            for addr, decision in txn.rcpts:
                if decision is None:
                    continue
                events.append({"cmd": "rcpt", "addr": addr, "decision": decision, "reply": _reply(decision)})
            for addr in accepted:
                events.append({"cmd": "rcpt", "addr": addr, "decision": _CONTINUE, "reply": "250 2.1.5 Ok"})
            if txn.data_reject is not None:
                events.append({"cmd": "data", "size": txn.size or 0, "headers": txn.headers,
                               "decision": txn.data_reject, "reply": _reply(txn.data_reject)})
                open_txn = False
            elif txn.queued and not unknown_rcpts:
                self.report.messages += 1
                events.append({"cmd": "data", "size": txn.size or 0, "headers": txn.headers,
                               "decision": _CONTINUE, "queue": _CONTINUE,
                               "reply": f"250 2.0.0 Ok: queued as {txn.qid}"})
                open_txn = False
            elif unknown_rcpts:
                missing.append(f"the recipients of {txn.qid} (no delivery lines in the log)")
                open_txn = True
            else:
                open_txn = True
        dns = [{"lookup": {"kind": k, "name": n, "zone": z}, "answer": a} for (k, n, z), a in s.listings.items()]
        if s.unverified:
            dns.append({"lookup": {"kind": "ptr", "name": s.ip, "zone": ""},
                        "answer": {"status": "found", "names": [s.unverified]}})
        elif s.name != "unknown":
            dns.append({"lookup": {"kind": "ptr", "name": s.ip, "zone": ""},
                        "answer": {"status": "found", "names": [s.name.lower()], "confirmed": True}})
        else:
            dns.append({"lookup": {"kind": "ptr", "name": s.ip, "zone": ""}, "answer": {"status": "none"}})
        final = ""
        if s.connect_reject is not None:
            events = []
        return {
            "v": FORMAT_VERSION,
            "id": f"postfix.{s.host}.{s.pid}.{s.first_line}",
            "time": round(s.started, 3),
            "duration": round(max(0.0, (s.ended or s.started) - s.started), 3),
            "ruleset": "postfix",
            "listener": {"address": "", "port": _PORTS.get(s.service, 25), "name": s.service},
            "client": {"ip": s.ip, "port": s.port},
            "tls": s.tls,
            "auth": s.auth_user is not None,
            "auth_user": s.auth_user or "",
            "connect": {"decision": s.connect_reject or _CONTINUE,
                        "reply": _reply(s.connect_reject) or "220"},
            "events": events,
            "facts": [{"provider": "dns", "key": d["lookup"], "value": d["answer"]} for d in dns],
            "tags": [],
            "monitored": [],
            "final_reply": final,
            "source": {"kind": "postfix", "file": self.source, "lines": [s.first_line, s.last_line],
                       "end": s.end, "rdns": s.name, "missing": missing},
        }


_CONTINUE = {"outcome": "continue", "code": None, "enhanced": None, "text": None, "rule": None}
_PORTS = {"smtpd": 25, "smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}


def _decision(code: int, enhanced: str | None, text: str, rule: str) -> dict:
    return {"outcome": "tempfail" if code < 500 else "reject", "code": code, "enhanced": enhanced,
            "text": text.strip(), "rule": rule}


def _reply(decision: dict | None) -> str:
    if decision is None:
        return ""
    enh = f" {decision['enhanced']}" if decision.get("enhanced") else ""
    return f"{decision['code']}{enh} {decision['text']}"


def import_lines(lines, year: int | None = None, source: str = "") -> tuple[list[dict], ImportReport]:
    imp = PostfixImporter(year, source)
    for number, line in enumerate(lines, start=1):
        imp.feed(number, line)
    records = imp.finish()
    return records, imp.report


def summary(path: str, rep: ImportReport) -> str:
    """What the import found, for stderr."""
    out = [f"{path}: {rep.lines:,} lines: {rep.sessions:,} sessions, {rep.messages:,} messages "
           f"accepted, {rep.rejections:,} rejections; {rep.used:,} lines used, {rep.ignored:,} ignored "
           f"(other programs and messages), {rep.unparseable:,} unparseable"]
    out += [f"  unparseable {path}:{number}: {text}" for number, text in rep.examples]
    if rep.without_recipients:
        out.append(f"  {rep.without_recipients:,} accepted messages have no delivery lines, so their recipients "
                   f"are unknown")
    return "\n".join(out)
