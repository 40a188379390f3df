"""The fields rules can test: name, type, the hook from which each is known,
and how to read it from ``SessionState``.

One table, used by the compiler (getters, availability), lint (unknown
fields, did-you-mean) and docs/rules.md.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from functools import cached_property, lru_cache
from typing import Any, Callable

from smtpfw.checks.callout import Callout
from smtpfw.checks.mime import BODY_LIMIT, MimeSummary, body_lines, header_lines
from smtpfw.checks.content import (DkimVerdict, DmarcQuery, DmarcResult, MessageQuery, SpfQuery, dkim_unavailable,
                                   dmarc_unavailable)
from smtpfw.checks.dnsresult import Lookup, LookupKind
from smtpfw.facts.base import FactMissing
from smtpfw.session import SessionState
from smtpfw.state.facts import GreyKey
from smtpfw.verdict import Stage

# Field types.  Every test of a text-like type ignores case (see ``fold``).
IP, DOMAIN, ADDRESS, STRING, INT, BOOL, LIST = "ip", "domain", "address", "string", "int", "bool", "list"
# Text whose order means something: `<`, `>` compare it, constants are checked against ``form``.
CLOCK, DATE = "clock", "date"
ORDERED = (INT, CLOCK, DATE)
FORMS = {CLOCK: (r"([01]\d|2[0-3]):[0-5]\d", '"HH:MM", e.g. "08:30"'),
         DATE: (r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", '"YYYY-MM-DD", e.g. "2026-12-24"')}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def fold(ftype: str, text: str) -> str:
    """The form in which a value of ``ftype`` is compared, by rule constants,
    list entries and session values alike: domains lower-case without a
    trailing dot, addresses (local part included, as every MTA's lists and
    policies treat them) and text lower-case.  One rule for every test, so
    `rcpt.local = "root"` cannot be bypassed with `ROOT@` (docs/rules.md, "Case")."""
    if ftype == DOMAIN:
        return text.lower().rstrip(".")
    if ftype in (ADDRESS, STRING, LIST):
        return text.lower()
    return text


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    stage: Stage                       # first hook where the value is known
    get: Callable[[SessionState], Any]  # a value of the field's type (str, int, bool, list ...)
    doc: str
    lookup: Callable[[SessionState], Any] | None = None   # the fact key it needs (smtpfw.facts), or None
    choices: tuple[str, ...] = ()
    folded: bool = False               # ``get`` already returns the folded form
    lazy: bool = False                 # a fact that counts or writes when asked (smtpfw.state.facts)

    @cached_property
    def compared(self) -> Callable[[SessionState], Any]:
        """The getter every test uses: the value folded by type (``get`` is
        the value as received, for placeholders and traces).  One function
        per field, so the engine can index `field = value` rules by it."""
        get, ftype = self.get, self.type
        if self.folded or ftype not in (DOMAIN, ADDRESS, STRING, LIST):
            return get
        if ftype == LIST:
            return lambda s: [fold(ADDRESS, str(x)) for x in get(s)]
        return lambda s: fold(ftype, str(get(s)))


def _ptr_lookup(s: SessionState) -> Lookup:
    return Lookup(LookupKind.PTR, s.client_ip)


def _resolvable_lookup(s: SessionState) -> Lookup | None:
    return Lookup(LookupKind.RESOLVABLE, s.sender_domain) if s.sender_domain else None


def _callout_key(s: SessionState) -> Callout | None:
    return Callout(s.rcpt_lower) if s.rcpt_lower else None


def _verified(s: SessionState) -> str:
    a = s.facts.get(_callout_key(s))
    return a.status if a is not None else "unknown"


def _helo_literal(s: SessionState) -> str:
    """The address of a HELO address literal ([192.0.2.1], [IPv6:2001:db8::1]), "" if none."""
    h = s.helo_lower
    if len(h) < 3 or h[0] != "[" or h[-1] != "]":
        return ""
    text = h[1:-1]
    if text.startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


_HOSTNAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _helo_valid(s: SessionState) -> bool:
    """A hostname or an address literal (Postfix reject_invalid_helo_hostname)."""
    h = s.helo_lower
    return bool(_helo_literal(s)) or (len(h) <= 253 and _HOSTNAME.fullmatch(h) is not None)


def _helo_fqdn(s: SessionState) -> bool:
    """A fully qualified hostname: valid, with a dot, not all digits and dots
    (Postfix reject_non_fqdn_helo_hostname; a literal is not a name)."""
    h = s.helo_lower
    return ("." in h and not _helo_literal(s) and _HOSTNAME.fullmatch(h) is not None
            and not h.replace(".", "").isdigit())


def _helo_name(s: SessionState) -> str | None:
    """The HELO name worth a DNS query: a fully qualified name, not a literal."""
    return s.helo_lower if _helo_fqdn(s) else None


def _helo_resolvable_lookup(s: SessionState) -> Lookup | None:
    name = _helo_name(s)
    return Lookup(LookupKind.RESOLVABLE, name) if name else None


def _helo_addresses_lookup(s: SessionState) -> Lookup | None:
    name = _helo_name(s)
    return Lookup(LookupKind.ADDRESSES, name) if name else None


def _resolvable_of(make: Callable[[SessionState], Lookup | None]) -> Callable[[SessionState], str]:
    """The `*.resolvable` field of the domain ``make`` looks up: its answer's
    status, "no" when there is no domain, "failed" when it was not had."""
    def status(s: SessionState) -> str:
        key = make(s)
        if key is None:
            return "no"
        a = s.facts.get(key)
        return a.status if a is not None else "failed"
    return status


def _helo_addresses(s: SessionState) -> list:
    key = _helo_addresses_lookup(s)
    a = s.facts.get(key) if key is not None else None
    return list(a.codes) if a is not None and a.status == "found" else []


def _helo_matches_client(s: SessionState) -> bool:
    """The HELO name's A/AAAA records include the client IP (or the HELO
    literal is the client IP)."""
    literal = _helo_literal(s)
    if literal:
        return literal == str(s.ip)
    return str(s.ip) in _helo_addresses(s)


def _rcpt_resolvable_lookup(s: SessionState) -> Lookup | None:
    return Lookup(LookupKind.RESOLVABLE, s.rcpt_domain) if s.rcpt_domain else None




def _client_net(s: SessionState) -> str:
    """The client's /24 (IPv4) or /64 (IPv6): one sender pool, as
    greylisting and rate limits usually key it."""
    return s.net


def _grey_key(s: SessionState) -> GreyKey:
    return GreyKey(_client_net(s), s.sender_lower, s.rcpt_lower, f"{s.session_id}.{s.hook_runs}")


def lazy_answer(make: Callable[[SessionState], Any]) -> Callable[[SessionState], Any]:
    """The answer to a lazy fact (a rate limit, greylisting): the engine
    pauses at ``FactMissing`` until Policy has asked for it."""
    def answer(s: SessionState):
        made = s.lazy_keys.get(make)          # the key once per hook run: it is read again on resuming
        if made is not None and made[0] == s.hook_runs:
            key = made[1]
        else:
            key = make(s)
            s.lazy_keys[make] = (s.hook_runs, key)
        a = s.facts.get(key)
        if a is None:
            raise FactMissing(key)
        return a
    return answer


_grey = lazy_answer(_grey_key)


SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
DKIM_RESULTS = ("pass", "fail", "neutral", "none", "temperror", "permerror")


def _spf_key(s: SessionState) -> SpfQuery | None:
    return SpfQuery("mailfrom", s.client_ip, s.sender, s.helo) if s.sender is not None else None


def _spf_helo_key(s: SessionState) -> SpfQuery:
    return SpfQuery("helo", s.client_ip, "", s.helo)


def _spf_of(s: SessionState, make) -> str:
    a = s.facts.get(make(s))
    return a.result if a is not None else "temperror"


def _dkim_key(s: SessionState) -> MessageQuery:
    return MessageQuery("dkim", s.messages, s.message or b"")


def _dkim(s: SessionState) -> DkimVerdict:
    return s.facts.get(_dkim_key(s)) or _NOT_ASKED_DKIM


def _dmarc_key(s: SessionState) -> DmarcQuery | list:
    """DMARC's key holds the SPF and DKIM results: until they are known,
    the keys to ask for them."""
    spf_key, dkim_key = _spf_key(s), _dkim_key(s)
    spf, dkim = s.facts.get(spf_key), s.facts.get(dkim_key)
    if spf is None or dkim is None:
        return [k for k, a in ((spf_key, spf), (dkim_key, dkim)) if a is None and k is not None]
    return DmarcQuery(s.messages, (spf.result, spf.domain), tuple((g.domain, g.result) for g in dkim.signatures),
                      s.message or b"")


def _dmarc(s: SessionState) -> DmarcResult:
    key = _dmarc_key(s)
    a = s.facts.get(key) if not isinstance(key, list) else None
    return a if a is not None else _NOT_ASKED_DMARC


def _mime_key(s: SessionState) -> MessageQuery:
    return MessageQuery("mime", s.messages, s.message or b"")


def _mime(s: SessionState) -> MimeSummary:
    return s.facts.get(_mime_key(s)) or _NO_MIME


def _header_lines(s: SessionState) -> tuple[str, ...]:
    return header_lines(s.message) if s.message else ()


def _body_lines(s: SessionState) -> tuple[str, ...]:
    return body_lines(s.message) if s.message else ()


_NO_MIME = MimeSummary(error="not asked")
_NOT_ASKED_DKIM = dkim_unavailable("not asked")
_NOT_ASKED_DMARC = dmarc_unavailable("not asked")
_clamd = lazy_answer(lambda s: MessageQuery("clamd", s.messages, s.message or b""))
_spamd = lazy_answer(lambda s: MessageQuery("spamd", s.messages, s.message or b""))


def _ptr(s: SessionState):
    return s.facts.get(_ptr_lookup(s))


def _rdns(s: SessionState) -> str:
    a = _ptr(s)
    return a.names[0] if a is not None and a.names else ""


def _ptr_status(s: SessionState) -> str:
    a = _ptr(s)
    return a.status if a is not None else "failed"


def _fcrdns(s: SessionState) -> bool:
    a = _ptr(s)
    return bool(a is not None and a.confirmed)


def _resolvable(s: SessionState) -> str:
    if not s.sender_domain:
        return "no" if s.sender else "yes"   # <> has no domain: nothing to resolve
    a = s.facts.get(_resolvable_lookup(s))
    return a.status if a is not None else "failed"


C, H, M, R, D = Stage.CONNECT, Stage.HELO, Stage.MAIL, Stage.RCPT, Stage.DATA

FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in [
        FieldSpec("listener.address", IP, C, lambda s: s.listener_address, "address the client connected to"),
        FieldSpec("listener.port", INT, C, lambda s: s.listener_port, "port the client connected to (25, 587, ...)"),
        FieldSpec("listener.name", STRING, C, lambda s: s.listener_name, "name of the listener in the config"),
        FieldSpec("client.ip", IP, C, lambda s: s.client_ip, "the client's IP address"),
        FieldSpec("client.port", INT, C, lambda s: s.client_port, "the client's source port"),
        FieldSpec("client.rdns", DOMAIN, C, _rdns, "first PTR name of the client IP, \"\" if none", _ptr_lookup),
        FieldSpec("client.ptr", STRING, C, _ptr_status, "PTR lookup result: found, none or failed",
                  _ptr_lookup, ("found", "none", "failed"), folded=True),
        FieldSpec("client.net", STRING, C, _client_net,
                  "the client's network: its /24 (IPv4) or /64 (IPv6), e.g. \"192.0.2.0/24\"", folded=True),
        FieldSpec("client.fcrdns", BOOL, C, _fcrdns, "a PTR name resolves back to the client IP", _ptr_lookup),
        FieldSpec("session.unrecognized", INT, C, lambda s: s.unrecognized,
                  "unknown commands the client sent so far"),
        FieldSpec("client.pregreet", BOOL, C, lambda s: s.pregreet,
                  "the client talked before the greeting ended (smtp.greet_wait on)"),
        FieldSpec("client.pregreet_text", STRING, C, lambda s: s.pregreet_text,
                  "what a pregreeting client sent (its first 64 characters)"),
        FieldSpec("client.pregreet_ms", INT, C, lambda s: s.pregreet_ms,
                  "milliseconds after the first greeting line that a pregreeting client began"),
        FieldSpec("client.pregreet_cached", BOOL, C, lambda s: s.pregreet_cached,
                  "the client passed the pregreet test within smtp.greet_pass_ttl, so it was not made to wait"),
        FieldSpec("client.pass_new", BOOL, C, lambda s: s.pass_new,
                  "the client passed the pregreet test just now, for the first time (postscreen's PASS NEW); "
                  "a ruleset can tell it to come back: tempfail 450 4.3.2 at RCPT"),
        FieldSpec("session.unauth_pipelining", BOOL, C, lambda s: s.unauth_pipelining,
                  "the client sent commands ahead where pipelining is not allowed (before EHLO, after DATA...)"),
        FieldSpec("session.bare_newline", BOOL, C, lambda s: s.bare_newline,
                  "a command of the client ended in a bare LF, not CRLF"),
        FieldSpec("helo", DOMAIN, H, lambda s: s.helo_lower, "the HELO/EHLO name", folded=True),
        FieldSpec("helo.literal", IP, H, _helo_literal,
                  "the address of an address-literal HELO ([192.0.2.1]), \"\" otherwise"),
        FieldSpec("helo.valid", BOOL, H, _helo_valid, "the HELO is a syntactically valid hostname or address literal"),
        FieldSpec("helo.fqdn", BOOL, H, _helo_fqdn, "the HELO is a fully qualified hostname (has a dot, not a literal)"),
        FieldSpec("helo.resolvable", STRING, H, _resolvable_of(_helo_resolvable_lookup),
                  "the HELO name has MX or A/AAAA records: yes, no, nullmx or failed (\"no\" for a non-FQDN)",
                  _helo_resolvable_lookup, ("yes", "no", "nullmx", "failed"), folded=True),
        FieldSpec("helo.addresses", LIST, H, _helo_addresses, "the A and AAAA addresses of the HELO name (DNS)",
                  _helo_addresses_lookup, folded=True),
        FieldSpec("helo.matches_client", BOOL, H, _helo_matches_client,
                  "the HELO name resolves to the client IP (or the HELO literal is the client IP)",
                  _helo_addresses_lookup),
        FieldSpec("esmtp", BOOL, H, lambda s: s.esmtp, "the client said EHLO (not HELO)"),
        FieldSpec("tls", BOOL, H, lambda s: s.tls, "the session is encrypted (STARTTLS)"),
        FieldSpec("auth", BOOL, M, lambda s: s.auth, "the client authenticated (SMTP AUTH)"),
        FieldSpec("auth.user", STRING, M, lambda s: s.auth_user, "the authenticated user name"),
        FieldSpec("sender", ADDRESS, M, lambda s: s.sender_lower, "MAIL FROM address (\"\" for <>)",
                  folded=True),
        FieldSpec("sender.local", STRING, M, lambda s: s.sender_local, "local part of the sender"),
        FieldSpec("sender.domain", DOMAIN, M, lambda s: s.sender_domain, "domain of the sender", folded=True),
        FieldSpec("sender.null", BOOL, M, lambda s: s.sender == "", "the sender is the null sender <>"),
        FieldSpec("sender.resolvable", STRING, M, _resolvable,
                  "sender domain has MX or A/AAAA: yes, no, nullmx or failed",
                  _resolvable_lookup, ("yes", "no", "nullmx", "failed"), folded=True),
        FieldSpec("mail.size", INT, M, lambda s: s.mail_size, "SIZE= declared at MAIL FROM (0 if none)"),
        FieldSpec("rcpt", ADDRESS, R, lambda s: s.rcpt_lower, "the recipient being decided", folded=True),
        FieldSpec("rcpt.local", STRING, R, lambda s: s.rcpt_local, "local part of the recipient"),
        FieldSpec("rcpt.domain", DOMAIN, R, lambda s: s.rcpt_domain, "domain of the recipient", folded=True),
        FieldSpec("rcpt.resolvable", STRING, R, _resolvable_of(_rcpt_resolvable_lookup),
                  "recipient domain has MX or A/AAAA: yes, no, nullmx or failed",
                  _rcpt_resolvable_lookup, ("yes", "no", "nullmx", "failed"), folded=True),
        FieldSpec("rcpt.verified", STRING, R, _verified,
                  "the MTA behind accepts the recipient (a callout, forward mode): yes, no or unknown",
                  _callout_key, ("yes", "no", "unknown"), folded=True),
        FieldSpec("greylist", STRING, R, lambda s: _grey(s).verdict,
                  "greylisting of (client.net, sender, rcpt): new, wait or pass (state store)",
                  choices=("new", "wait", "pass"), folded=True, lazy=True),
        FieldSpec("greylist.retry", INT, R, lambda s: _grey(s).retry,
                  "seconds until a greylisted triplet's retry passes", lazy=True),
        FieldSpec("rcpts", LIST, R, lambda s: s.rcpts, "recipients accepted so far in this message"),
        FieldSpec("rcpt.count", INT, R, lambda s: len(s.rcpts), "number of recipients accepted so far"),
        FieldSpec("rcpt.rejected", INT, R, lambda s: s.rcpt_rejected, "number of recipients refused so far"),
        FieldSpec("message.size", INT, D, lambda s: s.message_size, "size of the message in bytes"),
        # sender authentication (smtpfw.checks.content): asked before the hook's rules run
        FieldSpec("spf.helo", STRING, H, lambda s: _spf_of(s, _spf_helo_key),
                  "SPF of the HELO name (RFC 7208): pass, fail, softfail, neutral, none, temperror or permerror",
                  _spf_helo_key, SPF_RESULTS, folded=True),
        FieldSpec("spf", STRING, M, lambda s: _spf_of(s, _spf_key),
                  "SPF of the MAIL FROM identity (of the HELO name for the null sender <>): pass, fail, softfail, "
                  "neutral, none, temperror or permerror", _spf_key, SPF_RESULTS, folded=True),
        FieldSpec("dkim", STRING, D, lambda s: _dkim(s).result,
                  "DKIM (RFC 6376): pass when a signature verifies, else the first one's result (fail, neutral, "
                  "temperror, permerror); none when unsigned", _dkim_key, DKIM_RESULTS, folded=True),
        FieldSpec("dkim.domains", LIST, D, lambda s: _dkim(s).domains,
                  "the d= domains of the signatures that verify", _dkim_key),
        FieldSpec("arc", STRING, D, lambda s: _dkim(s).arc.result,
                  "the ARC chain (RFC 8617): pass, fail or none", _dkim_key, ("pass", "fail", "none"), folded=True),
        FieldSpec("dmarc", STRING, D, lambda s: _dmarc(s).result,
                  "DMARC (RFC 7489) of the From: domain: pass, fail, none, temperror or permerror", _dmarc_key,
                  ("pass", "fail", "none", "temperror", "permerror"), folded=True),
        FieldSpec("dmarc.policy", STRING, D, lambda s: _dmarc(s).policy,
                  "what the From: domain asks for failing mail: none, quarantine, reject ('' without a record)",
                  _dmarc_key, ("none", "quarantine", "reject", ""), folded=True),
        FieldSpec("dmarc.from", DOMAIN, D, lambda s: _dmarc(s).from_domain, "the From: domain DMARC evaluated",
                  _dmarc_key, folded=True),
        # the message's lines and structure
        FieldSpec("headers", LIST, D, _header_lines,
                  "every header field as one line, \"Name: value\", unfolded (Postfix header_checks); "
                  "live only: a replay has no message"),
        FieldSpec("body.lines", LIST, D, _body_lines,
                  f"the body's lines as sent, its first {BODY_LIMIT // 1024} KiB (Postfix body_checks); "
                  "live only: a replay has no message"),
        FieldSpec("attachment.names", LIST, D, lambda s: list(_mime(s).names),
                  "the file names the message's parts carry (recorded)", _mime_key),
        FieldSpec("attachment.types", LIST, D, lambda s: list(_mime(s).types),
                  "the content types of the message's parts, lower case (recorded)", _mime_key),
        # scanners: asked only when a rule reaches them (a scan costs)
        FieldSpec("virus", STRING, D, lambda s: _clamd(s).status,
                  "clamd's verdict: clean, infected, skipped (larger than scanners.max_bytes) or error",
                  choices=("clean", "infected", "skipped", "error"), folded=True),
        FieldSpec("virus.name", STRING, D, lambda s: _clamd(s).virus, "the virus clamd found ('' if none)"),
        FieldSpec("spam", STRING, D, lambda s: _spamd(s).status,
                  "spamd's verdict: spam, ham, skipped or error", choices=("spam", "ham", "skipped", "error"),
                  folded=True),
        FieldSpec("spam.score", INT, D, lambda s: round(_spamd(s).score or 0),
                  "spamd's score, rounded to a whole number (0 when not scanned)"),
        FieldSpec("spam.tests", LIST, D, lambda s: list(_spamd(s).tests), "the SpamAssassin rules that hit"),
    ]
}

HEADER_PREFIX = "header."
SCORE_PREFIX = "score."
TIME_FIELDS = ("time.hour", "time.weekday", "time.clock", "time.date")


@lru_cache(maxsize=1024)      # one spec (and one ``compared`` getter) per header name
def header_field(name: str) -> FieldSpec:
    key = name[len(HEADER_PREFIX):].lower()

    def first_value(s: SessionState) -> str:
        return s.headers.get(key, "")
    return FieldSpec(name, STRING, D, first_value, f"first value of the {key} header")


@lru_cache(maxsize=1024)
def score_field(name: str) -> FieldSpec:
    key = name[len(SCORE_PREFIX):]
    return FieldSpec(name, INT, C, lambda s: s.scores.get(key, 0), f"the total of score {key} so far")


def time_field(name: str, zone: tzinfo | None) -> FieldSpec:
    """A time field in ``zone`` (None: UTC) at the session's start, so a
    replay of a recorded session sees the time it was received."""
    def local(s: SessionState) -> datetime:
        return datetime.fromtimestamp(s.started, zone or timezone.utc)
    get: Callable[[SessionState], Any]
    if name == "time.hour":
        ftype, get, doc = INT, lambda s: local(s).hour, "hour of day the session began (0-23)"
    elif name == "time.weekday":
        ftype, get, doc = STRING, lambda s: WEEKDAYS[local(s).weekday()], "day of week: mon, tue, ... sun"
    elif name == "time.clock":
        ftype, get, doc = CLOCK, lambda s: local(s).strftime("%H:%M"), "time of day, \"HH:MM\""
    else:
        ftype, get, doc = DATE, lambda s: local(s).strftime("%Y-%m-%d"), "date, \"YYYY-MM-DD\""
    return FieldSpec(name, ftype, C, get, doc + " (option timezone, default UTC)",
                     choices=WEEKDAYS if name == "time.weekday" else (), folded=True)


def lookup_field(name: str, plugin_fields: dict[str, FieldSpec] | None = None,
                 zone: tzinfo | None = None) -> FieldSpec | None:
    """The spec for a field name, including header.*, score.*, time.* and plugin fields."""
    spec = FIELDS.get(name)
    if spec is not None:
        return spec
    if name.startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX):
        return header_field(name)
    if name.startswith(SCORE_PREFIX) and len(name) > len(SCORE_PREFIX):
        return score_field(name)
    if name in TIME_FIELDS:
        return time_field(name, zone)
    if plugin_fields:
        return plugin_fields.get(name)
    return None


# Placeholders allowed in reply and log text, beyond the field names.
LISTING_PLACEHOLDERS = ("dnsbl.zone", "dnsbl.code", "dnsbl.txt", "rhsbl.zone", "rhsbl.code", "rhsbl.txt")
EXTRA_PLACEHOLDERS = ("rule", "session") + LISTING_PLACEHOLDERS
