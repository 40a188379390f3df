"""`smtpfw import postfix`: Postfix mail log -> session records (format v2).

One record per SMTP connection: the lines of one smtpd process from
"connect from" to "disconnect from" / "lost connection", with what
postscreen logged about the same connection before it handed it over, or
the postscreen lines alone when postscreen kept the client out.  Built from:

    postscreen CONNECT from [IP]:PORT to [IP]:PORT
            PASS NEW|OLD, ALLOWLISTED, DENYLISTED (and the older WHITE/BLACK forms)
            PREGREET N after S from [IP]:PORT: TEXT
            DNSBL rank N for [IP]:PORT
            COMMAND PIPELINING, NON-SMTP COMMAND, BARE NEWLINE, COMMAND ... LIMIT
            NOQUEUE: reject: RCPT from [IP]:PORT: CODE text; from=<>, to=<>, proto=, helo=<>
            HANGUP after S from [IP]:PORT in TEST;  DISCONNECT [IP]:PORT
    dnsblog addr IP listed by domain ZONE as CODE
    smtpd   connect from NAME[IP]            client IP (and port), rDNS name
            warning: hostname X does not resolve to address IP      (Postfix >= 2.9)
            warning: IP: address not listed for hostname X           (Postfix < 2.9)
            warning: IP: hostname X verification failed: ...         (Postfix < 2.9)
            [Anonymous|Trusted|Untrusted|Verified] TLS connection established from ...
            NOQUEUE: reject: STAGE from ...: CODE X.Y.Z text; from=<> to=<> proto= helo=<>
            QUEUEID: client=NAME[IP], sasl_username=...
            QUEUEID: reject: RCPT|DATA|BDAT|END-OF-MESSAGE from ...
            QUEUEID: milter-reject: STAGE from ...
            [NOQUEUE: |QUEUEID: ]lost connection / timeout / too many errors after CMD
                [(N bytes) | (approximately N bytes)] from ...
            improper command pipelining after CMD from ...;  warning: non-SMTP command from ...
            disconnect from NAME[IP] ehlo=1 starttls=1 mail=1 rcpt=1 data=1 quit=1
    cleanup QUEUEID: message-id=<...>
            QUEUEID: reject: header|body ... from ...; from=<> to=<> ...: 5.7.1 text
            QUEUEID: milter-reject: END-OF-MESSAGE from ...: 5.7.1 text; from=<> to=<> ...
    qmgr    QUEUEID: from=<...>, size=N, nrcpt=M (queue active)
    smtp/local/lmtp/virtual/pipe/error/discard
            QUEUEID: to=<...>, orig_to=<...>, relay=..., status=...

A log does not hold everything a recording does: see docs/dry-run.md
("What a Postfix log cannot tell").  A log that starts in the middle of a
session, or was filtered with grep, still gives a session for each refusal
in it: a reject or client= line with no session open begins one.  Every line
is counted as used, ignored or not understood, each with its reason
(``ImportReport``); lines that cannot be read never stop the import.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from smtpfw.recording import FORMAT_VERSION

_SYSLOG = re.compile(
    r"^(?P<ts>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?"
    r"(?:Z|[+-]\d\d:?\d\d)?) (?P<host>\S+) (?P<prog>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)$")
_CLIENT = r"(?P<name>[^\s\[\]]+)\[(?P<ip>[^\]]*)\](?::(?P<port>\d+))?"
_QID = r"(?P<qid>[0-9A-Za-z]{5,})"
_CONNECT = re.compile(rf"^connect from {_CLIENT}$")
_DISCONNECT = re.compile(rf"^disconnect from {_CLIENT}(?P<stats>.*)$")
# Postfix 3.10 puts NOQUEUE or the queue id first; 2.5 and older said "(approximately N bytes)".
_LOST = re.compile(rf"^(?:(?:NOQUEUE|{_QID}): )?(?P<what>lost connection|timeout|too many errors) "
                   rf"after (?P<cmd>[\w-]+)(?: \((?:approximately )?\d+ bytes\))? from {_CLIENT}$")
# Postfix 2.2 to 2.4 logged no Anonymous/Trusted/Untrusted before it.
_TLS = re.compile(rf"^(?:(?:Anonymous|Trusted|Verified|Untrusted) )?TLS connection established from {_CLIENT}")
_UNVERIFIED = [
    re.compile(r"^warning: hostname (?P<host>\S+) does not resolve to address (?P<ip>\S+?)(?:: |$)"),
    re.compile(r"^warning: (?:smtpd_peer_init: )?(?P<ip>\S+): address not listed for hostname (?P<host>\S+)$"),
    re.compile(r"^warning: (?:smtpd_peer_init: )?(?P<ip>\S+): hostname (?P<host>\S+) verification failed:"),
]
_PIPELINING = re.compile(rf"^improper command pipelining after \S+ from {_CLIENT}")
_NON_SMTP = re.compile(rf"^warning: non-SMTP command from {_CLIENT}: ")
_CLIENT_LINE = re.compile(rf"^{_QID}: client={_CLIENT}(?P<rest>.*)$")
_REJECT = re.compile(rf"^(?:NOQUEUE|{_QID}): (?P<action>reject|defer|milter-reject): (?P<stage>[A-Z-]+) "
                     rf"from {_CLIENT}: (?P<reply>.*)$")
_REFUSAL_LIKE = re.compile(rf"^(?:NOQUEUE|{_QID}): (?:reject|defer|milter-reject):")
# Actions that log a line but refuse nothing: the client got what it would have got without them.
_INFO_ACTION = re.compile(rf"^(?:NOQUEUE|{_QID}): (?:filter|hold|discard|redirect|warn|prepend|replace|"
                          r"reject_warning|milter-hold|milter-discard|info|proxy-accept): ")
_INFO_RCPT = re.compile(rf"^(?:NOQUEUE|{_QID}): (?:filter|hold|discard|redirect|warn|prepend|reject_warning|info): "
                        rf"RCPT from {_CLIENT}: (?P<reply>.*)$")
_CONTENT_REJECT = re.compile(rf"^{_QID}: (?P<action>reject|discard): (?P<what>header|body|END-OF-MESSAGE) "
                             r"(?P<rest>.*)$")
_MILTER_REJECT = re.compile(rf"^{_QID}: milter-reject: (?P<stage>[A-Z-]+) from {_CLIENT}: (?P<reply>.*)$")
_REPLY = re.compile(r"^(?:(?P<code>[245]\d\d)(?: (?P<enh>[245]\.\d{1,3}\.\d{1,3}))?|"
                    r"(?P<bare>[245]\.\d{1,3}\.\d{1,3}))(?: (?P<text>.*)|$)")
_FIELD = re.compile(r"\b(from|to|helo|orig_to|sasl_username)=<([^>]*)>")
_PROTO = re.compile(r"\bproto=(\w+)")
_QMGR_FROM = re.compile(rf"^{_QID}: from=<(?P<from>[^>]*)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+)")
_DELIVERY = re.compile(rf"^{_QID}: to=<(?P<to>[^>]*)>(?:, orig_to=<(?P<orig>[^>]*)>)?, .*\bstatus=(?P<status>\w+)")
_MESSAGE_ID = re.compile(rf"^{_QID}: message-id=(?P<mid>.*)$")
_SASL = re.compile(r"sasl_username=(?P<user>[^,\s]+)")
_BLOCKED = re.compile(r"(?P<what>Client host|client|Sender address|Helo command|Recipient address|"
                      r"Reverse client host) \[(?P<name>[^\]]*)\] blocked using (?P<zone>[^\s;,]+)(?:[;,] (?P<txt>.*))?")

# postscreen (postscreen.c, postscreen_early.c, postscreen_misc.c, postscreen_smtpd.c).
_PEER = r"\[(?P<ip>[^\]]+)\]:(?P<port>\d+)"
_PS_CONNECT = re.compile(rf"^CONNECT from {_PEER} to \[(?P<laddr>[^\]]+)\]:(?P<lport>\d+)$")
_PS_PASS = re.compile(rf"^(?P<verdict>PASS NEW|PASS OLD|(?:WHITE|ALLOW|BLACK|DENY)LISTED) {_PEER}$")
_PS_VETO = re.compile(rf"^(?:WHITE|ALLOW)LIST VETO {_PEER}$")
_PS_PREGREET = re.compile(rf"^PREGREET (?P<count>\d+) after (?P<after>[\d.]+) from {_PEER}: ?(?P<text>.*)$")
_PS_RANK = re.compile(rf"^DNSBL rank (?P<rank>-?\d+) for {_PEER}$")
_PS_AFTER_220 = re.compile(rf"^(?P<test>COMMAND PIPELINING|NON-SMTP COMMAND|BARE NEWLINE|COMMAND TIME LIMIT|"
                           rf"COMMAND COUNT LIMIT|COMMAND LENGTH LIMIT) from {_PEER}")
_PS_HANGUP = re.compile(rf"^HANGUP after (?P<after>[\d.]+) from {_PEER} in (?P<test>.*)$")
_PS_DISCONNECT = re.compile(rf"^DISCONNECT {_PEER}$")
_PS_REJECT = re.compile(rf"^NOQUEUE: reject: RCPT from {_PEER}: (?P<reply>.*?); (?P<fields>from=<.*)$")
_PS_LIMIT = re.compile(rf"^(?:NOQUEUE: )?reject: (?:CONNECT|connect) from {_PEER}: ")
_PS_NO_RCPT = re.compile(rf"^(?:DATA|BDAT) without valid RCPT from {_PEER}$")
_DNSBLOG = re.compile(r"^addr (?P<ip>\S+) listed by domain (?P<zone>\S+) as (?P<code>\S+)$")

_DELIVERY_AGENTS = {"smtp", "lmtp", "local", "virtual", "pipe", "error", "discard", "relay", "retry"}
_STAGE_EVENTS = {"CONNECT": "connect", "HELO": "helo", "EHLO": "helo", "MAIL": "mail", "RCPT": "rcpt",
                 "DATA": "data", "END-OF-MESSAGE": "data", "BDAT": "data"}
# A session's lost/timeout line alone says no mail was tried when it came after one of these.
_BEFORE_MAIL = {"CONNECT", "HELO", "EHLO", "STARTTLS", "AUTH", "UNKNOWN", "NOOP", "VRFY", "ETRN", "QUIT",
                "XCLIENT", "XFORWARD"}
# Between two lines of one session no more than smtpd_timeout (300 s) passes; a session begun
# without its connect line is taken to have ended when its smtpd process is quiet for longer.
_IDLE = 600.0
# postscreen hands a client to smtpd at once; the smtpd "connect from" follows within seconds.
_HANDOFF = 300.0
# What a Postfix reject text says about the restriction that made it.
_ZONE = r"((?:[A-Za-z0-9_-]+\.)+[A-Za-z0-9_-]+)"
_BLOCKED_REPLY = re.compile(rf"(?P<what>Client host|Sender address|Helo command|Recipient address)\b.*?"
                            rf"\bblocked using (?P<zone>(?:[A-Za-z0-9_-]+\.)+[A-Za-z0-9_-]+)")
_RESTRICTIONS = [
    (re.compile(r"Client host \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rbl_client {0}"),
    (re.compile(r"Reverse client host \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rhsbl_reverse_client {0}"),
    (re.compile(r"Sender address \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rhsbl_sender {0}"),
    (re.compile(r"Helo command \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rhsbl_helo {0}"),
    (re.compile(r"Recipient address \[[^\]]*\] blocked using (\S+?)[;,]?(?: |$)"), "reject_rhsbl_recipient {0}"),
    # a text of rbl_reply_maps (any wording that names the entity before "blocked using ZONE")
    (re.compile(rf"Client host\b.*?\bblocked using {_ZONE}"), "reject_rbl_client {0}"),
    (re.compile(rf"Sender address\b.*?\bblocked using {_ZONE}"), "reject_rhsbl_sender {0}"),
    (re.compile(rf"Helo command\b.*?\bblocked using {_ZONE}"), "reject_rhsbl_helo {0}"),
    (re.compile(rf"Recipient address\b.*?\bblocked using {_ZONE}"), "reject_rhsbl_recipient {0}"),
    (re.compile(r"Relay access denied"), "reject_unauth_destination"),
    (re.compile(r"Sender address rejected: Domain not found"), "reject_unknown_sender_domain"),
    (re.compile(r"Recipient address rejected: Domain not found"), "reject_unknown_recipient_domain"),
    (re.compile(r"Recipient address rejected: User unknown"), "reject_unlisted_recipient"),
    (re.compile(r"Client host rejected: cannot find your reverse hostname"), "reject_unknown_reverse_client_hostname"),
    (re.compile(r"Client host rejected: cannot find your hostname"), "reject_unknown_client_hostname"),
    (re.compile(r"Helo command rejected: Host not found"), "reject_unknown_helo_hostname"),
    (re.compile(r"Helo command rejected: need fully-qualified hostname"), "reject_non_fqdn_helo_hostname"),
    (re.compile(r"Helo command rejected: Invalid name"), "reject_invalid_helo_hostname"),
    (re.compile(r"Sender address rejected: need fully-qualified address"), "reject_non_fqdn_sender"),
    (re.compile(r"Recipient address rejected: need fully-qualified address"), "reject_non_fqdn_recipient"),
    (re.compile(r"Data command rejected: Multi-recipient bounce"), "reject_multi_recipient_bounce"),
    (re.compile(r"Improper use of SMTP command pipelining"), "reject_unauth_pipelining"),
    (re.compile(r"Message size exceeds fixed limit"), "message_size_limit"),
    (re.compile(r"Insufficient system storage"), "queue_minfree"),
    (re.compile(r"Helo command rejected"), "check_helo_access"),
    (re.compile(r"Sender address rejected"), "check_sender_access"),
    (re.compile(r"Recipient address rejected"), "check_recipient_access"),
    (re.compile(r"Client host rejected"), "check_client_access"),
    (re.compile(r"no valid recipients|need RCPT|need MAIL"), "protocol"),
]
# postscreen's tests: the parameter that turns each on (the rule id of its refusals), and the
# reply of its "drop" action (postscreen_early.c, postscreen_smtpd.c, postscreen.c).
_SCREEN_TESTS = {
    "pregreet": ("postscreen_greet_action", "521 5.5.1 Protocol error"),
    "dnsbl": ("postscreen_dnsbl_sites", "521 5.7.1 Service unavailable; client [{ip}] blocked using {zone}"),
    "denylist": ("postscreen_access_list", "521 5.3.2 Service currently unavailable"),
    "pipelining": ("postscreen_pipelining_enable", "521 5.5.1 Protocol error"),
    "non-smtp": ("postscreen_non_smtp_command_enable", "521 5.7.0 Error: I can break rules, too. Goodbye."),
    "bare newline": ("postscreen_bare_newline_enable", "521 5.5.1 Protocol error"),
}
_AFTER_220 = {"COMMAND PIPELINING": ("pipelining", "unauth_pipelining"), "NON-SMTP COMMAND": ("non-smtp", "non_smtp"),
              "BARE NEWLINE": ("bare newline", "bare_newline")}


def restriction(text: str, content: str | None = None) -> str:
    """A rule id naming the Postfix restriction a reject text comes from."""
    if content:
        return f"postfix:{content}_checks"
    for rx, name in _RESTRICTIONS:
        m = rx.search(text)
        if m:
            return "postfix:" + name.format(*m.groups())
    return "postfix:reject"


# ---- how each line counted ---------------------------------------------------------

USED, IGNORED, BAD = "used", "ignored", "not understood"
Counted = tuple[str, str]        # (USED | IGNORED | BAD, why): a line's class in the report


def _used(why: str) -> Counted:
    return (USED, why)


def _ignored(why: str) -> Counted:
    return (IGNORED, why)


def _bad(why: str) -> Counted:
    return (BAD, why)


SMTPD, REFUSALS, POSTSCREEN, DNSBLOG = "smtpd", "smtpd refusals", "postscreen", "dnsblog"
CLEANUP, QMGR, DELIVERY = "cleanup", "qmgr", "delivery"
OTHER_PROGRAMS, COMMENTS = "other programs", "comments"
SMTPD_OTHER = "smtpd lines that say nothing a record holds (warnings, statistics, TLS set-up)"
NOT_REFUSALS = "actions that refuse nothing (filter, hold, warn, discard, ...)"
NO_HOOK = "VRFY and ETRN refusals (smtpfw has no hook for them)"
NO_SESSION = "ends of sessions the log does not hold (no other line of theirs)"
FOREIGN_QIDS = "queue ids of no smtpd session (pickup, bounces)"
SCREEN_LIMITS = "postscreen connection limits (smtpfw records no such refusal)"
SCREEN_OTHER = "postscreen lines that say nothing a record holds"
DNSBLOG_ALONE = "dnsblog answers for no postscreen connection in the log"
NO_SYSLOG = "no syslog prefix"
NO_PID = "Postfix lines without a process id"
BAD_TIME = "bad time stamp"
BAD_REFUSAL = "refusals in a shape not known"
BAD_LINE = "lines in a shape not known"


# ---- the model -------------------------------------------------------------------

@dataclass
class Txn:
    qid: str | None = None
    sender: str | None = None
    mail_reject: dict | None = None       # decision
    rcpts: list = field(default_factory=list)      # (addr, decision or None = accepted)
    delivered: list = field(default_factory=list)  # accepted recipients: delivery lines, to= of DATA refusals
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
    last_seen: float = 0.0
    stats: dict = field(default_factory=dict)
    orphan: bool = False                  # begun by a line other than "connect from"
    ptr_known: bool = True                # False: postscreen looks no name up
    listener_address: str = ""            # from postscreen's "CONNECT ... to [IP]:PORT"
    listener_port: int = 0
    behaviour: dict = field(default_factory=dict)  # pregreet and the other bot tests (recording.BEHAVIOUR)
    screened: dict = field(default_factory=dict)   # what postscreen said: verdict, dnsbl_rank, tests failed
    failed: list = field(default_factory=list)     # postscreen tests failed, in order (_SCREEN_TESTS keys)
    hung_up: bool = False                 # postscreen: HANGUP or a command limit ended it, not "drop"

    def current(self) -> Txn | None:
        return self.txns[-1] if self.txns else None

    def touch(self, number: int, ts: float) -> None:
        self.last_line = number
        self.last_seen = ts


@dataclass
class ImportReport:
    """What one import read, and what became of each line (docs/dry-run.md)."""

    lines: int = 0
    used: int = 0
    ignored: int = 0
    unparseable: int = 0                  # "not understood"
    used_by: Counter = field(default_factory=Counter)          # why -> lines
    ignored_by: Counter = field(default_factory=Counter)
    unparseable_by: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)     # (line number, text) of lines not understood
    sessions: int = 0
    messages: int = 0
    rejections: int = 0
    without_recipients: int = 0           # accepted messages no delivery line names a recipient of
    unnamed_recipients: int = 0           # transactions with an accepted recipient no line names
    without_connect: int = 0              # sessions begun mid-session (no connect line)
    screened_out: int = 0                 # sessions that ended in postscreen
    screened_in: int = 0                  # sessions postscreen handed to smtpd

    def count(self, number: int, line: str, counted: Counted) -> None:
        kind, why = counted
        if kind == USED:
            self.used += 1
            self.used_by[why] += 1
        elif kind == IGNORED:
            self.ignored += 1
            self.ignored_by[why] += 1
        else:
            self.unparseable += 1
            self.unparseable_by[why] += 1
            if len(self.examples) < 5:
                self.examples.append((number, line.rstrip("\n")[:160]))

    def to_json(self) -> dict:
        return {"lines": self.lines, "used": dict(self.used_by), "ignored": dict(self.ignored_by),
                "not_understood": dict(self.unparseable_by),
                "examples": [{"line": n, "text": t} for n, t in self.examples],
                "sessions": self.sessions, "messages": self.messages, "rejections": self.rejections,
                "without_recipients": self.without_recipients, "unnamed_recipients": self.unnamed_recipients,
                "without_connect": self.without_connect, "screened_out": self.screened_out,
                "screened_in": self.screened_in}


class PostfixImporter:
    def __init__(self, year: int | None = None, source: str = ""):
        self.year = year or _dt.date.today().year
        self.source = source
        self.open: dict[str, Session] = {}          # smtpd pid -> session
        self.screens: dict[str, dict[str, Session]] = {}   # postscreen: client IP -> port -> session
        self.done: list[Session] = []
        self.by_qid: dict[str, tuple[Session, Txn]] = {}
        self.pending_warnings: dict[str, tuple[str, str]] = {}   # pid -> (ip, name)
        self.report = ImportReport()

    # -- reading -------------------------------------------------------------------

    def feed(self, number: int, line: str) -> None:
        text = line.rstrip("\r\n")
        if not text.strip():
            return
        self.report.lines += 1
        self.report.count(number, text, self._read(number, text))

    def _read(self, number: int, text: str) -> Counted:
        """How one line counts, after taking what it says into the sessions."""
        if text.startswith("#"):
            return _ignored(COMMENTS)       # a note in a fixture or a hand-trimmed log
        m = _SYSLOG.match(text)
        if m is None:
            return _bad(NO_SYSLOG)
        parts = m.group("prog").split("/")
        if not parts[0].startswith("postfix") or len(parts) < 2:
            return _ignored(OTHER_PROGRAMS)
        pid = m.group("pid")
        if pid is None:
            return _bad(NO_PID)
        daemon = parts[-1]
        service = parts[1] if len(parts) > 2 else "smtpd"
        ts = self._time(m.group("ts"))
        if ts is None:
            return _bad(BAD_TIME)
        msg, host = m.group("msg"), m.group("host")
        try:
            if daemon == "smtpd":
                return self._smtpd(number, ts, host, service, pid, msg)
            if daemon == "postscreen":
                return self._postscreen(number, ts, host, pid, msg)
            if daemon == "dnsblog":
                return self._dnsblog(number, ts, msg)
            if daemon == "cleanup":
                return self._cleanup(number, ts, msg)
            if daemon == "qmgr":
                return self._qmgr(msg)
            if daemon in _DELIVERY_AGENTS:
                return self._delivery(daemon, msg)
        except (ValueError, IndexError):
            return _bad(BAD_LINE)
        return _ignored(f"postfix/{daemon}")

    def _time(self, text: str) -> float | None:
        try:
            if text[0].isdigit():
                return _dt.datetime.fromisoformat(text.replace(" ", "T", 1)).timestamp()
            t = time.strptime(f"{self.year} {' '.join(text.split())}", "%Y %b %d %H:%M:%S")
            return time.mktime(t)
        except (ValueError, OverflowError):
            return None

    # -- smtpd -----------------------------------------------------------------------

    def _smtpd(self, number: int, ts: float, host: str, service: str, pid: str, msg: str) -> Counted:
        m = _CONNECT.match(msg)
        if m:
            return self._connect(number, ts, host, service, pid, m)
        for rx in _UNVERIFIED:
            m = rx.match(msg)
            if m:
                self.pending_warnings[pid] = (m.group("ip"), m.group("host").lower().rstrip("."))
                return _used(SMTPD)
        m = _REJECT.match(msg)
        if m:
            return self._reject(number, ts, host, service, pid, m)
        m = _CLIENT_LINE.match(msg)
        if m:
            return self._client_line(number, ts, host, service, pid, m)
        s = self.open.get(pid)
        m = _TLS.match(msg)
        if m:
            if s is None or s.ip != m.group("ip"):
                return _ignored(NO_SESSION)
            s.tls = True
            s.touch(number, ts)
            return _used(SMTPD)
        m = _LOST.match(msg)
        if m:
            return self._lost(number, ts, host, service, pid, m)
        m = _DISCONNECT.match(msg)
        if m:
            return self._disconnect(number, ts, host, service, pid, m)
        for rx, flag in ((_PIPELINING, "unauth_pipelining"), (_NON_SMTP, "non_smtp")):
            m = rx.match(msg)
            if m and s is not None and s.ip == m.group("ip"):
                s.behaviour[flag] = True       # the bot tests smtpfw records (recording.BEHAVIOUR)
                s.touch(number, ts)
                return _used(SMTPD)
        m = _INFO_RCPT.match(msg)
        if m:
            return self._info_rcpt(number, ts, host, service, pid, m)
        if _INFO_ACTION.match(msg):
            return _ignored(NOT_REFUSALS)
        if _REFUSAL_LIKE.match(msg):
            return _bad(BAD_REFUSAL)
        return _ignored(SMTPD_OTHER)

    def _connect(self, number: int, ts: float, host: str, service: str, pid: str, m: re.Match) -> Counted:
        old = self.open.pop(pid, None)
        if old is not None:
            old.end = old.end or "no disconnect line"
            self._close(old)
        new = Session(pid, host, service, number, ts, m.group("ip"), int(m.group("port") or 0),
                      m.group("name"), last_line=number, last_seen=ts)
        warn = self.pending_warnings.pop(pid, None)
        if warn and warn[0] == new.ip:
            new.unverified = warn[1]
        screen = self._handoff(new.ip, ts)
        if screen is not None:
            _merge(new, screen)
            self.report.screened_in += 1
        self.open[pid] = new
        return _used(SMTPD)

    def _session_for(self, number: int, ts: float, host: str, service: str, pid: str, m: re.Match) -> Session:
        """The open session of smtpd ``pid`` for a line about client ``m``.
        With none open for that client, the log lacks the session's connect
        line (it begins mid-session, or was filtered with grep): a session
        begins here, from what the line says.  One without a connect line
        also ends when its process has been quiet longer than smtpd waits."""
        s = self.open.get(pid)
        if s is not None and s.ip == m.group("ip") and not (s.orphan and ts - s.last_seen > _IDLE):
            return s
        if s is not None:
            s.end = s.end or "no disconnect line"
            self._close(self.open.pop(pid))
        s = Session(pid, host, service, number, ts, m.group("ip"), int(m.group("port") or 0), m.group("name"),
                    last_line=number, last_seen=ts, orphan=True)
        warn = self.pending_warnings.pop(pid, None)
        if warn and warn[0] == s.ip:
            s.unverified = warn[1]
        self.open[pid] = s
        return s

    def _client_line(self, number: int, ts: float, host: str, service: str, pid: str, m: re.Match) -> Counted:
        s = self._session_for(number, ts, host, service, pid, m)
        s.touch(number, ts)
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
        return _used(SMTPD)

    def _lost(self, number: int, ts: float, host: str, service: str, pid: str, m: re.Match) -> Counted:
        s = self.open.get(pid)
        if s is None or s.ip != m.group("ip"):
            if m.group("cmd") not in _BEFORE_MAIL:
                return _ignored(NO_SESSION)    # a transaction the log holds nothing else of
            s = self._session_for(number, ts, host, service, pid, m)
        s.end = f"{m.group('what')} after {m.group('cmd')}"
        s.touch(number, ts)
        return _used(SMTPD)

    def _disconnect(self, number: int, ts: float, host: str, service: str, pid: str, m: re.Match) -> Counted:
        stats = dict(kv.split("=", 1) for kv in m.group("stats").split() if "=" in kv)
        s = self.open.get(pid)
        if s is None or s.ip != m.group("ip"):
            if not stats or any(k in stats for k in ("mail", "rcpt", "data", "bdat")):
                return _ignored(NO_SESSION)    # a transaction the log holds nothing else of
            s = self._session_for(number, ts, host, service, pid, m)   # a whole session without mail
        s.stats = stats
        if "starttls" in s.stats and not s.stats["starttls"].startswith("0"):
            s.tls = True
        if "auth" in s.stats and not s.stats["auth"].startswith("0") and s.auth_user is None:
            s.auth_user = ""                  # authenticated; the name is only on client= lines
        s.end = s.end or "disconnect"
        s.ended = ts
        s.touch(number, ts)
        del self.open[pid]
        self._close(s)
        return _used(SMTPD)

    def _reject(self, number: int, ts: float, host: str, service: str, pid: str, m: re.Match) -> Counted:
        parsed = _refusal(m.group("reply"))
        if parsed is None:
            return _bad(BAD_REFUSAL)
        code, enh, text, values, proto = parsed
        stage = _STAGE_EVENTS.get(m.group("stage"))
        if stage is None:
            return _ignored(NO_HOOK)
        s = self._session_for(number, ts, host, service, pid, m)
        s.touch(number, ts)
        if proto:
            s.proto = proto
        _take_fields(s, values)
        rule = "postfix:milter" if m.group("action") == "milter-reject" else restriction(text)
        decision = _decision(code, enh, text, rule)
        self._note_listing(s, text, values)
        if stage == "connect":
            s.connect_reject = decision
        elif stage == "helo":
            s.helo_reject = decision
        elif stage == "data" and rule == "postfix:protocol":
            return _used(REFUSALS)           # DATA with no valid recipients: no policy decision
        else:
            txn = self._txn(s, m.group("qid"), values.get("from"))
            if stage == "mail":
                txn.mail_reject = decision
            elif stage == "rcpt":
                txn.rcpts.append((values.get("to", ""), decision))
            elif not _data_refusal(txn, decision, values):
                return _used(REFUSALS)       # the same message refused again: one refusal
        self.report.rejections += 1
        return _used(REFUSALS)

    def _info_rcpt(self, number: int, ts: float, host: str, service: str, pid: str, m: re.Match) -> Counted:
        """A restriction that refuses nothing (FILTER, HOLD, WARN, ...) named
        the recipient it ran for: one smtpd accepted, unless a refusal of it
        follows.  Often the only line that names an accepted recipient."""
        values = dict(_FIELD.findall(_split(m.group("reply"))[1]))
        if not values.get("to"):
            return _ignored(NOT_REFUSALS)
        s = self._session_for(number, ts, host, service, pid, m)
        s.touch(number, ts)
        _take_fields(s, values)
        _accepted(self._txn(s, m.group("qid"), values.get("from")), values)
        return _used(SMTPD)

    def _txn(self, s: Session, qid: str | None, sender: str | None) -> Txn:
        """The transaction a refusal belongs to: its queue id's; else the
        open one; else a new one (after a message or a refused MAIL, or for
        another sender).  A refusal naming a queue id the log has no client=
        line for still ties the later lines of that id to it."""
        current = s.current()
        if qid and qid in self.by_qid:
            txn = self.by_qid[qid][1]
        elif (current is None or current.qid is not None or current.queued or current.mail_reject is not None
              or current.data_reject is not None or (sender is not None and current.sender is not None
                                                     and current.sender != sender)):
            txn = Txn()
            s.txns.append(txn)
        else:
            txn = current
        if qid and txn.qid is None:
            txn.qid = qid
            self.by_qid[qid] = (s, txn)
        if sender is not None and txn.sender is None:
            txn.sender = sender
        return txn

    def _note_listing(self, s: Session, text: str, values: dict) -> None:
        m = _BLOCKED.search(text)
        if not m and self._note_reply_listing(s, text, values):
            return
        if not m:
            if "Sender address rejected: Domain not found" in text and values.get("from"):
                domain = values["from"].rpartition("@")[2].lower()
                if domain:
                    s.listings[("resolvable", domain, "")] = {"status": "no"}
            return
        what, name, zone = m.group("what"), m.group("name"), m.group("zone").rstrip(";,.")
        if what in ("Client host", "client"):
            key = ("dnsbl", name, zone)
        else:
            key = ("rhsbl", name.rpartition("@")[2].lower().rstrip("."), zone)
        answer = s.listings.setdefault(key, {"status": "listed"})
        if m.group("txt") and "txt" not in answer:
            answer["txt"] = m.group("txt").strip()

    @staticmethod
    def _note_reply_listing(s: Session, text: str, values: dict) -> bool:
        """A listing in a reject text of rbl_reply_maps, worded by the site
        ("Sender address rejected: domain D blocked using Z"): the entity is
        the one the text names, its value taken from the line."""
        m = _BLOCKED_REPLY.search(text)
        if not m:
            return False
        what, zone = m.group("what"), m.group("zone")
        if what == "Client host":
            key = ("dnsbl", s.ip, zone) if s.ip else None
        else:
            value = {"Sender address": values.get("from"), "Helo command": values.get("helo"),
                     "Recipient address": values.get("to")}[what] or ""
            domain = value.rpartition("@")[2].lower().rstrip(".")
            key = ("rhsbl", domain, zone) if domain else None
        if key is None:
            return False
        s.listings.setdefault(key, {"status": "listed"})
        return True

    def _close(self, s: Session) -> None:
        self.done.append(s)

    # -- postscreen ------------------------------------------------------------------

    def _postscreen(self, number: int, ts: float, host: str, pid: str, msg: str) -> Counted:
        m = _PS_CONNECT.match(msg)
        if m:
            self._screen_open(number, ts, host, pid, m)
            return _used(POSTSCREEN)
        if _PS_LIMIT.match(msg):
            return _ignored(SCREEN_LIMITS)
        takes: list[tuple[re.Pattern, Callable[[Session, re.Match], bool] | None]] = [
            (_PS_PASS, self._screen_pass), (_PS_PREGREET, self._screen_pregreet), (_PS_RANK, self._screen_rank),
            (_PS_AFTER_220, self._screen_after_220), (_PS_HANGUP, self._screen_hangup),
            (_PS_REJECT, self._screen_reject), (_PS_VETO, None), (_PS_NO_RCPT, None)]
        for rx, take in takes:
            m = rx.match(msg)
            if m:
                s = self._screen(number, ts, host, pid, m)
                if take is not None and not take(s, m):
                    return _bad(BAD_REFUSAL)
                return _used(POSTSCREEN)
        m = _PS_DISCONNECT.match(msg)
        if m:
            s = self._screen(number, ts, host, pid, m)
            self._screen_close(s, ts)
            return _used(POSTSCREEN)
        return _ignored(SCREEN_OTHER)

    def _screen_open(self, number: int, ts: float, host: str, pid: str, m: re.Match) -> Session:
        ip, port = m.group("ip"), m.group("port")
        for old in list(self.screens.get(ip, {}).values()):
            if old.port == int(port) or ts - old.last_seen > _HANDOFF:   # over: a new connection, or stale
                old.end = old.end or "handed to smtpd; no smtpd line for it"
                self._screen_close(old, None)
        ports = self.screens.setdefault(ip, {})
        s = Session(pid, host, "postscreen", number, ts, ip, int(port), last_line=number, last_seen=ts,
                    ptr_known=False)
        if "laddr" in m.groupdict():
            s.listener_address, s.listener_port = m.group("laddr"), int(m.group("lport"))
        else:
            s.orphan = True
        ports[port] = s
        return s

    def _screen(self, number: int, ts: float, host: str, pid: str, m: re.Match) -> Session:
        """The postscreen connection a line is about; one begun here if the
        log does not hold its CONNECT line."""
        s = self.screens.get(m.group("ip"), {}).get(m.group("port"))
        if s is None:
            s = self._screen_open(number, ts, host, pid, m)
        s.touch(number, ts)
        return s

    def _screen_pass(self, s: Session, m: re.Match) -> bool:
        verdict = m.group("verdict")
        s.screened["verdict"] = verdict
        if verdict == "PASS OLD":
            s.behaviour["pregreet_cached"] = True      # every test passed before: none made it wait
        if verdict in ("BLACKLISTED", "DENYLISTED"):
            s.failed.append("denylist")
        return True

    def _screen_pregreet(self, s: Session, m: re.Match) -> bool:
        s.behaviour.update(pregreet=True, pregreet_text=m.group("text")[:64],
                           pregreet_ms=round(float(m.group("after")) * 1000))
        s.failed.append("pregreet")
        return True

    def _screen_rank(self, s: Session, m: re.Match) -> bool:
        s.screened["dnsbl_rank"] = int(m.group("rank"))
        s.failed.append("dnsbl")
        return True

    def _screen_after_220(self, s: Session, m: re.Match) -> bool:
        test = m.group("test")
        if test in _AFTER_220:
            name, flag = _AFTER_220[test]
            s.behaviour[flag] = True
            s.failed.append(name)
        else:
            s.end = test                       # COMMAND TIME/COUNT/LENGTH LIMIT: postscreen hung up
            s.hung_up = True
        return True

    def _screen_hangup(self, s: Session, m: re.Match) -> bool:
        s.hung_up = True
        s.end = f"HANGUP after {m.group('after')} in {m.group('test')}"
        return True

    def _screen_reject(self, s: Session, m: re.Match) -> bool:
        """postscreen's "enforce": it talked on as an SMTP server and refused
        every RCPT, logging the envelope."""
        r = _REPLY.match(m.group("reply"))
        if r is None:
            return False
        code, enh, text = _reply_parts(r)
        fields = m.group("fields")
        values = dict(_FIELD.findall(fields))
        proto = _PROTO.search(fields)
        if proto:
            s.proto = proto.group(1)
        _take_fields(s, values)
        decision = _decision(code, enh, text, _screen_rule(s, code, text))
        self._note_listing(s, text, values)
        txn = self._txn(s, None, values.get("from"))
        txn.rcpts.append((values.get("to", ""), decision))
        self.report.rejections += 1
        return True

    def _screen_close(self, s: Session, ts: float | None) -> None:
        """DISCONNECT: postscreen kept the client (it never reached smtpd).
        A test failed with nothing refused or hung up after it: postscreen's
        "drop" action, which answers 521 and hangs up."""
        ports = self.screens.get(s.ip, {})
        if ports.get(str(s.port)) is s:
            del ports[str(s.port)]
            if not ports:
                del self.screens[s.ip]
        if ts is not None:
            s.ended = ts
            s.end = s.end or "DISCONNECT"
            s.screened.setdefault("verdict", "DISCONNECT")
            if s.failed and not s.txns and not s.hung_up:
                s.connect_reject = _screen_drop(s)
        self._close(s)

    def _handoff(self, ip: str, ts: float) -> Session | None:
        """The postscreen connection an smtpd "connect from" continues: the
        oldest recent one of that client still open, one that passed first."""
        ports = self.screens.get(ip)
        if not ports:
            return None
        recent = [s for s in ports.values() if 0 <= ts - s.started <= _HANDOFF and not s.txns and not s.hung_up]
        if not recent:
            return None
        recent.sort(key=lambda s: (not s.screened.get("verdict"), bool(s.failed), s.started))
        s = recent[0]
        del ports[str(s.port)]
        if not ports:
            del self.screens[ip]
        return s

    def _dnsblog(self, number: int, ts: float, msg: str) -> Counted:
        """A DNSBL answer postscreen asked for: a listing with its code."""
        m = _DNSBLOG.match(msg)
        if not m:
            return _ignored("postfix/dnsblog")
        screens = list(self.screens.get(m.group("ip"), {}).values())
        if not screens:
            return _ignored(DNSBLOG_ALONE)
        for s in screens:
            answer = s.listings.setdefault(("dnsbl", m.group("ip"), m.group("zone")), {"status": "listed"})
            codes = answer.setdefault("codes", [])
            if m.group("code") not in codes:
                codes.append(m.group("code"))
        return _used(DNSBLOG)

    # -- cleanup, qmgr, delivery ------------------------------------------------------

    def _cleanup(self, number: int, ts: float, msg: str) -> Counted:
        m = _MESSAGE_ID.match(msg)
        if m:
            hit = self.by_qid.get(m.group("qid"))
            if hit is None:
                return _ignored(FOREIGN_QIDS)
            hit[1].headers["message-id"] = m.group("mid").strip()
            return _used(CLEANUP)
        m = _MILTER_REJECT.match(msg)
        if m:
            return self._cleanup_milter(m)
        m = _CONTENT_REJECT.match(msg)
        if m:
            return self._content_reject(m)
        return _ignored("postfix/cleanup")

    def _cleanup_milter(self, m: re.Match) -> Counted:
        """A milter refused the message at its end (cleanup talks to the
        milters for the message): a refusal at data."""
        hit = self.by_qid.get(m.group("qid"))
        if hit is None:
            return _ignored(FOREIGN_QIDS)
        parsed = _refusal(m.group("reply"))
        if parsed is None:
            return _bad(BAD_REFUSAL)
        code, enh, text, values, _proto = parsed
        s, txn = hit
        _take_fields(s, values)
        if txn.sender is None and "from" in values:
            txn.sender = values["from"]
        if _data_refusal(txn, _decision(code, enh, text, "postfix:milter"), values):
            self.report.rejections += 1
        return _used(CLEANUP)

    def _content_reject(self, m: re.Match) -> Counted:
        hit = self.by_qid.get(m.group("qid"))
        if hit is None:
            return _ignored(FOREIGN_QIDS)
        s, txn = hit
        rest = m.group("rest")
        left, sep, right = rest.partition("; from=<")
        if not sep:
            return _bad(BAD_REFUSAL)
        shown, _, _client = left.rpartition(" from ")
        fields, _, reply = ("from=<" + right).partition(": ")
        values = dict(_FIELD.findall(fields))
        _take_fields(s, values)
        if txn.sender is None and "from" in values:
            txn.sender = values["from"]
        what = m.group("what")
        if what == "header":
            name, colon, value = shown.partition(":")
            if colon:
                txn.headers.setdefault(name.strip().lower(), value.strip())
        if m.group("action") == "discard":
            _accepted(txn, values)
            return _used(CLEANUP)
        enh, _, text = reply.partition(" ")
        if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", enh):
            enh, text = "5.7.1", reply
        code = 550 if enh[0] == "5" else 451
        decision = _decision(code, enh, text or "Message content rejected",
                             restriction(text, what.lower() if what != "END-OF-MESSAGE" else None))
        if _data_refusal(txn, decision, values):
            self.report.rejections += 1
        return _used(CLEANUP)

    def _qmgr(self, msg: str) -> Counted:
        m = _QMGR_FROM.match(msg)
        if not m:
            return _ignored("postfix/qmgr")
        hit = self.by_qid.get(m.group("qid"))
        if hit is None:
            return _ignored(FOREIGN_QIDS)
        txn = hit[1]
        txn.queued = True
        txn.sender = m.group("from") if txn.sender is None else txn.sender
        txn.size = int(m.group("size"))
        txn.nrcpt = int(m.group("nrcpt"))
        return _used(QMGR)

    def _delivery(self, daemon: str, msg: str) -> Counted:
        m = _DELIVERY.match(msg)
        if not m:
            return _ignored(f"postfix/{daemon}")
        hit = self.by_qid.get(m.group("qid"))
        if hit is None:
            return _ignored(FOREIGN_QIDS)
        txn = hit[1]
        addr = m.group("orig") or m.group("to")
        if addr not in txn.delivered:
            txn.delivered.append(addr)
        return _used(DELIVERY)

    # -- output ----------------------------------------------------------------------

    def finish(self) -> list[dict]:
        for s in list(self.open.values()):
            s.end = s.end or "log ends before disconnect"
            self._close(s)
        self.open.clear()
        for ports in list(self.screens.values()):
            for s in list(ports.values()):
                s.end = s.end or ("handed to smtpd; no smtpd line for it" if s.screened.get("verdict")
                                  else "log ends before DISCONNECT")
                self._screen_close(s, None)
        records = [self._record(s) for s in sorted(self.done, key=lambda s: (s.started, s.first_line))]
        self.report.sessions = len(records)
        return records

    def _record(self, s: Session) -> dict:
        missing = ["headers (except message-id and rejected header lines)", "dns (except listings named in rejects)"]
        if s.orphan:
            self.report.without_connect += 1
            missing.append("the start of the session (no connect line: the log begins mid-session or was filtered)")
        if s.service == "postscreen":
            self.report.screened_out += 1
        events = self._events(s, missing)
        if s.connect_reject is not None:
            events = []
        source: dict = {"kind": "postfix", "file": self.source, "lines": [s.first_line, s.last_line],
                        "end": s.end, "rdns": s.name, "missing": missing}
        if s.screened or s.service == "postscreen":
            source["postscreen"] = dict(s.screened)
            if s.failed:
                source["postscreen"]["failed"] = list(dict.fromkeys(s.failed))
        record: dict = {
            "v": FORMAT_VERSION,
            "id": f"postfix.{s.host}.{s.pid}.{s.first_line}",
            "time": round(s.started, 3),
            "duration": round(max(0.0, (s.ended or s.last_seen or s.started) - s.started), 3),
            "ruleset": "postfix",
            "listener": {"address": s.listener_address, "port": s.listener_port or _PORTS.get(s.service, 25),
                         "name": s.service},
            "client": {"ip": s.ip, "port": s.port},
            "tls": s.tls,
            "auth": s.auth_user is not None,
            "auth_user": s.auth_user or "",
            "connect": {"decision": s.connect_reject or _CONTINUE,
                        "reply": _reply(s.connect_reject) or "220"},
            "events": events,
            "facts": [{"provider": "dns", "key": d["lookup"], "value": d["answer"]} for d in self._dns(s, missing)],
            "tags": [],
            "monitored": [],
            "final_reply": "",
            "source": source,
        }
        if s.behaviour:
            record["behaviour"] = dict(s.behaviour)
        return record

    def _events(self, s: Session, missing: list) -> list[dict]:
        """The commands a session's lines show, in the order the client must
        have sent them."""
        events: list[dict] = []
        esmtp = s.proto != "SMTP" and not (s.stats.get("helo") and not s.stats.get("ehlo"))
        helo = s.helo
        greeted = bool(s.txns) or s.helo_reject is not None or any(
            k in s.stats and not s.stats[k].startswith("0") for k in ("helo", "ehlo"))
        if greeted:
            if helo is None:
                helo = f"[{s.ip}]"
                missing.append("helo name (the log shows it only in reject lines)")
            events.append({"cmd": "ehlo" if esmtp else "helo", "arg": helo,
                           "decision": s.helo_reject or _CONTINUE, "reply": _reply(s.helo_reject) or "250"})
        open_txn = False
        for txn in s.txns:
            accepted = [a for a in txn.delivered if a not in {r for r, _ in txn.rcpts}]
            if txn.qid and not accepted and not txn.queued and txn.data_reject is None and txn.mail_reject is None:
                # A queue id means a recipient was accepted (smtpd_delay_open_until_valid_rcpt);
                # smtpd logs no accepted RCPT, and no later line named this one.
                self.report.unnamed_recipients += 1
                missing.append(f"the accepted recipients of {txn.qid} (no line names them)")
            if (txn.sender is None and not txn.rcpts and not accepted and not txn.queued
                    and txn.data_reject is None and txn.mail_reject is None):
                continue             # nothing known about it (e.g. lost during DATA)
            if open_txn:
                events.append({"cmd": "rset", "reply": "250 2.0.0 Ok"})
            if txn.sender is None:
                missing.append("a sender (the log names it only in reject and qmgr lines)")
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
        return events

    def _dns(self, s: Session, missing: list) -> list[dict]:
        """The DNS answers a session's lines show: listings, and the PTR name
        smtpd looked up (postscreen looks none up)."""
        dns = [{"lookup": {"kind": k, "name": n, "zone": z}, "answer": a} for (k, n, z), a in s.listings.items()]
        ptr = {"kind": "ptr", "name": s.ip, "zone": ""}
        if s.unverified:
            dns.append({"lookup": ptr, "answer": {"status": "found", "names": [s.unverified]}})
        elif s.name != "unknown":
            dns.append({"lookup": ptr, "answer": {"status": "found", "names": [s.name.lower()], "confirmed": True}})
        elif s.ptr_known and not s.orphan:
            dns.append({"lookup": ptr, "answer": {"status": "none"}})
        else:
            # "unknown" with no warning line before it: no PTR name, or one that
            # did not resolve back -- the warning is not in the log to tell.
            missing.append("reverse DNS (postscreen looks up none; a session without its connect line "
                           "lacks the warning that tells an unconfirmed name from none)")
        return dns


_CONTINUE = {"outcome": "continue", "code": None, "enhanced": None, "text": None, "rule": None}
_PORTS = {"smtpd": 25, "smtp": 25, "submission": 587, "smtps": 465, "submissions": 465, "postscreen": 25}


def _decision(code: int, enhanced: str | None, text: str, rule: str, outcome: str | None = None) -> dict:
    return {"outcome": outcome or ("tempfail" if code < 500 else "reject"), "code": code, "enhanced": enhanced,
            "text": text.strip(), "rule": rule}


def _reply(decision: dict | None) -> str:
    if decision is None:
        return ""
    enh = f" {decision['enhanced']}" if decision.get("enhanced") else ""
    return f"{decision['code']}{enh} {decision['text']}"


def _reply_parts(r: re.Match) -> tuple[int, str | None, str]:
    """(code, enhanced code, text) of a reply; one logged with only an
    enhanced code (cleanup's milter and content refusals) gets the code
    smtpd sends for it."""
    if r.group("bare"):
        enh = r.group("bare")
        return (550 if enh[0] == "5" else 451), enh, r.group("text") or ""
    return int(r.group("code")), r.group("enh"), r.group("text") or ""


def _split(reply: str) -> tuple[str, str]:
    """(reply text, fields) of what smtpd logs after "from CLIENT: " --
    smtpd_whatsup appends from=<> to=<> proto= helo=<> sasl_username=<>,
    each only when known."""
    head, sep, tail = reply.rpartition("; from=<")
    if sep:
        return head, "from=<" + tail
    head, sep, tail = reply.rpartition("; proto=")
    return (head, "proto=" + tail) if sep else (reply, "")


def _refusal(reply: str) -> tuple[int, str | None, str, dict, str | None] | None:
    """A refusal's code, enhanced code and text, and the fields after it."""
    text, fields = _split(reply)
    r = _REPLY.match(text)
    if r is None:
        return None
    code, enh, text = _reply_parts(r)
    proto = _PROTO.search(fields)
    return code, enh, text, dict(_FIELD.findall(fields)), proto.group(1) if proto else None


def _take_fields(s: Session, values: dict) -> None:
    """What a refusal's fields say about the session: HELO name, SASL user."""
    if values.get("helo"):
        s.helo = s.helo or values["helo"]
    if values.get("sasl_username"):
        s.auth_user = s.auth_user or values["sasl_username"]


def _accepted(txn: Txn, values: dict) -> None:
    """A refusal after RCPT names in to= the first recipient smtpd accepted
    (smtpd.c sets state->recipient only for an accepted one): often the only
    line that names it, when the message never reached the queue."""
    to = values.get("to")
    if to and to not in txn.delivered and to not in {r for r, _ in txn.rcpts}:
        txn.delivered.append(to)


def _data_refusal(txn: Txn, decision: dict, values: dict) -> bool:
    """A refusal at DATA, BDAT or the end of the message; False if the
    message was refused already (a milter's second line for it)."""
    _accepted(txn, values)
    if txn.sender is None and "from" in values:
        txn.sender = values["from"]
    if txn.data_reject is not None:
        return False
    txn.data_reject = decision
    return True


def _merge(s: Session, screen: Session) -> None:
    """An smtpd session postscreen handed over: it began at postscreen's
    CONNECT, on the address and port postscreen logged, with what the
    tests saw."""
    s.started, s.first_line = screen.started, screen.first_line
    s.port = s.port or screen.port
    s.listener_address, s.listener_port = screen.listener_address, screen.listener_port
    s.behaviour.update(screen.behaviour)
    for key, answer in screen.listings.items():
        s.listings.setdefault(key, answer)
    s.screened = screen.screened
    s.failed = screen.failed


def _screen_rule(s: Session, code: int, text: str) -> str:
    """The postscreen test behind a refusal at RCPT ("enforce")."""
    if "blocked using" in text:
        return "postfix:" + _SCREEN_TESTS["dnsbl"][0]
    if "Service currently unavailable" in text:
        # 550: the access list denied it; 450: the after-220 tests passed and the
        # client must come back (postscreen cannot hand a session over midway).
        return "postfix:" + (_SCREEN_TESTS["denylist"][0] if code >= 500 else "postscreen_after_220_tests")
    for test in s.failed:
        if _SCREEN_TESTS[test][1].endswith(text):
            return "postfix:" + _SCREEN_TESTS[test][0]
    return "postfix:postscreen"


def _screen_drop(s: Session) -> dict:
    """The 521 postscreen answered before hanging up, for the test that
    failed last (the one whose action was "drop")."""
    test = s.failed[-1]
    rule, reply = _SCREEN_TESTS[test]
    zones = sorted(z for (kind, _n, z) in s.listings if kind == "dnsbl")
    if test == "dnsbl" and len(zones) != 1:
        reply = "521 5.7.1 Service unavailable"   # postscreen names the zone of most weight: not logged
    r = _REPLY.match(reply.format(ip=s.ip, zone=zones[0] if zones else ""))
    assert r is not None
    code, enh, text = _reply_parts(r)
    return _decision(code, enh, text, "postfix:" + rule, outcome="disconnect")


def import_lines(lines, year: int | None = None, source: str = "") -> tuple[list[dict], ImportReport]:
    imp = PostfixImporter(year, source)
    for number, line in enumerate(lines, start=1):
        imp.feed(number, line)
    records = imp.finish()
    return records, imp.report


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n:,} {why}" for why, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(path: str, rep: ImportReport) -> str:
    """What the import found, for stderr: what was read, and what became of
    each line (used, ignored, not understood), by reason."""
    out = [(f"{path}: {rep.lines:,} lines read: {rep.sessions:,} sessions, {rep.messages:,} messages "
            f"accepted, {rep.rejections:,} rejections; {rep.used:,} lines used, {rep.ignored:,} ignored, "
            f"{rep.unparseable:,} not understood")]
    for label, counter in (("used", rep.used_by), ("ignored", rep.ignored_by),
                           ("not understood", rep.unparseable_by)):
        if counter:
            out.append(f"  {label}: {_counts(counter)}")
    out += [f"  not understood {path}:{number}: {text}" for number, text in rep.examples]
    if rep.without_connect:
        out.append(f"  {rep.without_connect:,} sessions begin without their connect line (the log begins "
                   f"mid-session, or was filtered): what came before is not known")
    if rep.screened_out or rep.screened_in:
        out.append(f"  postscreen: {rep.screened_out:,} sessions ended there, {rep.screened_in:,} were handed "
                   f"to smtpd")
    if rep.without_recipients:
        out.append(f"  {rep.without_recipients:,} accepted messages have no delivery lines, so their recipients "
                   f"are unknown")
    if rep.unnamed_recipients:
        out.append(f"  {rep.unnamed_recipients:,} transactions had a recipient accepted that no line names "
                   f"(their records have only the recipients the log names)")
    return "\n".join(out)
