"""Session state: the plain data rules are evaluated over.

The SMTP front end fills it in as commands arrive; the recorder writes it
out; replay rebuilds it from a recording.  Nothing here does I/O, so the
engine stays pure and a dry-run needs no network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field



def split_address(address: str) -> tuple[str, str]:
    """(local part, lower-case domain) of an address; domain "" if none."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower().rstrip(".")


@dataclass(slots=True)
class SessionState:
    # connect
    session_id: str = ""
    started: float = 0.0
    listener_address: str = ""
    listener_port: int = 0
    listener_name: str = ""
    client_ip: str = ""
    client_port: int = 0
    # helo
    helo: str = ""                    # as given
    helo_lower: str = ""
    esmtp: bool = False
    tls: bool = False
    unrecognized: int = 0             # unknown commands so far this session
    # how the client behaves (bot tests, as Postfix's postscreen makes them)
    pregreet: bool = False            # it talked before the greeting ended (smtp.greet_wait on)
    pregreet_text: str = ""           # what it sent (the first 64 characters, escaped)
    pregreet_ms: int = 0              # how long after the first greeting line it began
    pregreet_cached: bool = False     # it passed the pregreet test before (smtp.greet_pass_ttl): not tested
    pass_new: bool = False            # it passed the test just now, for the first time (postscreen's PASS NEW)
    unauth_pipelining: bool = False   # it sent ahead where pipelining was not allowed
    non_smtp: bool = False            # it sent an HTTP/proxy command (GET, POST, CONNECT, Host: ...)
    tarpit: float = 0.0               # seconds every reply waits (`tarpit` action)
    stutter: float = 0.0              # seconds of one-byte-a-second replies (`stutter` action)
    bare_newline: bool = False        # a command ended in a bare LF
    # mail (auth is known by MAIL)
    auth: bool = False
    auth_user: str = ""
    sender: str | None = None         # None: no MAIL yet; "": the null sender <>
    sender_lower: str = ""
    sender_local: str = ""
    sender_domain: str = ""
    mail_params: dict = field(default_factory=dict)
    mail_size: int = 0                # SIZE= parameter
    # rcpt
    rcpt: str = ""                    # the recipient being decided
    rcpt_lower: str = ""
    rcpt_local: str = ""
    rcpt_domain: str = ""
    rcpts: list = field(default_factory=list)     # accepted so far (this transaction)
    rcpt_rejected: int = 0
    # data
    message_size: int = 0
    message: bytes | None = None      # the message while its data hook is decided (content checks); never recorded
    auth_results: str = ""            # the Authentication-Results value for it (option authentication_results)
    headers: dict = field(default_factory=dict)   # lower-case name -> first value
    # engine
    tags: set = field(default_factory=set)
    scores: dict = field(default_factory=dict)     # score name -> total (`score NAME +N`), for the session
    score_hits: list = field(default_factory=list)  # (name, weight, rule id, hook) in order: the breakdown
    stage: object = None                           # the hook being decided (Stage), for what rules note
    hook_runs: int = 0                             # hooks decided so far: a lazy fact counts once per run
    lazy_keys: dict = field(default_factory=dict)  # key maker -> (hook run, its key): made once per run
    effects: list = field(default_factory=list)    # writes decided in this hook run (`count NAME`), committed after it
    uncoded: set = field(default_factory=set)      # zones whose listing had no return codes to filter
                                                   # (imported from a mail log): dry-run says so
    facts: dict = field(default_factory=dict)      # fact key -> value (smtpfw.facts), e.g. Lookup -> DnsAnswer
    plugin_fields: dict = field(default_factory=dict)
    add_headers: list = field(default_factory=list)
    log_lines: list = field(default_factory=list)
    hits: list = field(default_factory=list)       # rule ids that matched, in order
    monitored: list = field(default_factory=list)  # (rule id, Decision) of monitor-mode refusals
    decisions: list = field(default_factory=list)  # (Stage, Decision, subject) per hook run
    events: list = field(default_factory=list)     # commands that reached a hook, for recording
    connect_reply: str = ""
    final_reply: str = ""
    refusal: str = ""                              # the last 4xx/5xx reply the client got ("" if none)
    messages: int = 0                              # transactions completed
    events_dropped: int = 0                        # events past the record's cap (recording.max_events)
    _ip: object = None
    _net: str = ""

    @property
    def ip(self):
        """The client IP as an ipaddress object (parsed once)."""
        if self._ip is None:
            try:
                self._ip = ipaddress.ip_address(self.client_ip.split("%", 1)[0])
            except ValueError:
                self._ip = ipaddress.ip_address("0.0.0.0")
        return self._ip

    @property
    def net(self) -> str:
        """The client's /24 (IPv4) or /64 (IPv6), as text (computed once:
        limits and greylisting read it several times a message)."""
        if not self._net:
            ip = self.ip
            if ip.version == 4:
                self._net = f"{ipaddress.IPv4Address(int(ip) & 0xFFFFFF00)}/24"
            else:
                self._net = f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"
        return self._net

    def note(self, event: dict, cap: int) -> dict:
        """Keep ``event`` for the record unless ``cap`` are kept already: a
        session's record (and memory) stays bounded however long it runs."""
        if len(self.events) < cap:
            self.events.append(event)
        else:
            self.events_dropped += 1
        return event

    def trim_history(self, cap: int) -> None:
        """Bound what the engine appends per hook run (called between
        transactions, off the hot path)."""
        for kept in (self.hits, self.log_lines, self.monitored, self.decisions, self.score_hits):
            if len(kept) > cap:
                del kept[cap:]

    def forget_scores(self, stage) -> None:
        """Take back what the rules of ``stage`` added to scores (a HELO
        given again replaces the one before, as after STARTTLS)."""
        kept = []
        for hit in self.score_hits:
            if hit[3] is stage:
                self.scores[hit[0]] -= hit[1]
            else:
                kept.append(hit)
        if len(kept) != len(self.score_hits):
            self.score_hits = kept

    def set_helo(self, name: str, esmtp: bool) -> None:
        self.helo = name
        self.helo_lower = name.lower().rstrip(".")
        self.esmtp = esmtp

    def set_sender(self, address: str, params: dict | None = None) -> None:
        self.sender = address
        self.sender_lower = address.lower()
        self.sender_local, self.sender_domain = split_address(address)
        self.mail_params = params or {}
        size = self.mail_params.get("SIZE")
        self.mail_size = int(size) if isinstance(size, str) and size.isdigit() else 0

    def set_rcpt(self, address: str) -> None:
        self.rcpt = address
        self.rcpt_lower = address.lower()
        self.rcpt_local, self.rcpt_domain = split_address(address)

    def reset_transaction(self) -> None:
        """RSET, a new HELO, or the end of a message: the envelope starts over."""
        self.sender = None
        self.sender_lower = self.sender_local = self.sender_domain = ""
        self.mail_params = {}
        self.mail_size = 0
        self.rcpt = self.rcpt_lower = self.rcpt_local = self.rcpt_domain = ""
        self.rcpts = []
        self.rcpt_rejected = 0
        self.message_size = 0
        self.auth_results = ""
        self.headers = {}
        self.add_headers = []
