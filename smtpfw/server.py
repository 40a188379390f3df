"""The serve loop: listeners, limits, reload, graceful shutdown, workers.

One ``Server`` per process holds what all its sessions share: the current
ruleset (swapped whole on reload; a session keeps the one it started with),
the DNS resolver and its cache, the delivery back end, the recorder, and
the connection counters behind the per-IP and total limits.

With ``workers > 1`` the parent binds the listening sockets once and forks
the workers, which all accept on them (uvicorn's model); the parent
forwards signals and replaces a worker that dies.  On SIGHUP the parent
compiles the rules once and, if they compile, forks fresh workers holding
them and tells the old ones to finish their sessions and exit (Postfix's
way): the workers' pages stay shared with the parent after a reload as at
the start, and the listening sockets, open in the parent, never close.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass

from smtpfw import metrics, paths, replies, service
from smtpfw.auth import AuthThrottle, Users
from smtpfw.checks import lists, packed
from smtpfw.checks.callout import CalloutSession, Verifier
from smtpfw.canary import Canary
from smtpfw.checks.content import ContentFacts, ContentSettings
from smtpfw.maps.tables.source import TableFacts
from smtpfw.state.passes import dnsbl_passes, greet_passes
from smtpfw.maps.tables.stores import close_stores
from smtpfw.checks.dns import DnsSession, Resolver
from smtpfw.checks.health import public_resolvers
from smtpfw.config import Config, ConfigError, Listener
from smtpfw.core.conversation import Limits
from smtpfw.delivery import ForwardDelivery, MaildirDelivery
from smtpfw.delivery.forward import check_downstream
from smtpfw.delivery.maildir import prepare_maildir
from smtpfw.diagnostics import Code, Diagnostic
from smtpfw.engine import Ruleset
from smtpfw.facts import Facts
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import Recorder
from smtpfw.state import Greylisting, Store, open_store
from smtpfw.state.facts import StateFacts

log = logging.getLogger("smtpfw.server")
LISTEN_BACKLOG = 1024          # connections the kernel queues for accept(): a burst of clients waits, not refused


def make_delivery(cfg: Config):
    if cfg.delivery_mode == "forward":
        return ForwardDelivery(cfg.forward_host, cfg.forward_port, timeout=cfg.forward_timeout,
                               pool_size=cfg.forward_pool_size)
    return MaildirDelivery(cfg.maildir)


@dataclass(frozen=True)
class Secrets:
    """What is read before the process gives up root: the TLS key and the
    AUTH users file are often readable by root alone."""

    tls_context: ssl.SSLContext | None
    users: Users | None


def load_secrets(cfg: Config) -> Secrets:
    return Secrets(_tls_context(cfg), Users.load(cfg.auth_users_file) if cfg.auth_users_file else None)


class Server:
    def __init__(self, config: Config, ruleset: Ruleset, rules_path: str,
                 loop: asyncio.AbstractEventLoop | None = None, secrets: Secrets | None = None):
        self.config = config
        self._client_keys: dict[str, str | None] = {}   # client address -> its limit key (the config is fixed)
        self._stress_at = config.stress_threshold * config.max_connections
        self.session_limits = Limits.from_config(config)     # what every SMTP session may do
        self.ruleset = ruleset
        self.rules_path = rules_path
        self.loop = loop or asyncio.get_event_loop()
        self.hostname = config.hostname or socket.getfqdn()
        secrets = secrets or load_secrets(config)
        self.tls_context = secrets.tls_context
        self.resolver = Resolver(list(config.dns_nameservers) or None, timeout=config.dns_timeout,
                                 cache_size=config.dns_cache_size)
        self.resolver.health.skip_unhealthy = config.dns_skip_unhealthy
        self.verifier = (Verifier(config.forward_host, config.forward_port, timeout=config.callout_timeout,
                                  helo=self.hostname, positive_ttl=config.callout_positive_ttl,
                                  negative_ttl=config.callout_negative_ttl, cache_size=config.callout_cache_size,
                                  pool_size=config.callout_pool_size)
                         if config.delivery_mode == "forward" else None)
        sc = config.scanners
        self.content_settings = ContentSettings(tuple(config.dns_nameservers), config.dns_session_budget,
                                                sc.clamd, sc.spamd, sc.spamd_user, sc.timeout, sc.max_bytes)
        self.canary = Canary(config.canary.rules) if config.canary.rules else None
        self.health_task: asyncio.Task | None = None
        self.store: Store | None = None           # opened when a ruleset tests limits or greylisting
        self._open_store(ruleset)
        self.greet_passes = (greet_passes(self.store, config.smtp_greet_pass_ttl, fail_open=config.state.fail == "open")
                             if self.greet_pass_cache and self.store is not None else None)
        if config.dns_pass_ttl > 0 and self.store is not None:
            self.resolver.passes = dnsbl_passes(self.store, config.dns_pass_ttl)
        self.delivery = make_delivery(config)
        self.users = secrets.users
        self.recorder = (Recorder(config.recording_path, config.recording_rotate, config.recording_max_bytes)
                         if config.recording_enabled else None)
        self.sessions: set = set()
        self.tarpitted: set = set()            # sessions whose replies wait (`tarpit`), at most limits.max_tarpitted
        self.connections = 0
        self.per_ip: dict[str, int] = {}       # client network key -> open connections
        self.message_bytes = 0                 # message bytes held by all sessions (limits.message_memory)
        self.auth_throttle = AuthThrottle(config.auth_max_failures, config.auth_failure_window)
        self.listeners: list[asyncio.AbstractServer] = []
        self.accepting = True
        self.reloads = 0

    def session_facts(self) -> Facts:
        """A session's fact sources: its DNS (under the session budget) and
        its recipient callouts."""
        cfg = self.config
        sources: dict = {
            "dns": DnsSession(self.resolver, cfg.dns_session_budget, cfg.dns_session_max_lookups),
            "callout": CalloutSession(self.verifier, "no downstream to ask (delivery.mode is maildir)"),
        }
        if self.store is not None:
            sources["state"] = StateFacts(self.store, fail=cfg.state.fail)
        if self.ruleset.tables:
            sources["map"] = TableFacts(self.ruleset.tables)
        content = ContentFacts(self.content_settings)
        for provider in ("spf", "dkim", "dmarc", "mime", "scan"):
            sources[provider] = content
        return Facts(sources)

    @property
    def greet_pass_cache(self) -> bool:
        """Clients that passed the pregreet test are remembered (in the state store)."""
        return _greet_pass_cache(self.config)

    def _open_store(self, ruleset: Ruleset) -> None:
        """The state store, the first time a ruleset needs one (limits,
        greylisting) or a pass cache (pregreet, DNSBL) does; it stays open across reloads."""
        if self.store is not None or not _needs_store(self.config, ruleset):
            return
        self.store = _open_configured_store(self.config)
        log.info("%s: state store %s (fail %s)", _role(), self.config.state.store, self.config.state.fail)

    # ---- limits -------------------------------------------------------------

    def client_key(self, ip: str) -> str | None:
        """The key per-client limits count by: the client's /32 or /64 (by
        default), or None for an exempt network (Postfix exempts $mynetworks
        from its client limits: a site's own relays are not one abusive host).
        Remembered per address (clients come back; parsing is most of the cost)."""
        keys = self._client_keys
        try:
            return keys[ip]
        except KeyError:
            if len(keys) >= _CLIENT_KEYS:
                keys.clear()
            key = keys[ip] = client_network(ip, self.config)
            return key

    def admit(self, key: str | None) -> str | None:
        """Count a new connection, or say why it is refused (421)."""
        if not self.accepting:
            return replies.SHUTTING_DOWN
        if self.connections >= self.config.max_connections:
            log.warning("connection from %s refused: %d connections open", key, self.connections)
            return replies.TOO_MANY_CONNECTIONS
        if key is not None and self.per_ip.get(key, 0) >= self.config.max_connections_per_ip:
            log.warning("connection from %s refused: per-IP limit %d", key, self.config.max_connections_per_ip)
            return replies.TOO_MANY_FROM_IP
        self.connections += 1
        if key is not None:
            self.per_ip[key] = self.per_ip.get(key, 0) + 1
        return None

    @property
    def under_stress(self) -> bool:
        """Most connection slots are taken: idle clients get a short timeout
        (Postfix's stress mode), so slow or idle clients cannot hold them."""
        return self.connections >= self._stress_at

    def may_tarpit(self, session) -> bool:
        """Whether ``session``'s replies may wait: a tarpit slows bots, but
        only so many at once, so it cannot hold all of our own connections."""
        if session in self.tarpitted:
            return True
        if len(self.tarpitted) >= self.config.limits.max_tarpitted:
            return False
        self.tarpitted.add(session)
        return True

    def release(self, key: str | None) -> None:
        self.connections -= 1
        if key is None:
            return
        left = self.per_ip.get(key, 1) - 1
        if left <= 0:
            self.per_ip.pop(key, None)
        else:
            self.per_ip[key] = left

    def reserve_message(self, size: int) -> bool:
        """Take ``size`` bytes of the worker's message memory, if there is room.
        Sessions hold messages whole; without a shared budget 1,000 sessions
        of 10 MB each could ask one worker for 10 GB."""
        if self.message_bytes + size > self.config.message_memory:
            return False
        self.message_bytes += size
        return True

    def free_message(self, size: int) -> None:
        self.message_bytes -= size

    # ---- lifecycle ----------------------------------------------------------

    def protocol_factory(self, listener: Listener):
        """The front end a listener speaks: SMTP, Postfix's policy protocol, milter."""
        if listener.kind == "milter":
            from smtpfw.protocol.milter import MilterConnection

            return lambda: MilterConnection(self, listener)
        if listener.kind == "policy":
            from smtpfw.protocol.policy import PolicyConnection

            return lambda: PolicyConnection(self, listener)
        from smtpfw.protocol.smtp import FirewallSMTP

        return lambda: FirewallSMTP(self, listener)

    async def start(self, sockets: dict[Listener, socket.socket] | None = None) -> None:
        for listener in self.config.listen:
            factory = self.protocol_factory(listener)
            if sockets and listener in sockets:
                # the socket listens with LISTEN_BACKLOG already; without backlog= here the loop
                # calls listen() again with its default of 100, and a burst of clients is refused
                srv = await self.loop.create_server(factory, sock=sockets[listener], backlog=LISTEN_BACKLOG)
            else:
                srv = await self.loop.create_server(factory, listener.host, listener.port,
                                                    reuse_address=True, backlog=LISTEN_BACKLOG)
            self.listeners.append(srv)
        if self.config.dns_health_interval > 0:
            self.health_task = self.loop.create_task(self._check_dns_lists())

    @property
    def ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.listeners]

    def reload(self) -> list[Diagnostic] | None:
        """Recompile the rules; keep the running ones if that fails."""
        ruleset, diags = compile_ruleset(self.rules_path)
        if ruleset is None:
            log_refused_reload(self.rules_path, self.ruleset.version, diags)
            return diags
        try:
            self._open_store(ruleset)
        except Exception as err:  # noqa: BLE001 -- a store that cannot open keeps the running rules
            diags = _store_refusal(self.config.state.store, err)
            log_refused_reload(self.rules_path, self.ruleset.version, diags)
            return diags
        self.ruleset = ruleset
        self.reloads += 1
        service.release_memory()
        log.info("%s: rules reloaded from %s: version %s", _role(), self.rules_path, ruleset.version)
        if self.canary is not None:
            self.canary.load()
        return None

    async def watch(self, interval: float = 1.0) -> None:
        """Reload when a rule or list file changes (server.reload_on_change),
        once it has stopped changing for ``interval``: a file caught
        half-written may well compile (an empty or cut-off rules file is a
        valid ruleset that accepts every recipient: an open relay), so a
        change is loaded only when the writer is done.  A file that fails to
        compile is retried on the next change; the running ruleset stays."""
        def stamp():
            out = []
            for path in self.ruleset.files:
                try:
                    st = os.stat(path)
                    out.append((path, st.st_mtime_ns, st.st_size))
                except OSError:
                    out.append((path, None, None))
            return out

        seen = stamp()
        while self.accepting:
            await asyncio.sleep(interval)
            now = stamp()
            if now == seen:
                continue
            while self.accepting:
                await asyncio.sleep(interval)
                later = stamp()
                if later == now:
                    break
                now = later
            self.reload()
            seen = now

    async def _check_dns_lists(self) -> None:
        """Health-check the DNS lists the current ruleset uses, now and every
        dns.health_interval (checks/health.py)."""
        while self.accepting:
            try:
                await self.resolver.health.check(self.resolver, self.ruleset.zones)
            except Exception:  # noqa: BLE001 - a health check must never take the server down
                log.exception("dns list health check failed")
            await asyncio.sleep(self.config.dns_health_interval)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; let sessions finish for ``grace`` s; then 421 them."""
        grace = self.config.shutdown_grace if grace is None else grace
        self.accepting = False
        if self.health_task is not None:
            self.health_task.cancel()
        for srv in self.listeners:
            srv.close()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proto in list(self.sessions):
            await proto.shutdown()
        for srv in self.listeners:
            try:
                await asyncio.wait_for(srv.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
        await self.delivery.close()
        if self.verifier is not None:
            self.verifier.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.store is not None:
            await self.store.close()
        await close_stores()
        if self.canary is not None:
            self.canary.close()


def _greet_pass_cache(cfg: Config) -> bool:
    waits = [cfg.smtp_greet_wait] + [l.greet_wait for l in cfg.listen if l.greet_wait is not None]
    return max(waits) > 0 and cfg.smtp_greet_pass_ttl > 0


def _needs_store(cfg: Config, ruleset: Ruleset) -> bool:
    """A server running ``ruleset`` opens the state store."""
    return ruleset.stateful or _greet_pass_cache(cfg) or cfg.dns_pass_ttl > 0


def _open_configured_store(cfg: Config) -> Store:
    s = cfg.state
    return open_store(s.store, timeout=s.timeout, failures=s.failures, cooldown=s.cooldown,
                      greylisting=Greylisting(s.greylist_delay, s.greylist_lifetime, s.greylist_keep,
                                              s.greylist_allow_after))


def _store_refusal(store: str, err: object) -> list[Diagnostic]:
    return [Diagnostic(Code.E001_IO_ERROR, f"cannot open the state store {store} the new rules need: {err}", None,
                       help="check state.store in the config (a writable path, or redis://...)")]


_CLIENT_KEYS = 65536    # client addresses whose limit keys are remembered


def client_network(ip: str, cfg: Config) -> str | None:
    """``ip``'s network at the configured per-client prefix, as text; None
    when it lies in an exempt network."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if any(addr in net for net in cfg.exempt_networks):
        return None
    prefix = cfg.per_ip_ipv4_prefix if addr.version == 4 else cfg.per_ip_ipv6_prefix
    if prefix >= addr.max_prefixlen:
        return str(addr)
    return str(ipaddress.ip_network((addr, prefix), strict=False))


def _tls_context(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"tls.cert/tls.key: cannot load {cfg.tls_cert}"
                          f"{' / ' + cfg.tls_key if cfg.tls_key else ''}: {getattr(err, 'strerror', None) or err}") from None
    # One TLS 1.3 ticket, not OpenSSL's two: each costs a ticket encryption
    # and a record after every full handshake, and one is enough to resume
    # (docs/performance.md, workload d).  0 turns resumption off.
    ctx.num_tickets = cfg.tls_session_tickets
    ctx.options |= ssl.OP_NO_RENEGOTIATION    # TLS 1.2: no renegotiation (OpenSSL 3 refuses a client's already)
    return ctx


def preflight(cfg: Config) -> None:
    """Fail before forking on what every worker would fail on: one clear
    line (ConfigError) instead of a traceback per worker, or a server that
    answers every message 451.  Runs as the user the workers run as (after
    server.user), so the folders are ones they can write.  A downstream
    that cannot be reached only gets a warning: the MTA may well come up
    after smtpfw."""
    if cfg.recording_enabled:
        _usable_folder("recording.path", cfg.recording_path, paths.writable_folder)
    if cfg.delivery_mode == "maildir":
        _usable_folder("delivery.maildir", cfg.maildir, prepare_maildir)
    else:
        problem = check_downstream(cfg.forward_host, cfg.forward_port, min(cfg.forward_timeout, 5.0))
        if problem:
            log.warning("forward to %s: %s; starting anyway (mail is answered 451 until it is reachable)",
                        _address(cfg.forward_host, cfg.forward_port), problem)


def _usable_folder(key: str, path: str, prepare) -> None:
    try:
        prepare(path)
    except OSError as err:
        raise ConfigError(f"{key}: cannot use {os.path.abspath(path)}: {err.strerror or err}") from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Which process logs: "server" (one process), "supervisor" or "worker"; with
# several workers a line must say which of them wrote it.
_ROLE = ["server"]


def _role() -> str:
    return f"{_ROLE[0]} {os.getpid()}"


def log_refused_reload(rules_path: str, keeping: str, diags: list[Diagnostic]) -> None:
    """One line per refused reload, naming the process and every error."""
    errors = "; ".join(f"{d.span or rules_path} {d.code}: {d.message}" for d in diags if d.level.value == "error")
    log.error("%s: reload refused, keeping ruleset %s: %s", _role(), keeping, errors or "no ruleset")


# ---- running it -------------------------------------------------------------

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# supervisor -> a worker after a reload: the new workers accept now; finish
# your sessions and exit
RETIRE = signal.SIGUSR2
# how long a replaced worker waits for its sessions to end before stopping
# them as SIGTERM does (each SMTP command has its own timeout; a policy or
# milter connection lasts as long as the MTA keeps it)
RETIRE_WAIT = 3600.0


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_worker(cfg: Config, ruleset: Ruleset, rules_path: str,
                      sockets: dict | None, ready=None, secrets: Secrets | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = Server(cfg, ruleset, rules_path, loop, secrets)
    del ruleset                 # the server's alone: a reload in this process lets it go
    await server.start(sockets)
    watcher = asyncio.ensure_future(server.watch()) if cfg.reload_on_change else None
    stop = asyncio.Event()
    retire = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reloading(server.reload) if ready is _NOTIFY else server.reload)
    if ready is not _NOTIFY:            # a supervisor's worker: replaced after a reload
        loop.add_signal_handler(RETIRE, retire.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS + (RETIRE,))    # held since start: delivered now
    if ready is _NOTIFY:
        service.notify("READY=1")
    elif ready is not None:
        ready(server)
    either = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(retire.wait())]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if watcher is not None:
        watcher.cancel()
    if not stop.is_set():
        await _retire(server, stop)
    for waiter in either:
        waiter.cancel()
    if ready is _NOTIFY:
        service.notify("STOPPING=1")
    log.info("shutting down: %d sessions in flight, grace %.0fs", len(server.sessions), cfg.shutdown_grace)
    await server.stop()


async def _retire(server: Server, stop: asyncio.Event) -> None:
    """A worker whose rules a reload replaced: stop accepting (the new
    workers accept on the same sockets, which stay open in the supervisor),
    let every session end on its own, then stop.  A stop (SIGTERM) or
    RETIRE_WAIT without the sessions ending leaves the rest to ``stop``'s
    grace and its 421."""
    for srv in server.listeners:
        srv.close()
    # A connection that carries many sessions (Postfix's policy client keeps
    # one open for up to max_ttl) ends at its next idle moment, so the MTA
    # reconnects to a new worker instead of asking the old rules for minutes.
    for conn in list(server.sessions):
        retire = getattr(conn, "retire", None)
        if retire is not None:
            retire()
    # A connection the loop has taken from the socket but not yet started
    # (its protocol's connection_made) is served as any other: ``accepting``
    # stays true until ``stop`` (it would answer 421); a moment for those to
    # start and count in ``sessions``.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), 0.2)
    log.info("%s: replaced by workers with the reloaded rules; not accepting, %d session(s) to finish",
             _role(), len(server.sessions))
    deadline = time.monotonic() + max(RETIRE_WAIT, server.config.shutdown_grace)
    while server.sessions and not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


def _warn_public_resolvers(cfg: Config, ruleset: Ruleset) -> None:
    """DNS lists refuse public resolvers: say so before the refusals start."""
    if not ruleset.zones:
        return
    servers = [host for host, _port in cfg.dns_nameservers] or Resolver(None).nameservers
    public = public_resolvers(servers)
    if public:
        log.warning("dns: %s %s a public resolver; the big DNS lists (Spamhaus, SURBL, URIBL...) refuse "
                    "those or answer 127.255.255.x, so their lookups will fail: use a resolver of your own "
                    "(dns.nameservers)", ", ".join(public), "is" if len(public) == 1 else "are")


def bind_sockets(cfg: Config) -> dict[Listener, socket.socket]:
    """Listening sockets for every listener; ConfigError naming the address
    that cannot be bound (the others are closed again)."""
    out = {}
    try:
        for listener in cfg.listen:
            out[listener] = _bind(listener)
    except ConfigError:
        for sock in out.values():
            sock.close()
        raise
    return out


def _bind(listener: Listener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise ConfigError(f"cannot listen on {_address(listener.host, listener.port)}: {err.strerror or err}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {_address(listener.host, listener.port)}: {err.strerror or err}") from None
    return sock


_NOTIFY = object()          # _run_worker's ready= when it is the whole server: it tells systemd


def _reloading(reload):
    """A reload that systemd hears about (RELOADING=1, then READY=1)."""
    def run() -> None:
        service.notify("RELOADING=1")
        try:
            reload()
        finally:
            service.notify("READY=1")
    return run


def serve(cfg: Config, ruleset: Ruleset | list[Ruleset], rules_path: str) -> int:
    """Run until SIGTERM/SIGINT.  Returns the process exit code.

    ``ruleset`` may come in a list of one, which this empties: the caller
    then holds no reference of its own, and a reload lets the first rules go.

    As root: read the secrets, bind the listeners, write the pid file;
    then, with server.user, give root up before anything else happens."""
    held = ruleset if isinstance(ruleset, list) else [ruleset]
    del ruleset
    lists.end_prefetch()            # the compile is done: any child it forked has ended
    # SIGTERM/SIGHUP from here on are held until the handlers exist (_serve):
    # a stop sent while the server is still starting must not kill it mid-way.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    secrets = load_secrets(cfg)
    sockets = bind_sockets(cfg)
    if cfg.server.pid_file:
        service.write_pid_file(cfg.server.pid_file)
    if cfg.server.user:
        service.drop_privileges(cfg.server.user, cfg.server.group)
        log.info("running as user %s (uid %d, gid %d)", cfg.server.user, os.getuid(), os.getgid())
    preflight(cfg)
    metrics_dir = _start_metrics(cfg) if cfg.metrics.listen else None
    try:
        return _serve(cfg, held, rules_path, secrets, sockets)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@contextlib.contextmanager
def shared_lists(cfg: Config):
    """Big lists packed into files of a folder of this run, which every
    worker maps (checks/packed.py): the supervisor's at start, each
    worker's after a reload with the same content.  The folder is
    server.user's alone (mode 0700); removed when the server stops."""
    directory = tempfile.mkdtemp(prefix="smtpfw-lists-")       # 0700: the lists are nobody else's to read
    if cfg.server.user and os.geteuid() == 0:
        shutil.chown(directory, cfg.server.user, cfg.server.group or None)
    packed.share_in(directory)
    lists.build_in_parallel(True)           # this process compiles before any thread exists
    try:
        yield directory
    finally:
        lists.end_prefetch()
        lists.build_in_parallel(False)
        packed.share_in(None)
        shutil.rmtree(directory, ignore_errors=True)


def _start_metrics(cfg: Config) -> str:
    """metrics.listen set: every process counts into a directory of its own
    (made after the privilege drop, so the workers can write it)."""
    directory = tempfile.mkdtemp(prefix="smtpfw-metrics-")
    metrics.setup(directory)
    return directory


def _metrics_endpoint(cfg: Config) -> None:
    """Serve /metrics in this process (a thread)."""
    host, port = cfg.metrics.address
    try:
        server = metrics.serve_http(host, port)
    except OSError as err:
        log.error("metrics: cannot listen on %s:%d: %s", host, port, err.strerror or err)
        return
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)


def _serve(cfg: Config, held: list[Ruleset], rules_path: str, secrets: Secrets, sockets: dict) -> int:
    # From here until a process has its handlers, SIGTERM/SIGHUP are held,
    # not lost and not fatal: a reload sent right after the "listening" line
    # must not kill a worker that is still starting.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    where = ", ".join(f"{l.host}:{s.getsockname()[1]}" for l, s in sockets.items())
    target = (f"forward to {cfg.forward_host}:{cfg.forward_port}" if cfg.delivery_mode == "forward"
              else f"Maildir {os.path.abspath(cfg.maildir)}")
    workers = cfg.worker_count
    log.info("smtpfw listening on %s, rules %s (version %s), %s, %d worker(s)",
             where, rules_path, held[0].version, target, workers)
    _warn_public_resolvers(cfg, held[0])
    if workers <= 1:
        lists.build_in_parallel(False)      # a reload here compiles in a process with threads: no fork
        if metrics.ENABLED:
            _metrics_endpoint(cfg)
        _use_uvloop()
        asyncio.run(_run_worker(cfg, held.pop(), rules_path, sockets, _NOTIFY, secrets))
        return 0
    return _supervise(cfg, held, rules_path, sockets, workers, secrets)


def _preload(cfg: Config) -> None:
    """Import here what every worker imports when it starts (the event
    loop, the front ends of the listeners): once, in pages the workers
    share, rather than in each (smtpfw.protocol.address alone takes 0.1 s
    of CPU and the lot about 2 MB)."""
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    kinds = {listener.kind for listener in cfg.listen}
    if "milter" in kinds:
        import smtpfw.protocol.milter  # noqa: F401
    if "policy" in kinds:
        import smtpfw.protocol.policy  # noqa: F401
    if kinds - {"milter", "policy"}:
        import smtpfw.protocol.smtp  # noqa: F401


def _share_with_workers(unfreeze: bool = False) -> None:
    """What exists now (the rules, their lists, every module) is never freed
    before the workers forked next end: out of the collector's sight, the
    workers do not write to its pages (the collector's bookkeeping would
    copy them into each worker), so the pages stay shared.  After a reload
    (``unfreeze``) the rules the supervisor let go are collected first, and
    the heap they leave is given back."""
    if unfreeze:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    if unfreeze:
        service.release_memory()


def _supervise(cfg: Config, held: list[Ruleset], rules_path: str, sockets: dict, workers: int,
               secrets: Secrets) -> int:
    """Fork the workers and keep them: replace one that dies (on the rules
    of now), replace them all on SIGHUP, forward SIGTERM/SIGINT.
    ``held[0]`` is the ruleset the current workers run, and the
    supervisor's only reference to it."""
    children: dict[int, float] = {}     # current workers: pid -> start time
    retiring: set[int] = set()          # workers of older rules, finishing their sessions (RETIRE)
    stopping = False
    reloaded = False                    # a reload has replaced the rules the server started with
    quick_deaths = 0                    # workers that died right after starting, in a row
    blocked = _SIGNALS + (RETIRE,)

    _ROLE[0] = "supervisor"
    _preload(cfg)
    _share_with_workers()

    def spawn(announce: str | None = None) -> int:
        """A worker on ``held[0]``; ``announce``: the line it logs once it accepts."""
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        pid = os.fork()
        if pid == 0:
            _ROLE[0] = "worker"
            lists.build_in_parallel(False)  # a worker that reloads by itself (reload_on_change) forks nothing
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            code = 0
            try:
                _use_uvloop()
                ready = (lambda _server: log.info("%s: %s", _role(), announce)) if announce else None
                asyncio.run(_run_worker(cfg, held.pop(), rules_path, sockets, ready, secrets))
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid

    def signal_all(sig) -> None:
        for pid in [*children, *retiring]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def reload() -> None:
        """SIGHUP: compile once here; if the rules compile, fork workers that
        hold them and retire the old ones (a refused reload leaves them be)."""
        nonlocal reloaded
        service.notify("RELOADING=1")
        try:
            ruleset = _reload_compiles(cfg, rules_path, held[0])
            if ruleset is None:
                return
            held[0] = ruleset               # the old rules go with the old workers
            del ruleset
            reloaded = True
            _share_with_workers(unfreeze=True)
            old = list(children)
            for pid in old:
                del children[pid]
                retiring.add(pid)
            new = [spawn(f"rules reloaded from {rules_path}: version {held[0].version}") for _ in range(workers)]
            log.info("%s: rules %s, version %s: workers %s replace %s, which finish their sessions",
                     _role(), rules_path, held[0].version, ", ".join(map(str, new)), ", ".join(map(str, old)))
            for pid in old:
                try:
                    os.kill(pid, RETIRE)
                except ProcessLookupError:
                    pass
        finally:
            service.notify("READY=1")

    def on_signal(sig, _frame) -> None:
        nonlocal stopping
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)     # one at a time: a reload takes seconds
        try:
            if sig == signal.SIGHUP:
                if not stopping:
                    reload()
                return
            stopping = True
            service.notify("STOPPING=1")
            signal_all(sig)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    endpoint = _fork_metrics_endpoint(cfg) if metrics.ENABLED else None
    for _ in range(workers):
        spawn()
    for sig in _SIGNALS:
        signal.signal(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    service.notify("READY=1")
    while children or retiring:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == endpoint:
            continue
        metrics.process_gone(pid)
        if pid in retiring:
            retiring.discard(pid)
            log.info("%s: worker %d of the rules before the reload has finished (status %d)", _role(), pid, status)
            continue
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        quick_deaths = quick_deaths + 1 if time.monotonic() - started < 5 else 0
        if quick_deaths >= 5:
            log.error("workers keep failing at start; giving up")
            on_signal(signal.SIGTERM, None)
            for other in [*children, *retiring]:
                os.waitpid(other, 0)
            return 1
        log.error("worker %d exited (status %d); starting a new one", pid, status)
        time.sleep(0.5)
        spawn(f"rules {rules_path}, version {held[0].version} (as reloaded)" if reloaded else None)
    if endpoint is not None:
        try:
            os.kill(endpoint, signal.SIGTERM)
            os.waitpid(endpoint, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return 0


def _fork_metrics_endpoint(cfg: Config) -> int:
    """The /metrics endpoint in a process of its own: the supervisor forks
    workers again when one dies, and forking a process that runs an HTTP
    thread could copy a lock that thread holds."""
    pid = os.fork()
    if pid == 0:
        _ROLE[0] = "metrics"
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        try:
            _metrics_endpoint(cfg)
            while True:
                time.sleep(3600)
        finally:
            logging.shutdown()
            os._exit(0)
    return pid


def _reload_compiles(cfg: Config, rules_path: str, running: Ruleset) -> Ruleset | None:
    """SIGHUP in the supervisor: the rules, compiled once here, or None
    (refused and logged once, not once per worker) when they do not compile
    or need a state store that cannot be opened."""
    packed.begin()
    try:
        ruleset, diags = compile_ruleset(rules_path)
    finally:
        lists.end_prefetch()
    if ruleset is None:
        log_refused_reload(rules_path, running.version, diags)
        return None
    if _needs_store(cfg, ruleset) and not _needs_store(cfg, running):
        problem = _probe_store(cfg)
        if problem is not None:
            log_refused_reload(rules_path, running.version, _store_refusal(cfg.state.store, problem))
            return None
    packed.prune()          # the lists of older versions: workers that still map them keep their pages
    return ruleset


def _probe_store(cfg: Config) -> str | None:
    """Why the state store cannot be opened, or None: tried in a child
    process, since a store may start a thread, and a thread must not exist
    in the supervisor when it forks."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rd)
        code = 0
        try:
            _open_configured_store(cfg)
        except BaseException as err:  # noqa: BLE001 -- reported to the supervisor
            os.write(wr, str(err).encode("utf-8", "replace")[:2000] or type(err).__name__.encode())
            code = 1
        os._exit(code)
    os.close(wr)
    with os.fdopen(rd, "rb") as fh:
        said = fh.read()
    _pid, status = os.waitpid(pid, 0)
    if status == 0:
        return None
    return said.decode("utf-8", "replace") or f"status {status}"
