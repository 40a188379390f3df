"""The configuration file of a database or directory map, in Postfix's own
format (mysql_table(5), pgsql_table(5), sqlite_table(5), ldap_table(5)):
``name = value`` lines, ``#`` comments, a line that starts with whitespace
continues the one before.  A site's existing Postfix files work as they are
(mail-in-a-box's sqlite files, mailcow's and iRedMail's mysql/pgsql/ldap
ones); the parameters smtpfw adds (its cache, timeout and failure answer)
are ignored by Postfix, so one file can serve both.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpfw.diagnostics import Code, Diagnostic, Span, did_you_mean
from smtpfw.maps.base import logical_lines, read_map_text

KINDS = ("sqlite", "pgsql", "mysql", "ldap")

# smtpfw's own, every kind: (default, parse)
SMTPFW_PARAMS = ("timeout", "cache_ttl", "negative_cache_ttl", "cache_size", "fail", "pool_size")
_SQL = ("query", "result_format", "domain", "expansion_limit",
        "table", "select_field", "where_field", "additional_conditions")   # the last four: Postfix's pre-2.2 form
PARAMS: dict[str, tuple[str, ...]] = {
    "sqlite": ("dbpath",) + _SQL,
    "pgsql": ("hosts", "user", "password", "dbname") + _SQL,
    "mysql": ("hosts", "user", "password", "dbname") + _SQL,
    "ldap": ("server_host", "server_port", "search_base", "query_filter", "result_attribute", "result_format",
             "scope", "bind", "bind_dn", "bind_pw", "version", "domain", "size_limit", "expansion_limit"),
}
REQUIRED = {"sqlite": ("dbpath",), "pgsql": ("dbname",), "mysql": ("dbname",), "ldap": ("search_base",)}
# Postfix parameters smtpfw does not implement.  Refused rather than ignored:
# ignoring `start_tls = yes` would send the bind password in clear text.
UNSUPPORTED = {
    "sqlite": (),
    "pgsql": ("tls_cert_file", "tls_key_file", "tls_ca_file", "tls_ca_path", "tls_verify_cert", "tls_ciphers"),
    "mysql": ("option_file", "option_group", "require_result_set", "tls_cert_file", "tls_key_file", "tls_ca_file",
              "tls_ca_path", "tls_verify_cert", "tls_ciphers", "idle_interval", "retry_interval"),
    "ldap": ("start_tls", "tls_ca_cert_dir", "tls_ca_cert_file", "tls_cert", "tls_key", "tls_require_cert",
             "tls_random_file", "tls_cipher_suite", "sasl_mechs", "sasl_realm", "sasl_authz_id", "sasl_minssf",
             "special_result_attribute", "terminal_result_attribute", "leaf_result_attribute", "dereference",
             "chase_referrals", "cache", "cache_expiry", "cache_size", "recursion_limit"),
}
# ldap's `cache_size` is a Postfix 2.x parameter of the same name: smtpfw's
# wins (it is in SMTPFW_PARAMS, checked first).


@dataclass(frozen=True, slots=True)
class Settings:
    """What smtpfw adds to a map: the longest a lookup may take, how long
    answers are kept (found / no entry; errors never), how many, and what a
    rule sees when the store cannot answer: ``tempfail`` (Postfix's
    behaviour: 451 4.3.0 Temporary lookup failure) or ``open`` (as if the
    key had no entry)."""

    timeout: float = 2.0
    cache_ttl: float = 300.0
    negative_cache_ttl: float = 60.0
    cache_size: int = 10000
    fail: str = "tempfail"
    pool_size: int = 4


@dataclass(frozen=True, slots=True)
class TableConfig:
    kind: str
    path: str
    params: dict[str, str]
    spans: dict[str, Span]        # where each parameter is written
    settings: Settings

    def span(self, name: str) -> Span:
        return self.spans.get(name) or Span.point(self.path, 1, 1)


def _number(name: str, text: str, kind: type, low: float, high: float) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"`{name} = {text}` is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"`{name} = {text}` is out of range ({low:g} to {high:g})")
    return value


def _settings(params: dict[str, str], kind: str) -> Settings:
    d = Settings()
    timeout = params.get("timeout")
    return Settings(
        timeout=float(_number("timeout", timeout, float, 0.01, 60)) if timeout else d.timeout,
        cache_ttl=float(_number("cache_ttl", params["cache_ttl"], float, 0, 86400)) if "cache_ttl" in params else d.cache_ttl,
        negative_cache_ttl=(float(_number("negative_cache_ttl", params["negative_cache_ttl"], float, 0, 86400))
                            if "negative_cache_ttl" in params else d.negative_cache_ttl),
        cache_size=int(_number("cache_size", params["cache_size"], int, 0, 10_000_000)) if "cache_size" in params else d.cache_size,
        fail=_fail(params.get("fail", d.fail)),
        pool_size=int(_number("pool_size", params["pool_size"], int, 1, 64)) if "pool_size" in params else d.pool_size,
    )


def _fail(text: str) -> str:
    if text not in ("tempfail", "open"):
        raise ValueError(f"`fail = {text}`: write `fail = tempfail` (answer 451, as Postfix does) or `fail = open` "
                         "(as if the key had no entry)")
    return text


def read_config(path: str, shown: str, kind: str) -> tuple[TableConfig | None, list[Diagnostic]]:
    """Read a map's configuration file.  None (with diagnostics) when it
    cannot be read or cannot work (a required parameter missing, an
    unsupported one set, a bad number); an unknown parameter is W307."""
    text, diags = read_map_text(path, shown)
    if text is None:
        return None, [Diagnostic(d.code, d.message.replace("map file", f"{kind} map configuration", 1), d.span,
                                 help=d.help) for d in diags]
    lines, diags = logical_lines(text, shown)
    params: dict[str, str] = {}
    spans: dict[str, Span] = {}
    ok = True
    known = PARAMS[kind]
    for line in lines:
        name, eq, value = line.text.partition("=")
        name = name.strip()
        span = line.span(shown, 0, len(name) or 1)
        if not eq or not name or " " in name:
            diags.append(Diagnostic(Code.E306_TABLE_CONFIG_ERROR, f"`{line.text[:60]}` is not a `name = value` line",
                                    span, help="each setting is `name = value`, e.g. `query = SELECT ...`"))
            ok = False
            continue
        if name in UNSUPPORTED[kind] and name not in SMTPFW_PARAMS:
            diags.append(Diagnostic(Code.E306_TABLE_CONFIG_ERROR, f"`{name}` is a Postfix {kind} setting smtpfw "
                                    "does not support", span,
                                    help="remove it, or keep this map in Postfix; smtpfw refuses it rather than "
                                         "ignore it (a TLS or SASL setting ignored would weaken the connection)"))
            ok = False
            continue
        if name not in known and name not in SMTPFW_PARAMS:
            guess = did_you_mean(name, known + SMTPFW_PARAMS)
            diags.append(Diagnostic(Code.W307_TABLE_PARAMETER_UNKNOWN, f"unknown {kind} map setting `{name}`; "
                                    "it is ignored", span,
                                    help=f"did you mean `{guess}`?" if guess else
                                    f"{kind} maps take: {', '.join(known + SMTPFW_PARAMS)}"))
            continue
        params[name] = value.strip()
        spans[name] = span
    for name in REQUIRED[kind]:
        if name not in params:
            diags.append(Diagnostic(Code.E306_TABLE_CONFIG_ERROR, f"a {kind} map needs `{name} = ...`",
                                    Span.point(shown, 1, 1), help=_REQUIRED_HELP[name]))
            ok = False
    if kind != "ldap" and "query" not in params and not {"table", "select_field", "where_field"} <= params.keys():
        diags.append(Diagnostic(Code.E306_TABLE_CONFIG_ERROR, f"a {kind} map needs `query = ...`",
                                Span.point(shown, 1, 1),
                                help="e.g. query = SELECT 1 FROM users WHERE email = '%s'"))
        ok = False
    try:
        settings = _settings(params, kind)
    except ValueError as exc:
        bad = next((n for n in SMTPFW_PARAMS if n in params and f"`{n} =" in str(exc)), "")
        diags.append(Diagnostic(Code.E306_TABLE_CONFIG_ERROR, str(exc), spans.get(bad) or Span.point(shown, 1, 1)))
        return None, diags
    if not ok:
        return None, diags
    return TableConfig(kind, shown, params, spans, settings), diags


_REQUIRED_HELP = {
    "dbpath": "the SQLite database file, e.g. dbpath = /var/lib/mail/users.sqlite",
    "dbname": "the database to query, e.g. dbname = mail",
    "search_base": "where to search, e.g. search_base = dc=example, dc=org",
}
