"""YAML -> frozen Config, one settings object per section of the file
(``cfg.dns`` is a DnsSettings).  Errors name the YAML path, the expected
type and, for a misspelt key, the key that was probably meant.

The schema below is the single list of settings; config/smtpfw.yaml documents
the same keys with their defaults (a test keeps them in step).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace
from pathlib import Path
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import yaml

from smtpfw.diagnostics import did_you_mean


class ConfigError(Exception):
    """One clear line for the operator; the CLI exits 2 with it."""


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    name: str
    # Load balancers this listener takes the PROXY protocol from (ip_network
    # objects); when set, every connection must start with a PROXY header
    # and come from one of them.
    proxy_from: tuple = ()
    kind: str = "smtp"                   # smtp | policy (Postfix policy delegation) | milter
    greet_wait: float | None = None      # this listener's pregreet wait (None: smtp.greet_wait; 0: no test)


@dataclass(frozen=True)
class ServerSettings:
    workers: int = 0                     # 0 = one per CPU
    shutdown_grace: float = 30.0
    reload_on_change: bool = False       # also reload when a rule or list file changes
    user: str = ""                       # after binding (port 25 needs root): run as this user ("" = stay)
    group: str = ""                      # ... and group ("" = the user's own)
    pid_file: str = ""                   # write the main process's pid here ("" = none)

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class DeliverySettings:
    mode: str = "maildir"
    maildir: str = "./var/maildir"
    forward_host: str = ""               # delivery.forward: HOST:PORT
    forward_port: int = 25
    timeout: float = 30.0
    pool_size: int = 8


@dataclass(frozen=True)
class LimitSettings:
    max_tarpitted: int = 50              # sessions slowed by `tarpit` at once, per worker; more are not slowed
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 1000
    max_connections_per_ip: int = 20
    max_unrecognized_commands: int = 10
    max_errors: int = 20
    max_junk_commands: int = 100          # HELO/EHLO/NOOP/RSET/VRFY/HELP per session
    max_transactions: int = 1000          # MAIL commands per session (Exim: smtp_accept_max_per_connection)
    per_ip_ipv4_prefix: int = 32          # the per-IP connection cap counts clients by network:
    per_ip_ipv6_prefix: int = 64          # one IPv6 /64 is one client (a host owns a whole /64)
    exempt_networks: tuple = ()           # ip_network objects exempt from per-IP caps and AUTH throttling
    message_memory: int = 256 * 1024 * 1024   # message bytes held at once by one worker; past it: 452 4.3.1
    idle_timeout: float = 300.0
    stress_threshold: float = 0.75        # under stress from this share of max_connections on
    stress_idle_timeout: float = 10.0     # idle timeout while under stress
    data_timeout: float = 600.0


@dataclass(frozen=True)
class DnsSettings:
    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 2.0
    session_budget: float = 10.0
    cache_size: int = 10000
    session_max_lookups: int = 100       # distinct lookups one session may start
    health_interval: float = 300.0       # seconds between DNS list health checks (0 = never)
    skip_unhealthy: bool = True          # an unhealthy list's lookups answer "not listed"
    pass_ttl: float = 0.0                # a client address no DNSBL listed is not asked again this long (0 = off)


@dataclass(frozen=True)
class CalloutSettings:
    timeout: float = 5.0                 # a session waits at most this for one recipient's answer
    positive_ttl: float = 3600.0         # "yes" answers are cached this long ...
    negative_ttl: float = 600.0          # ... "no" answers this long ("unknown" not at all)
    cache_size: int = 10000
    pool_size: int = 4                   # idle downstream connections kept for callouts


@dataclass(frozen=True)
class StateSettings:
    store: str = "./var/state.db"        # sqlite:PATH or a path (embedded), redis://..., redis+cluster://...
    timeout: float = 0.25                # seconds per store operation
    fail: str = "open"                   # store down: "open" (pass, logged) or "closed" (count as over / greylisted)
    failures: int = 3                    # consecutive failures that open the circuit breaker ...
    cooldown: float = 5.0                # ... for this long
    greylist_delay: float = 300.0        # postgrey --delay
    greylist_lifetime: float = 2 * 86400.0   # a pending triplet waits this long for its retry
    greylist_keep: float = 35 * 86400.0  # passed triplets and pass counts are kept this long
    greylist_allow_after: int = 5        # passes that auto-allowlist a client network (0 = never)


@dataclass(frozen=True)
class RecordingSettings:
    enabled: bool = False
    path: str = "./var/sessions"
    rotate: str = "daily"
    max_bytes: int = 100 * 1024 * 1024
    headers: tuple[str, ...] = ("subject", "from", "to", "message-id", "date")
    max_events: int = 1000               # events kept per session record; the rest are counted


@dataclass(frozen=True)
class SmtpSettings:
    banner: str = "ESMTP smtpfw"         # the greeting after the host name: 220 HOSTNAME BANNER
    greet_wait: float = 0.0              # pregreet test: "220-" first, this long, then "220 " (0 = off)
    stress_greet_wait: float = 2.0       # the wait while under stress (postscreen: 2 s instead of 6 s)
    greet_pass_ttl: float = 86400.0      # a client that passed skips the test this long (state store; 0 = never)


@dataclass(frozen=True)
class LoggingSettings:
    format: str = "kv"
    level: str = "info"


@dataclass(frozen=True)
class TlsSettings:
    cert: str = ""
    key: str = ""
    handshake_timeout: float = 30.0      # a STARTTLS handshake that takes longer ends the session
    session_tickets: int = 1             # TLS 1.3 session tickets after each handshake, for resumption (0 = none)


@dataclass(frozen=True)
class AuthSettings:
    users_file: str = ""                 # "" = AUTH not offered
    allow_plaintext: bool = False        # offer AUTH without STARTTLS (only for trusted links)
    max_failures: int = 10               # failed AUTH attempts per client network in failure_window ...
    failure_window: float = 600.0        # ... after which AUTH is refused (454) until the window passes


@dataclass(frozen=True)
class CanarySettings:
    rules: str = ""                      # a second ruleset judged on every live session, never replying ("" = none)


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""                     # HOST:PORT of the Prometheus endpoint ("" = off); keep it on loopback

    @property
    def address(self) -> tuple[str, int]:
        return _hostport(self.listen, "metrics.listen")


@dataclass(frozen=True)
class ScannerSettings:
    clamd: str = ""                      # clamd's socket: "unix:/run/clamav/clamd.ctl" or "host:port"; "" = none
    spamd: str = ""                      # spamd: "host:port" or "unix:/path"; "" = none
    spamd_user: str = ""                 # the User: spamd scans as ("" = spamd's own)
    timeout: float = 30.0                # a scan that takes longer is an error (the rules decide: virus = "error")
    max_bytes: int = 10 * 1024 * 1024    # larger messages are not sent (virus/spam = "skipped")


# The config file's sections, each read into its own settings object, so a
# component takes the section it needs (``Resolver`` the DnsSettings...).
SECTIONS: dict[str, type] = {
    "server": ServerSettings, "delivery": DeliverySettings, "limits": LimitSettings, "dns": DnsSettings,
    "callout": CalloutSettings, "state": StateSettings,
    "recording": RecordingSettings, "smtp": SmtpSettings, "logging": LoggingSettings, "tls": TlsSettings,
    "auth": AuthSettings, "scanners": ScannerSettings, "metrics": MetricsSettings, "canary": CanarySettings,
}
DEFAULT_LISTEN = (Listener("127.0.0.1", 2525, "127.0.0.1:2525"),)


@dataclass(frozen=True, init=False)
class Config:
    """Every setting, one section per component (``cfg.dns.timeout`` is
    ``dns.timeout`` in the file).

    The flat names of before the sections (``cfg.dns_timeout``,
    ``Config(max_recipients=5)``, ``replace(cfg, workers=1)``) still work,
    read and written through ``FLAT``, so callers move over one at a time."""

    listen: tuple[Listener, ...]
    hostname: str
    rules: str                           # "" = the shipped rules/default.rules
    server: ServerSettings
    delivery: DeliverySettings
    limits: LimitSettings
    dns: DnsSettings
    callout: CalloutSettings
    state: StateSettings
    recording: RecordingSettings
    smtp: SmtpSettings
    logging: LoggingSettings
    tls: TlsSettings
    auth: AuthSettings
    scanners: ScannerSettings
    metrics: MetricsSettings
    canary: CanarySettings
    source: str                          # the file it came from, for messages

    def __init__(self, listen: tuple[Listener, ...] = DEFAULT_LISTEN, hostname: str = "", rules: str = "",
                 source: str = "", **settings: Any) -> None:
        """Sections by name (``dns=DnsSettings(...)``), then flat names over them."""
        for name, value in (("listen", listen), ("hostname", hostname), ("rules", rules), ("source", source)):
            object.__setattr__(self, name, value)
        for section, kind in SECTIONS.items():
            object.__setattr__(self, section, settings.pop(section, None) or kind())
        changes: dict[str, dict[str, Any]] = {}
        for name, value in settings.items():
            if name not in FLAT:
                raise TypeError(f"Config() got an unexpected keyword argument {name!r}")
            section, key = FLAT[name]
            changes.setdefault(section, {})[key] = value
        for section, values in changes.items():
            object.__setattr__(self, section, replace(getattr(self, section), **values))

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            """The flat names, which are properties made from FLAT below."""

    @property
    def worker_count(self) -> int:
        return self.server.worker_count


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _hostport(value: str, where: str, default_port: int | None = None) -> tuple[str, int]:
    text = str(value).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":") or ("" if default_port is None else str(default_port))
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif default_port is not None and (":" not in text or _is_ipv6(text)):
        host, port_text = text, str(default_port)    # a bare IPv6 address has no port: it would be ambiguous
    else:
        raise ConfigError(f"{where}: expected HOST:PORT (IPv6 as [::1]:PORT), got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: port must be a number from 0 to 65535, got {value!r}")
    return host or "127.0.0.1", int(port_text)


def _num(kind):
    def conv(v, where):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and isinstance(v, float)):
            raise ConfigError(f"{where}: expected {'a whole number' if kind is int else 'a number'}, got {v!r}")
        if v < 0:
            raise ConfigError(f"{where}: must not be negative, got {v!r}")
        return kind(v)
    return conv


def _metrics_listen(v, where):
    text = _str(v, where)
    if text:
        _hostport(text, where)              # refused now, not when the endpoint starts
    return text


def _fraction(v, where):
    value = _num(float)(v, where)
    if not 0 < value <= 1:
        raise ConfigError(f"{where}: a share from 0 to 1 (0.75 = three quarters), got {v!r}")
    return value


def _str(v, where):
    if not isinstance(v, str):
        raise ConfigError(f"{where}: expected text, got {v!r}")
    return v


def _bool(v, where):
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def _choice(*choices):
    def conv(v, where):
        if v not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {v!r}")
        return v
    return conv


def _workers(v, where):
    if v == "auto":
        return 0
    return _num(int)(v, where)


def _size(v, where):
    if isinstance(v, str) and v[:-1].isdigit() and v[-1:].upper() in "KMG":
        return int(v[:-1]) * {"K": 1024, "M": 1024**2, "G": 1024**3}[v[-1].upper()]
    return _num(int)(v, where)


def _listen(v, where):
    items = v if isinstance(v, list) else [v]
    out = []
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        if isinstance(item, str):
            host, port = _hostport(item, w)
            out.append(Listener(host, port, f"{host}:{port}"))
        elif isinstance(item, dict):
            unknown = set(item) - {"address", "name", "proxy_from", "kind", "greet_wait"}
            if unknown:
                raise ConfigError(f"{w}: unknown key {sorted(unknown)[0]!r} "
                                  "(expected address, name, proxy_from, kind, greet_wait)")
            host, port = _hostport(item.get("address", ""), f"{w}.address")
            proxies = _networks(item["proxy_from"], f"{w}.proxy_from") if item.get("proxy_from") is not None else ()
            kind = _choice("smtp", "policy", "milter")(item.get("kind", "smtp"), f"{w}.kind")
            greet = _num(float)(item["greet_wait"], f"{w}.greet_wait") if item.get("greet_wait") is not None else None
            out.append(Listener(host, port, str(item.get("name") or f"{host}:{port}"), proxies, kind, greet))
        else:
            raise ConfigError(f"{w}: expected \"HOST:PORT\" or {{address: HOST:PORT, name: NAME, proxy_from: [...]}}")
    if not out:
        raise ConfigError(f"{where}: at least one listener is needed")
    return tuple(out)


def _nameservers(v, where):
    if not isinstance(v, list):
        raise ConfigError(f"{where}: expected a list of \"ADDRESS[:PORT]\"")
    return tuple(_hostport(x, f"{where}[{i}]", 53) for i, x in enumerate(v))


def _networks(v, where):
    if not isinstance(v, list):
        raise ConfigError(f"{where}: expected a list of addresses or networks (CIDR)")
    out = []
    for i, item in enumerate(v):
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{where}[{i}]: not an IP address or network: {item!r}") from None
    return tuple(out)


def _prefix(bits: int):
    def conv(v, where):
        n = _num(int)(v, where)
        if not 1 <= n <= bits:
            raise ConfigError(f"{where}: expected a prefix length from 1 to {bits}, got {v!r}")
        return n
    return conv


def _banner(v, where):
    """One line of printable text: a CR or LF would let the config forge
    further replies; a reply line holds 512 octets with the host name."""
    text = _str(v, where)
    if not text.strip() or not text.isprintable() or len(text.encode()) > 200:
        raise ConfigError(f"{where}: expected one line of printable text (no CR, LF or control "
                          f"characters, at most 200 octets), got {v!r}")
    return text


def _headers(v, where):
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}: expected a list of header names")
    return tuple(x.lower() for x in v)


# section -> key -> (the setting's flat name, converter).  In Config the key is
# a field of the section's settings ("" = Config's own fields).
SCHEMA: dict[str, dict[str, tuple[str, object]]] = {
    "": {"listen": ("listen", _listen), "hostname": ("hostname", _str), "rules": ("rules", _str)},
    "server": {"workers": ("workers", _workers), "shutdown_grace": ("shutdown_grace", _num(float)),
               "reload_on_change": ("reload_on_change", _bool), "user": ("server_user", _str),
               "group": ("server_group", _str), "pid_file": ("server_pid_file", _str)},
    "delivery": {
        "mode": ("delivery_mode", _choice("maildir", "forward")),
        "maildir": ("maildir", _str),
        "forward": ("forward", None),
        "timeout": ("forward_timeout", _num(float)),
        "pool_size": ("forward_pool_size", _num(int)),
    },
    "limits": {
        "max_tarpitted": ("max_tarpitted", _num(int)),
        "max_message_size": ("max_message_size", _size),
        "max_recipients": ("max_recipients", _num(int)),
        "max_connections": ("max_connections", _num(int)),
        "max_connections_per_ip": ("max_connections_per_ip", _num(int)),
        "max_unrecognized_commands": ("max_unrecognized_commands", _num(int)),
        "max_errors": ("max_errors", _num(int)),
        "max_junk_commands": ("max_junk_commands", _num(int)),
        "max_transactions": ("max_transactions", _num(int)),
        "per_ip_ipv4_prefix": ("per_ip_ipv4_prefix", _prefix(32)),
        "per_ip_ipv6_prefix": ("per_ip_ipv6_prefix", _prefix(128)),
        "exempt_networks": ("exempt_networks", _networks),
        "message_memory": ("message_memory", _size),
        "idle_timeout": ("idle_timeout", _num(float)),
        "stress_threshold": ("stress_threshold", _fraction),
        "stress_idle_timeout": ("stress_idle_timeout", _num(float)),
        "data_timeout": ("data_timeout", _num(float)),
    },
    "dns": {
        "nameservers": ("dns_nameservers", _nameservers),
        "timeout": ("dns_timeout", _num(float)),
        "session_budget": ("dns_session_budget", _num(float)),
        "cache_size": ("dns_cache_size", _num(int)),
        "session_max_lookups": ("dns_session_max_lookups", _num(int)),
        "health_interval": ("dns_health_interval", _num(float)),
        "skip_unhealthy": ("dns_skip_unhealthy", _bool),
        "pass_ttl": ("dns_pass_ttl", _num(float)),
    },
    "callout": {
        "timeout": ("callout_timeout", _num(float)),
        "positive_ttl": ("callout_positive_ttl", _num(float)),
        "negative_ttl": ("callout_negative_ttl", _num(float)),
        "cache_size": ("callout_cache_size", _num(int)),
        "pool_size": ("callout_pool_size", _num(int)),
    },
    "metrics": {"listen": ("metrics_listen", _metrics_listen)},
    "canary": {"rules": ("canary_rules", _str)},
    "scanners": {
        "clamd": ("scanners_clamd", _str),
        "spamd": ("scanners_spamd", _str),
        "spamd_user": ("scanners_spamd_user", _str),
        "timeout": ("scanners_timeout", _num(float)),
        "max_bytes": ("scanners_max_bytes", _size),
    },
    "state": {
        "store": ("state_store", _str),
        "timeout": ("state_timeout", _num(float)),
        "fail": ("state_fail", _choice("open", "closed")),
        "failures": ("state_failures", _num(int)),
        "cooldown": ("state_cooldown", _num(float)),
        "greylist_delay": ("greylist_delay", _num(float)),
        "greylist_lifetime": ("greylist_lifetime", _num(float)),
        "greylist_keep": ("greylist_keep", _num(float)),
        "greylist_allow_after": ("greylist_allow_after", _num(int)),
    },
    "recording": {
        "enabled": ("recording_enabled", _bool),
        "path": ("recording_path", _str),
        "rotate": ("recording_rotate", _choice("daily", "size")),
        "max_bytes": ("recording_max_bytes", _size),
        "headers": ("recording_headers", _headers),
        "max_events": ("recording_max_events", _num(int)),
    },
    "smtp": {"banner": ("smtp_banner", _banner), "greet_wait": ("smtp_greet_wait", _num(float)),
             "stress_greet_wait": ("smtp_stress_greet_wait", _num(float)),
             "greet_pass_ttl": ("smtp_greet_pass_ttl", _num(float))},
    "logging": {"format": ("log_format", _choice("kv", "json")),
                "level": ("log_level", _choice("debug", "info", "warning", "error"))},
    "tls": {"cert": ("tls_cert", _str), "key": ("tls_key", _str),
            "handshake_timeout": ("tls_handshake_timeout", _num(float)),
            "session_tickets": ("tls_session_tickets", _num(int))},
    "auth": {"users_file": ("auth_users_file", _str), "allow_plaintext": ("auth_allow_plaintext", _bool),
             "max_failures": ("auth_max_failures", _num(int)),
             "failure_window": ("auth_failure_window", _num(float))},
}


def load_config(path: str | os.PathLike | None) -> Config:
    """Read a config file (None = defaults only)."""
    if path is None:
        return Config()
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{where}: cannot read config: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}{pos}: invalid YAML: {problem}") from None
    return from_mapping(data or {}, where, base=os.path.dirname(os.path.abspath(where)))


# flat name -> (section, field): the names Config had before its sections
FLAT: dict[str, tuple[str, str]] = {
    **{flat: (section, key) for section, keys in SCHEMA.items() if section
       for key, (flat, _conv) in keys.items() if key != "forward"},
    "forward_host": ("delivery", "forward_host"), "forward_port": ("delivery", "forward_port"),
}
for _flat, (_section, _key) in FLAT.items():
    setattr(Config, _flat, property(attrgetter(f"{_section}.{_key}"), doc=f"{_section}.{_key}"))


def from_mapping(data, where: str = "config", base: str | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of settings")
    values: dict[str, dict[str, Any]] = {"": {"source": where}}
    for key, value in data.items():
        if key in SCHEMA and key != "":
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key}: expected a mapping of settings")
            for sub, subval in value.items():
                _set(values.setdefault(key, {}), SCHEMA[key], sub, subval, f"{where}: {key}.{sub}", f"{key}.")
        else:
            _set(values[""], SCHEMA[""], key, value, f"{where}: {key}", "")
    delivery = values.get("delivery", {})
    fwd = delivery.pop("forward", None)
    if fwd not in (None, ""):
        delivery["forward_host"], delivery["forward_port"] = _hostport(fwd, f"{where}: delivery.forward", 25)
    top = values.pop("")
    cfg = Config(**top, **{section: SECTIONS[section](**kw) for section, kw in values.items()})
    if base and cfg.rules and not os.path.isabs(cfg.rules):
        cfg = replace(cfg, rules=os.path.join(base, cfg.rules))
    if base and cfg.auth.users_file and not os.path.isabs(cfg.auth.users_file):
        cfg = replace(cfg, auth=replace(cfg.auth, users_file=os.path.join(base, cfg.auth.users_file)))
    if cfg.delivery.mode == "forward" and not cfg.delivery.forward_host:
        raise ConfigError(f"{where}: delivery.mode is forward but delivery.forward (HOST:PORT) is not set")
    return cfg


def _set(values, section, key, value, where, prefix):
    """values[key] = the converted value (the section's field is the key)."""
    if key not in section:
        known = [k for k in section] + ([k for k in SCHEMA if k] if not prefix else [])
        guess = did_you_mean(str(key), known)
        hint = f" (did you mean {prefix}{guess}?)" if guess else ""
        raise ConfigError(f"{where.rsplit(':', 1)[0]}: unknown setting {prefix}{key}{hint}")
    _flat, conv = section[key]
    if value is None:
        return
    values[key] = value if conv is None else conv(value, where)
