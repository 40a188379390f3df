"""A qpsmtpd config folder -> an smtpfw ruleset, with a report of what was done.

``import_qpsmtpd_config(config_dir)`` reads ``config_dir/plugins`` (one
plugin a line, with its arguments, in the order qpsmtpd runs them) and the
files those plugins read (badhelo, badmailfrom, badrcptto, rcpthosts,
morercpthosts, relayclients, norelayclients, dnsbl_zones, dnsbl_allow,
rhsbl_zones ...).  The result is the ruleset, the list files to write beside
it (copies under ``maps/``, with the lines smtpfw cannot load commented out)
and a report with a line for every plugin line and every file of the folder.

How qpsmtpd's plugins become rules
==================================

qpsmtpd runs the plugins of a hook in the order of config/plugins; the first
that answers OK or DENY decides the hook.  smtpfw's rules of a hook run in
order and the first terminal one decides, so each plugin becomes rules in
its hook (connect, helo, mail, rcpt, data) in the same order, and rcpt_ok's
OK is an ``accept``, as in qpsmtpd.  A plugin's ``reject 0`` (log only) is a
``monitor`` rule; ``reject naughty`` refuses through the naughty plugin,
whose ``reject data`` is ``option delay_reject = "data"``.  Relay clients
(``relayclients``, authenticated users) are immune to the checks, as
qpsmtpd's ``is_immune`` makes them.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
from dataclasses import dataclass, field

from smtpfw.importers.common import (
    TRUE,
    ImportResult,
    ReportLine,
    RulesetBuilder,
    SourceReportLine,
    Status,
    and_,
    or_,
    q,
    read_config,
)
from smtpfw.importers.postfix_conf import _zone_name
from smtpfw.lang.check import public_zone

__all__ = ["import_qpsmtpd_config", "parse_plugins"]


@dataclass
class Plugin:
    name: str            # as written (relay:0 ...)
    base: str            # without the :N instance suffix
    args: list[str]
    line: int
    text: str

    def opts(self) -> dict[str, str]:
        """`key value` pairs of the arguments (qpsmtpd's usual form)."""
        out: dict[str, str] = {}
        args = list(self.args)
        while len(args) >= 2:
            out[args[0].lower()] = args[1]
            args = args[2:]
        return out


def parse_plugins(text: str) -> list[Plugin]:
    out: list[Plugin] = []
    for number, raw in enumerate(text.split("\n"), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        try:
            words = shlex.split(s, comments=True)
        except ValueError:
            words = s.split()
        if not words:
            continue
        out.append(Plugin(words[0], words[0].split(":", 1)[0], words[1:], number, s))
    return out


# files qpsmtpd reads that are not about what smtpd accepts
_NOT_POLICY = {
    "IP": "the address tcpserver binds to: smtpfw's `listen` (config)",
    "loglevel": "qpsmtpd's log level: smtpfw's logging settings",
    "logging": "qpsmtpd's logging plugins: smtpfw logs one line per session (docs/recording.md)",
    "size_threshold": "when qpsmtpd spools a message to disk: smtpfw's own memory limits",
    "tls_before_auth": "smtpfw always offers AUTH only after STARTTLS",
    "tls_ciphers": "TLS settings: smtpfw's `tls` config",
    "flat_auth_pw": "AUTH users: smtpfw's `auth.users_file` (config; `smtpfw passwd`)",
    "smtpauth-checkpassword": "AUTH by checkpassword: smtpfw's `auth.users_file` (config)",
    "add_geoip_headers": "a GeoIP header setting: smtpfw adds no GeoIP headers",
    "log2sql": "logging to SQL: smtpfw records sessions as JSON lines (docs/recording.md)",
    "public_suffix_list": "the public suffix list (karma, dmarc): smtpfw's DMARC has its own",
    "karma_tlds": "karma's sender TLD weights: the karma plugin is not translated",
    "me": "the host name: smtpfw's `hostname` (config); rcpt_ok reads it (see there)",
    "SOURCE": "not a qpsmtpd file: where the files of this folder come from",
}


@dataclass
class _State:
    immune_connect: str = TRUE     # a condition that is true for clients qpsmtpd exempts (negated in rules)
    relay_lists: list[str] = field(default_factory=list)
    naughty: Plugin | None = None


class _Translator:
    def __init__(self, config_dir: str):
        self.dir = config_dir
        path = os.path.join(config_dir, "plugins")
        if not os.path.isdir(config_dir):
            raise NotADirectoryError(20, "not a folder (give qpsmtpd's config folder)", config_dir)
        text = read_config(path)
        self.plugins = parse_plugins(text)
        self.report: list[tuple[str, int, int, SourceReportLine]] = []
        self.seq = 0
        self.read_files: dict[str, list[str]] = {}       # file -> plugins that read it
        self.b = RulesetBuilder([
            f"# Imported from a qpsmtpd config folder ({os.path.basename(os.path.abspath(config_dir))}) by "
            "`smtpfw import qpsmtpd-config`.",
            "# The report lists every plugin of config/plugins and every file of the folder: what was done, or why "
            "not.",
            "# Each plugin's rules are in its hook, in the order of config/plugins; relay clients (relayclients,",
            "# authenticated users) are exempt from the checks, as qpsmtpd's is_immune makes them.",
        ])
        self.relay_ip: str | None = None     # the condition "a relay client by address"
        self.whitelist: str | None = None    # dns_whitelist_soft
        self.naughty = next((p for p in self.plugins if p.base == "naughty"), None)
        self.lists: dict[str, str] = {}

    # -- report -------------------------------------------------------------

    def note(self, file: str, parameter: str, original: str, status: Status, note: str, line: int = 0) -> None:
        self.seq += 1
        self.report.append((file, line, self.seq, SourceReportLine(parameter, original, status, note, line, file)))

    # -- files -----------------------------------------------------------------

    def lines(self, name: str, reader: str) -> list[tuple[int, str]] | None:
        """A config file's lines (number, text) without comments and blanks;
        None when it does not exist."""
        self.read_files.setdefault(name, []).append(reader)
        path = os.path.join(self.dir, name)
        if not os.path.isfile(path):
            return None
        out = []
        for number, raw in enumerate(read_config(path).split("\n"), 1):
            s = raw.strip()
            if s and not s.startswith("#"):
                out.append((number, s))
        return out

    def list_file(self, name: str, field: str, reader: str, entries: list[tuple[int, str]] | None = None,
                  base: str | None = None) -> tuple[str | None, list[str]]:
        """Copy a list file to maps/ (the lines smtpfw refuses for ``field``
        commented out) and declare it; (list name, notes).  ``entries``
        replaces the file's own lines."""
        key = (base or name) + "/" + field
        if key in self.lists:
            return self.lists[key], []
        src = entries if entries is not None else self.lines(name, reader)
        if not src:
            return None, []
        text = "".join(f"{e}\n" for _n, e in src)
        bad = _refused_lines(text, field)
        notes: list[str] = []
        out_lines = []
        for i, (number, entry) in enumerate(src, 1):
            if i in bad:
                out_lines.append(f"# smtpfw import: left out ({bad[i]}): {entry}")
                notes.append(f"{name} line {number} `{entry}` is left out: {bad[i]}")
            else:
                out_lines.append(entry)
        rel = self.b.add_file(base or name, f"# from qpsmtpd's config/{name}\n" + "\n".join(out_lines) + "\n")
        lname = self.b.fresh(base or name)
        self.b.declare(f"list {lname} = file {q(rel)}")
        self.lists[key] = lname
        return lname, notes

    # -- immunity ---------------------------------------------------------------

    def immune(self, hook: str) -> str:
        parts = []
        if self.relay_ip:
            parts.append(self.relay_ip)
        if hook in ("mail", "rcpt", "data"):
            parts.append("auth")
        if self.whitelist:
            parts.append(self.whitelist)
        return or_(parts) if parts else "\x00false"

    def not_immune(self, hook: str) -> list[str]:
        imm = self.immune(hook)
        if imm == "\x00false":
            return []
        return [f"not {imm}" if imm.startswith("(") or re.fullmatch(r"[\w.]+", imm) else f"not ({imm})"]

    # -- reject handling --------------------------------------------------------

    def refusal(self, p: Plugin, default_reject: str, default_type: str, code: str, enhanced: str,
                text: str) -> tuple[str, bool, list[str]]:
        """(action text, monitor?, notes) for a plugin's `reject` and
        `reject_type` arguments."""
        opts = p.opts()
        reject = opts.get("reject", default_reject).lower()
        rtype = opts.get("reject_type", default_type).lower()
        notes: list[str] = []
        monitor = False
        if reject in ("0", "no", "false"):
            monitor = True
            notes.append("reject 0: qpsmtpd only logs; a `monitor` rule logs what it would do")
        elif reject == "naughty":
            if self.naughty is None:
                monitor = True
                notes.append("reject naughty without the naughty plugin: nothing refuses; a `monitor` rule")
            else:
                notes.append("reject naughty: refused when the naughty plugin says (see naughty)")
                rtype = self.naughty.opts().get("reject_type", "disconnect").lower() if rtype == default_type \
                    else rtype
        if rtype in ("temp", "soft"):
            verb, code, enhanced = "tempfail", "450", "4" + enhanced[1:]
        elif rtype in ("disconnect", "temp_disconnect"):
            if reject == "naughty":
                verb = "reject" if rtype == "disconnect" else "tempfail"
                if verb == "tempfail":
                    code, enhanced = "450", "4" + enhanced[1:]
                notes.append(f"reject_type {rtype}: qpsmtpd drops the connection after refusing; a refusal held "
                             "until DATA keeps it open in smtpfw")
            else:
                verb, code, enhanced = "disconnect", "421", "4" + enhanced[1:]
                notes.append(f"reject_type {rtype}: `disconnect` (421 and close; qpsmtpd sends "
                             f"{'550' if rtype == 'disconnect' else '450'} and closes)")
        else:
            verb = "reject"
        return f"{verb} {code} {enhanced} {q(text)}", monitor, notes

    def zone(self, kind: str, domain: str, suffix: str = "") -> tuple[str, str]:
        """Declare a zone; (its name, a note when the list's documented
        return codes were added)."""
        z = self.b.fresh(_zone_name(domain) + suffix)
        known = public_zone(domain)
        if known is not None:
            self.b.declare(f"zone {z} = {kind} {q(domain)} codes [{known[1].codes}]")
            return z, (f"{domain}: only its documented return codes count ({known[1].codes}; qpsmtpd counts any "
                       "answer, also a list's error codes)")
        self.b.declare(f"zone {z} = {kind} {q(domain)}")
        return z, ""

    def emit(self, hook: str, rid: str, action: str, cond: str, monitor: bool) -> str:
        return self.b.rule(hook, rid, ("monitor " if monitor else "") + action, cond)

    # -- the plugins ---------------------------------------------------------------

    def run(self) -> ImportResult:
        # relay first: it sets relay_client at connect, which every later check reads
        for p in self.plugins:
            if p.base in ("relay", "check_relay"):
                self.relay(p, declare_only=True)
        for p in self.plugins:
            handler = getattr(self, "p_" + re.sub(r"\W", "_", p.base), None)
            if handler is None:
                status, note = _OTHER.get(p.base, (Status.NOT_UNDERSTOOD,
                                                   "not a plugin the importer knows: translate it by hand (a rule "
                                                   "or a Python plugin)"))
            else:
                status, note = handler(p)
            self.note("plugins", p.name, p.text, status, note, p.line)
        self.files_report()
        if not any(p.base in ("rcpt_ok", "check_relay") for p in self.plugins):
            self.b.comment("rcpt", "no rcpt_ok in config/plugins: qpsmtpd would accept no recipient (rcpt "
                                   "hook declined); smtpfw refuses relaying as its default ruleset does")
            self.b.rule("rcpt", "no-relay", 'reject 554 5.7.1 "Relaying denied"', "rcpt.domain not in localnames")
            self.note("plugins", "(translation)", "relay check", Status.APPROXIMATED,
                      "no rcpt_ok plugin: qpsmtpd denies every recipient (no plugin accepts); rule [no-relay] "
                      "accepts the local names only")
        order = sorted(self.report, key=lambda r: (r[0] != "plugins", r[0], r[1] or 10**9, r[2]))
        report: list[ReportLine] = [r for *_x, r in order]
        return ImportResult(self.b.render(), dict(sorted(self.b.files.items())), report)

    def files_report(self) -> None:
        names = sorted(os.listdir(self.dir))
        for name in names:
            path = os.path.join(self.dir, name)
            if name == "plugins":
                continue
            if os.path.isdir(path):
                self.note(name, "(folder)", name + "/", Status.NOT_APPLICABLE,
                          "a folder of plugin data (keys, scripts): nothing smtpfw reads", 0)
                continue
            readers = self.read_files.get(name)
            if readers:
                self.note(name, "(file)", name, Status.TRANSLATED, f"read for {', '.join(dict.fromkeys(readers))}",
                          0)
            elif name in _NOT_POLICY:
                self.note(name, "(file)", name, Status.NOT_APPLICABLE, _NOT_POLICY[name], 0)
            else:
                users = [p for p, files in _FILES_OF.items() if name in files]
                why = (f"read by {', '.join(users)}, which config/plugins does not load" if users
                       else "no plugin the importer translates reads it")
                self.note(name, "(file)", name, Status.NOT_TRANSLATED, why, 0)

    def relay(self, p: Plugin, declare_only: bool = False) -> tuple[Status, str]:
        if declare_only:
            notes: list[str] = []
            rc, n1 = self.list_file("relayclients", "client.ip", p.base)
            more = self.lines("morerelayclients", p.base)
            mr, n2 = self.list_file("morerelayclients", "client.ip", p.base,
                                    [(n, e.split()[0]) for n, e in more] if more else None)
            nr, n3 = self.list_file("norelayclients", "client.ip", p.base)
            ins = [f"client.ip in {x}" for x in (rc, mr) if x]
            self._relay_notes = n1 + n2 + n3
            if ins:
                cond = or_(ins)
                self.relay_ip = and_([cond, f"client.ip not in {nr}"]) if nr else cond
                if " or " in self.relay_ip or " and " in self.relay_ip:
                    self.relay_ip = f"({self.relay_ip})"
            return Status.TRANSLATED, ""
        where = self.relay_ip or "(no relayclients file: by AUTH only)"
        notes = self._relay_notes
        return (Status.APPROXIMATED if notes else Status.TRANSLATED), "; ".join([
            f"relay clients are {where} or authenticated (`auth`): every check's rules exempt them (qpsmtpd's "
            "is_immune) and rcpt_ok accepts their recipients", *notes])

    p_relay = relay
    p_check_relay = relay

    def p_hosts_allow(self, p: Plugin) -> tuple[Status, str]:
        rows = self.lines("hosts_allow", p.base)
        if not rows:
            return Status.NOT_TRANSLATED, ("limits connections per IP by qpsmtpd's command line (-m/--max-from-ip), "
                                           "which the config folder does not hold: write `limit conns = N concurrent "
                                           "by client.ip` and a connect rule on `limit.conns.exceeded`")
        return Status.NOT_TRANSLATED, ("config/hosts_allow (per-network connection rules): not translated; the "
                                       "connection limit is on qpsmtpd's command line (-m), see docs/state.md "
                                       "`concurrent`")

    def p_fcrdns(self, p: Plugin) -> tuple[Status, str]:
        action, monitor, notes = self.refusal(p, "0", "temp", "550", "5.7.1",
                                              "Your reverse DNS does not match your IP ({client.ip})")
        rid = self.emit("connect", "fcrdns", action, and_(["not client.fcrdns", *self.not_immune("connect")]),
                        monitor)
        return Status.APPROXIMATED, "; ".join([
            f"rule [{rid}]: `not client.fcrdns` (a PTR name that resolves back to the client); qpsmtpd also tells "
            "apart clients with no PTR and with a forged one", *notes])

    def p_earlytalker(self, p: Plugin) -> tuple[Status, str]:
        action, monitor, notes = self.refusal(p, "1", "perm", "554", "5.7.1",
                                              "Connecting host started transmitting before SMTP greeting")
        rid = self.emit("connect", "earlytalker", action, and_(["client.pregreet", *self.not_immune("connect")]),
                        monitor)
        return Status.APPROXIMATED, "; ".join([
            f"rule [{rid}]: `client.pregreet`, on when the config's smtp.greet_wait is above 0 (set it to "
            f"{p.opts().get('wait', '1')}s, earlytalker's wait); the refusal comes at the client's first command",
            *notes])

    def p_count_unrecognized_commands(self, p: Plugin) -> tuple[Status, str]:
        n = p.args[0] if p.args and p.args[0].isdigit() else "4"
        for hook in ("helo", "mail", "rcpt"):
            self.b.rule(hook, f"count_unrecognized_commands-{hook}",
                        'disconnect 421 4.7.0 "Too many unrecognized commands"', f"session.unrecognized >= {n}")
        return Status.APPROXIMATED, (f"rules [count_unrecognized_commands-helo/-mail/-rcpt]: disconnect once "
                                     f"session.unrecognized >= {n}, checked at the next HELO, MAIL or RCPT (qpsmtpd "
                                     "disconnects at the command itself; smtpfw's limits.max_unrecognized_commands "
                                     "in the config does too)")

    def p_dnsbl(self, p: Plugin) -> tuple[Status, str]:
        rows = self.lines("dnsbl_zones", p.base)
        if not rows:
            return Status.NOT_TRANSLATED, "config/dnsbl_zones is missing or empty: the plugin checks no list"
        allow, n_allow = self.list_file("dnsbl_allow", "client.ip", p.base)
        notes = list(n_allow)
        rids = []
        opts = p.opts()
        args = [a.lower() for a in p.args]
        default_reject = "1"
        if args and args[0] in ("0", "1") and len(args) % 2 == 1:
            default_reject = args[0]
        for _n, row in rows:
            zone, _, msg = row.partition(":")
            zone = zone.strip()
            z, zn = self.zone("dnsbl", zone)
            if zn:
                notes.append(zn)
            text = msg.strip() or f"Blocked by {zone}: {{dnsbl.txt}}"
            action, monitor, n = self.refusal(p, default_reject, "perm", "550", "5.7.1", text)
            conds = [f"client.ip listed in {z}", *self.not_immune("connect")]
            if allow:
                conds.append(f"client.ip not in {allow}")
            rids.append(self.emit("connect", f"dnsbl-{z}", action, and_(conds), monitor))
            notes += n
        if opts.get("reject", "").lower() == "naughty":
            notes.append("qpsmtpd lets mail to postmaster, abuse, mailer-daemon and root through; smtpfw's held "
                         "refusal does not tell recipients apart")
        return Status.APPROXIMATED if notes else Status.TRANSLATED, "; ".join(
            [f"rules [{', '.join(rids)}] at connect, one per zone of dnsbl_zones"
             + (" (dnsbl_allow exempt)" if allow else ""), *dict.fromkeys(notes)])

    def p_dns_whitelist_soft(self, p: Plugin) -> tuple[Status, str]:
        rows = self.lines("whitelist_zones", p.base)
        if not rows:
            return Status.NOT_TRANSLATED, "config/whitelist_zones is missing or empty: the plugin exempts no one"
        conds = []
        for _n, row in rows:
            zone = row.split()[0]
            z, _zn = self.zone("dnsbl", zone, "_wl")
            conds.append(f"client.ip listed in {z}")
        self.whitelist = or_(conds)
        return Status.TRANSLATED, "clients listed in whitelist_zones are exempt from the later checks"

    def p_rhsbl(self, p: Plugin) -> tuple[Status, str]:
        rows = self.lines("rhsbl_zones", p.base)
        if not rows:
            return Status.NOT_TRANSLATED, "config/rhsbl_zones is missing or empty: the plugin checks no list"
        rids, notes = [], []
        for _n, row in rows:
            zone = row.split()[0]
            z, zn = self.zone("rhsbl", zone)
            if zn:
                notes.append(zn)
            action, monitor, n = self.refusal(p, "1", "perm", "550", "5.7.1",
                                              f"Mail from {{sender.domain}} rejected because it is listed in {zone}")
            rids.append(self.emit("mail", f"rhsbl-{z}", action,
                                  and_(["not sender.null", f"sender.domain listed in {z}", *self.not_immune("mail")]),
                                  monitor))
            notes += n
        return Status.APPROXIMATED, "; ".join([
            f"rules [{', '.join(rids)}] at MAIL: the sender's domain (not the null sender); qpsmtpd's reply names "
            "the DNS answer", *dict.fromkeys(notes)])

    def badhelo_rules(self, p: Plugin, monitor: bool, action: str, notes: list[str]) -> list[str]:
        rows = self.lines("badhelo", p.base) or []
        plain = [(n, r) for n, r in rows if not re.search(r"[/^$*+!%?\\\[(|]", r)]
        patterns = [(n, r) for n, r in rows if (n, r) not in plain]
        rids = []
        if plain:
            lst, n = self.list_file("badhelo", "helo", p.base, plain)
            notes += n
            if lst:
                rids.append(self.emit("helo", "badhelo", action, and_([f"helo in {lst}",
                                                                       *self.not_immune("helo")]), monitor))
        for _n, pat in patterns:
            rids.append(self.emit("helo", "badhelo-pattern", action,
                                  and_([f"helo matches {q(pat)}", *self.not_immune("helo")]), monitor))
        return rids

    def p_helo(self, p: Plugin) -> tuple[Status, str]:
        opts = p.opts()
        policy = opts.get("policy", "lenient").lower()
        action, monitor, notes = self.refusal(p, "1", "disconnect", "550", "5.7.1", "Invalid HELO {helo}")
        imm = self.not_immune("helo")
        rids = self.badhelo_rules(p, monitor, action.replace("Invalid HELO {helo}", "Sorry, I don't believe that "
                                                             "you are {helo}"), notes)
        tests = [("invalid_localhost", 'helo = "localhost" and client.ip not in [127.0.0.1, "::1"]'),
                 ("is_forged_literal", 'helo.literal != "" and helo.literal != client.ip'),
                 ("is_plain_ip", r'helo matches "^\d{1,3}(\.\d{1,3}){3}$"')]
        if policy in ("rfc", "strict"):
            tests += [("is_not_fqdn", "not helo.fqdn and helo.literal = \"\""),
                      ("no_forward_dns", 'helo.literal = "" and helo.resolvable = "no"')]
        if policy == "strict":
            tests += [("no_reverse_dns", 'client.ptr != "found"'),
                      ("no_matching_dns", 'helo.literal = "" and not helo.matches_client')]
        for name, cond in tests:
            rids.append(self.emit("helo", f"helo-{name}", action, and_([cond, *imm]), monitor))
        return Status.APPROXIMATED, "; ".join([
            f"policy {policy}: rules [{', '.join(rids)}] at HELO (badhelo entries with regex characters are "
            "patterns); the tests are smtpfw's fields for qpsmtpd's (`helo.fqdn`, `helo.resolvable`, "
            "`helo.matches_client`, `client.ptr`), which differ in detail", *notes])

    p_check_spamhelo = p_helo

    def p_check_badhelo(self, p: Plugin) -> tuple[Status, str]:
        notes: list[str] = []
        rids = self.badhelo_rules(p, False, 'reject 550 5.7.1 "Sorry, I don\'t believe that you are {helo}"', notes)
        return Status.TRANSLATED, "; ".join([f"rules [{', '.join(rids)}]", *notes])

    def address_list_rules(self, p: Plugin, file: str, hook: str, field: str, default_text: str, code: str,
                           enhanced: str, default_reject: str, extra: list[str]) -> tuple[Status, str]:
        rows = self.lines(file, p.base)
        if not rows:
            return Status.TRANSLATED, f"config/{file} is missing or empty: the plugin refuses nothing"
        notes: list[str] = []
        rids: list[str] = []
        plain: list[tuple[int, str]] = []
        action_default, monitor, n = self.refusal(p, default_reject, "perm", code, enhanced, default_text)
        notes += n
        imm = self.not_immune(hook)
        for number, row in rows:
            bad, _, reason = row.partition(" ")
            bad, reason = bad.strip(), reason.strip()
            if re.search(r"[/^$*+!%?\\]", bad):
                action, _m, _n = self.refusal(p, default_reject, "perm", code, enhanced, reason or default_text)
                rids.append(self.emit(hook, f"{p.base}-pattern", action,
                                      and_([*extra, f"{field} matches {q(bad)}", *imm]), monitor))
                notes.append(f"{file} line {number} `{bad}` is a pattern (qpsmtpd reads entries with regex "
                             "characters as patterns)")
            elif "@" not in bad:
                notes.append(f"{file} line {number} `{bad}` has no @: qpsmtpd ignores it")
            elif reason:
                action, _m, _n = self.refusal(p, default_reject, "perm", code, enhanced, reason)
                rids.append(self.emit(hook, f"{p.base}-{bad.lstrip('@')}", action,
                                      and_([*extra, f"{field} in [{q(bad)}]", *imm]), monitor))
            else:
                plain.append((number, bad))
        if plain:
            lst, n2 = self.list_file(file, field, p.base, plain)
            notes += n2
            if lst:
                rids.append(self.emit(hook, p.base, action_default, and_([*extra, f"{field} in {lst}", *imm]),
                                      monitor))
        return (Status.APPROXIMATED if any("left out" in x or "naughty" in x or "reject 0" in x for x in notes)
                else Status.TRANSLATED), "; ".join([
            f"rules [{', '.join(rids)}] at {hook.upper() if hook != 'rcpt' else 'RCPT'}: exact addresses and "
            "@domain entries as a list, entries with a reason of their own and patterns as rules of their own",
            *notes])

    def p_badmailfrom(self, p: Plugin) -> tuple[Status, str]:
        return self.address_list_rules(p, "badmailfrom", "mail", "sender",
                                       "Your envelope sender is in my badmailfrom list", "550", "5.7.1", "1",
                                       ["not sender.null"])

    p_check_badmailfrom = p_badmailfrom

    def p_badrcptto(self, p: Plugin) -> tuple[Status, str]:
        return self.address_list_rules(p, "badrcptto", "rcpt", "rcpt", "mail to {rcpt} not accepted here", "550",
                                       "5.1.1", "1", [])

    p_check_badrcptto = p_badrcptto

    def p_badmailfromto(self, p: Plugin) -> tuple[Status, str]:
        rows = self.lines("badmailfromto", p.base)
        if not rows:
            return Status.TRANSLATED, "config/badmailfromto is missing or empty: the plugin refuses nothing"
        rids = []
        for _n, row in rows:
            parts = row.split()
            if len(parts) < 2:
                continue
            rids.append(self.b.rule("rcpt", "badmailfromto", 'reject 550 5.7.1 "mail to {rcpt} not accepted here"',
                                    and_([f"sender = {q(parts[0])}", f"rcpt = {q(parts[1])}",
                                          *self.not_immune("rcpt")])))
        return Status.TRANSLATED, f"rules [{', '.join(rids)}]: each sender/recipient pair"

    p_check_badmailfromto = p_badmailfromto

    def p_resolvable_fromhost(self, p: Plugin) -> tuple[Status, str]:
        action, monitor, notes = self.refusal(p, "1", "soft", "550", "5.1.8",
                                              "FQDN required in the envelope sender")
        imm = self.not_immune("mail")
        rid = self.emit("mail", "resolvable_fromhost", action,
                        and_(["not sender.null", 'sender.resolvable in ["no", "nullmx"]', *imm]), monitor)
        rid2 = self.emit("mail", "resolvable_fromhost-dns", 'tempfail 450 4.4.3 "Temporary failure resolving the '
                                                           'sender domain"',
                         and_(["not sender.null", 'sender.resolvable = "failed"', *imm]), monitor)
        self.lines("invalid_resolvable_fromhost", p.base)
        return Status.APPROXIMATED, "; ".join([
            f"rules [{rid}, {rid2}]: `sender.resolvable` (MX, else A/AAAA); qpsmtpd also refuses MX hosts in "
            "invalid_resolvable_fromhost's networks, which smtpfw does not look up", *notes])

    p_require_resolvable_fromhost = p_resolvable_fromhost

    def p_sender_permitted_from(self, p: Plugin) -> tuple[Status, str]:
        opts = p.opts()
        level = int(opts.get("reject", "0")) if opts.get("reject", "0").isdigit() else 0
        imm = self.not_immune("mail")
        rids = []
        if level >= 3:
            verb = "reject 550 5.7.23" if level >= 4 else "tempfail 450 4.7.23"
            rids.append(self.b.rule("mail", "spf-fail", f'{verb} "SPF - fail"', and_(['spf = "fail"', *imm])))
        if level >= 6:
            rids.append(self.b.rule("mail", "spf-softfail", 'reject 550 5.7.23 "SPF - softfail"',
                                    and_(['spf = "softfail"', *imm])))
        elif level >= 4:
            rids.append(self.b.rule("mail", "spf-softfail", 'tempfail 450 4.7.23 "SPF - softfail"',
                                    and_(['spf = "softfail"', *imm])))
        if level < 3:
            rids.append(self.b.rule("mail", "spf-fail", 'monitor reject 550 5.7.23 "SPF - fail"',
                                    and_(['spf = "fail"', *imm])))
            return Status.TRANSLATED, (f"reject {level}: qpsmtpd logs SPF results and refuses nothing: rule "
                                       f"[{rids[0]}] is a `monitor` rule")
        return Status.APPROXIMATED, (f"reject {level}: rules [{', '.join(rids)}] on `spf` (RFC 7208); qpsmtpd's "
                                     "levels also treat neutral and DNS errors, which are not translated")

    def p_rcpt_ok(self, p: Plugin) -> tuple[Status, str]:
        hosts, n1 = self.list_file("rcpthosts", "rcpt.domain", p.base)
        more = self.lines("morercpthosts", p.base)
        mh, n2 = self.list_file("morercpthosts", "rcpt.domain", p.base,
                                [(n, e.split()[0]) for n, e in more] if more else None)
        imm = self.immune("rcpt")
        rids = []
        if imm != "\x00false":
            rids.append(self.b.rule("rcpt", "rcpt_ok-relayclient", "accept", imm))
        ins = ["rcpt.domain in localnames"] + [f"rcpt.domain in {x}" for x in (hosts, mh) if x]
        rids.append(self.b.rule("rcpt", "rcpt_ok", "accept", or_(ins)))
        rids.append(self.b.rule("rcpt", "relaying-denied", 'reject 550 5.7.1 "Relaying denied"'))
        return (Status.APPROXIMATED if n1 or n2 else Status.TRANSLATED), "; ".join([
            f"rules [{', '.join(rids)}]: relay clients' recipients and those of rcpthosts (`.domain`: its "
            "subdomains), morercpthosts and this host (`me`: localnames) are accepted, the others refused; the "
            "later rcpt plugins do not run for an accepted recipient, as in qpsmtpd", *n1, *n2])

    def p_naughty(self, p: Plugin) -> tuple[Status, str]:
        stage = p.opts().get("reject", "rcpt").lower()
        option = {"data": '"data"', "data_post": '"data"', "rcpt": "yes"}.get(stage)
        if option is None:
            return Status.APPROXIMATED, (f"reject {stage}: the `reject naughty` plugins refuse at their own hook "
                                         "(smtpfw holds refusals until RCPT or DATA only)")
        self.b.options.append(f"option delay_reject = {option}")
        return Status.APPROXIMATED, (f"reject {stage}: `option delay_reject = {option}`: the refusals of the "
                                     "`reject naughty` plugins are held until "
                                     + ("DATA" if option != "yes" else "the first RCPT")
                                     + "; smtpfw holds every refusal at connect, HELO and MAIL, also of the plugins "
                                     "that refuse at once")

    def p_greylisting(self, p: Plugin) -> tuple[Status, str]:
        opts = p.opts()
        if opts.get("reject", "1") == "0":
            monitor = True
        else:
            monitor = False
        rid = self.emit("rcpt", "greylisting", 'tempfail 450 4.7.1 "This mail is temporarily denied"',
                        and_(['greylist != "pass"', *self.not_immune("rcpt")]), monitor)
        return Status.APPROXIMATED, (f"rule [{rid}]: smtpfw's greylisting (client /24, sender, recipient; delays in "
                                     "the config's state settings); p0f and the plugin's own timings are not "
                                     "translated")

    def p_headers(self, p: Plugin) -> tuple[Status, str]:
        opts = p.opts()
        action, monitor, notes = self.refusal(p, "1", "perm", "550", "5.6.0", "Required header missing")
        rids = []
        for h in opts.get("require", "From,Date").split(","):
            h = h.strip()
            if not re.fullmatch(r"[A-Za-z0-9-]+", h):
                continue
            rids.append(self.emit("data", f"headers-{h.lower()}", action.replace("Required header missing",
                                                                                f"We require a valid {h} header"),
                                  f"header.{h.lower()} = \"\"", monitor))
        notes.append("future/past (Date: ahead of or behind the clock) is not translated: smtpfw has no date "
                     "arithmetic on headers")
        return Status.APPROXIMATED, "; ".join([f"rules [{', '.join(rids)}] on data", *notes])

    def p_dkim(self, p: Plugin) -> tuple[Status, str]:
        action, monitor, notes = self.refusal(p, "1", "perm", "550", "5.7.20", "DKIM signature invalid")
        rid = self.emit("data", "dkim", action, 'dkim = "fail"', monitor)
        return Status.APPROXIMATED, "; ".join([f"rule [{rid}]: `dkim`; signing outgoing mail is not translated",
                                               *notes])

    def p_dmarc(self, p: Plugin) -> tuple[Status, str]:
        action, monitor, notes = self.refusal(p, "1", "perm", "550", "5.7.1", "DMARC policy of {dmarc.from}")
        rid = self.emit("data", "dmarc", action, 'dmarc = "fail" and dmarc.policy = "reject"', monitor)
        return Status.APPROXIMATED, "; ".join([f"rule [{rid}]: the From: domain's DMARC policy (reject); "
                                               "quarantine and reporting are not translated", *notes])

    def p_spamassassin(self, p: Plugin) -> tuple[Status, str]:
        opts = p.opts()
        thr = opts.get("reject") or opts.get("reject_threshold")
        if not thr or not re.fullmatch(r"\d+(\.\d+)?", thr):
            return Status.NOT_TRANSLATED, "no reject threshold: the plugin only adds headers, which smtpfw does not"
        n = round(float(thr))
        rid = self.b.rule("data", "spamassassin", 'reject 550 5.7.1 "spam score exceeded threshold"',
                          f"spam.score >= {n}")
        return Status.APPROXIMATED, (f"rule [{rid}]: spamd's score (rounded to a whole number) >= {n}; needs "
                                     "scanners.spamd in the config; munge_subject and the X-Spam headers are not "
                                     "translated")

    def p_virus_clamdscan(self, p: Plugin) -> tuple[Status, str]:
        rid = self.b.rule("data", "clamdscan", 'reject 552 5.7.1 "Virus found: {virus.name}"',
                          'virus = "infected"')
        return Status.APPROXIMATED, f"rule [{rid}]: clamd's verdict; needs scanners.clamd in the config"

    p_virus_clamav = p_virus_clamdscan


_OTHER: dict[str, tuple[Status, str]] = {
    "quit_fortune": (Status.NOT_APPLICABLE, "answers QUIT with a fortune cookie: no policy"),
    "dont_require_anglebrackets": (Status.NOT_APPLICABLE,
                                   "smtpfw's parser takes MAIL FROM:/RCPT TO: addresses without <> too"),
    "parse_addr_withhelo": (Status.NOT_TRANSLATED, "strict RFC 821 address parsing after HELO: not translated"),
    "tls": (Status.NOT_APPLICABLE, "STARTTLS: smtpfw's `tls` config (cert and key)"),
    "auth": (Status.NOT_APPLICABLE, "AUTH: smtpfw's `auth.users_file` (config)"),
    "authdeny": (Status.NOT_APPLICABLE, "refuses AUTH no other auth plugin accepted: smtpfw does so by itself"),
    "bogus_bounce": (Status.NOT_TRANSLATED, "bounces with several recipients or a Return-Path: not translated "
                                            "(`sender.null and rcpt.count > 1` comes close)"),
    "virus": (Status.NOT_TRANSLATED, "a virus scanner plugin smtpfw does not talk to (smtpfw asks clamd)"),
    "queue": (Status.NOT_APPLICABLE, "delivery: smtpfw's `--forward HOST:PORT` (smtp-forward) or Maildir mode"),
    "logging": (Status.NOT_APPLICABLE, "logging: smtpfw logs one line per session"),
    "karma": (Status.NOT_TRANSLATED, "karma keeps a history per client IP: smtpfw has counters (docs/state.md) but "
                                     "the import does not build karma's scoring"),
    "whitelist": (Status.NOT_TRANSLATED, "whitelist's hosts/senders/recipients files: not translated"),
    "ident": (Status.NOT_TRANSLATED, "p0f / GeoIP identification: smtpfw has no such fields"),
    "connection_time": (Status.NOT_APPLICABLE, "logs the session's duration: smtpfw's session log has duration_ms"),
    "uribl": (Status.NOT_TRANSLATED, "URI blocklists on the body: not translated (no URI extraction in rules)"),
    "loop": (Status.NOT_TRANSLATED, "Received: header count: not translated"),
    "http_config": (Status.NOT_APPLICABLE, "configuration over HTTP: smtpfw reads files"),
    "milter": (Status.NOT_TRANSLATED, "a milter client: smtpfw can be a milter, it does not call one"),
    "spamassassin": (Status.NOT_TRANSLATED, "no reject threshold"),
    "dspam": (Status.NOT_TRANSLATED, "dspam: smtpfw asks spamd and clamd only"),
    "domainkeys": (Status.NOT_TRANSLATED, "DomainKeys (obsolete): smtpfw checks DKIM"),
    "random_error": (Status.NOT_APPLICABLE, "a testing aid"),
    "noop_counter": (Status.NOT_TRANSLATED, "NOOP counting: not translated"),
    "loadcheck": (Status.NOT_TRANSLATED, "system load: smtpfw's limits (config)"),
    "content_log": (Status.NOT_APPLICABLE, "logs message content: smtpfw's recording"),
    "help": (Status.NOT_APPLICABLE, "HELP answers"),
    "user_config": (Status.NOT_TRANSLATED, "per-user config: not translated"),
    "rcpt_map": (Status.NOT_TRANSLATED, "recipient map: use a `map` and `apply` by hand"),
    "rcpt_regexp": (Status.NOT_TRANSLATED, "recipient regexps: use `rcpt matches` by hand"),
    "qmail_deliverable": (Status.NOT_TRANSLATED, "asks qmail-deliverabled: use `rcpt.verified` (forward mode)"),
    "stunnel": (Status.NOT_APPLICABLE, "stunnel's client address: smtpfw's PROXY protocol listeners"),
    "tls_cert": (Status.NOT_APPLICABLE, "a TLS certificate tool"),
}
def _other_key(base: str) -> str:
    return base.split("/", 1)[0]


_FILES_OF = {
    "hosts_allow": ["hosts_allow"], "relay": ["relayclients", "morerelayclients", "norelayclients"],
    "dnsbl": ["dnsbl_zones", "dnsbl_allow", "dnsbl_rejectmsg"], "rhsbl": ["rhsbl_zones"],
    "helo": ["badhelo"], "badmailfrom": ["badmailfrom"], "badrcptto": ["badrcptto"],
    "badmailfromto": ["badmailfromto"], "rcpt_ok": ["rcpthosts", "morercpthosts", "me"],
    "resolvable_fromhost": ["invalid_resolvable_fromhost"], "dns_whitelist_soft": ["whitelist_zones"],
    "karma": ["karma_tlds"], "auth/auth_flat_file": ["flat_auth_pw"],
}


def _refused_lines(text: str, field: str) -> dict[int, str]:
    """The lines of a list file smtpfw's loader refuses for ``field``
    (line number -> code and message): errors and duplicates, as the list
    loader reports them, so the copy holds only what smtpfw reads."""
    from smtpfw.checks.lists import build_matcher, read_list_file
    from smtpfw.diagnostics import Code
    from smtpfw.lang.fields import ADDRESS, DOMAIN, IP
    ftype = IP if field == "client.ip" else (DOMAIN if field in ("helo", "client.rdns") or field.endswith(".domain")
                                             else ADDRESS)
    with tempfile.TemporaryDirectory(prefix="smtpfw-import-") as d:
        path = os.path.join(d, "list")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        entries, diags = read_list_file(path, "list")
        if entries is not None:
            diags = diags + build_matcher(entries, ftype, within=False)[1]
    out: dict[int, str] = {}
    for diag in diags:
        if diag.span is None:
            continue
        if diag.level.value == "error" or diag.code == Code.W303_LIST_ENTRY_DUPLICATE:
            out.setdefault(diag.span.line, re.sub(r" \(first on line \d+\)", "", f"{diag.code} {diag.message}"))
    return out


def import_qpsmtpd_config(config_dir: str) -> ImportResult:
    """Translate the qpsmtpd config folder ``config_dir`` (its ``plugins``
    file and the files those plugins read).  The result's ``files`` are to
    be written beside the ruleset; ``report`` has a line for every plugin
    line and every file of the folder."""
    t = _Translator(config_dir)
    for p in t.plugins:
        if getattr(t, "p_" + re.sub(r"\W", "_", p.base), None) is None and p.base not in _OTHER:
            key = _other_key(p.base)
            if key in _OTHER:
                p.base = key
    return t.run()
