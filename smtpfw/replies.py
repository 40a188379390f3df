"""(stage, decision) -> SMTP reply, in one table; and the protocol's own
fixed replies.  Nothing else in smtpfw writes reply codes."""

from __future__ import annotations

from smtpfw.verdict import Decision, Outcome, Stage

# Defaults when a rule gives no code, enhanced code or text.
_DEFAULTS: dict[tuple[Stage, Outcome], tuple[int, str, str]] = {
    (Stage.CONNECT, Outcome.REJECT): (554, "5.7.1", "Access denied"),
    (Stage.CONNECT, Outcome.TEMPFAIL): (421, "4.7.1", "Service temporarily unavailable, try again later"),
    (Stage.HELO, Outcome.ACCEPT): (250, "", ""),
    (Stage.HELO, Outcome.REJECT): (550, "5.7.1", "HELO/EHLO rejected"),
    (Stage.MAIL, Outcome.ACCEPT): (250, "2.1.0", "Sender OK"),
    (Stage.MAIL, Outcome.REJECT): (550, "5.7.1", "Sender rejected"),
    (Stage.RCPT, Outcome.ACCEPT): (250, "2.1.5", "Recipient OK"),
    (Stage.RCPT, Outcome.REJECT): (550, "5.7.1", "Recipient rejected"),
    (Stage.DATA, Outcome.ACCEPT): (250, "2.0.0", "Message accepted"),
    (Stage.DATA, Outcome.REJECT): (550, "5.7.1", "Message rejected"),
    (Stage.QUEUE, Outcome.ACCEPT): (250, "2.0.0", "Message accepted"),
    (Stage.QUEUE, Outcome.REJECT): (554, "5.7.1", "Message rejected"),
}
_TEMPFAIL = (451, "4.7.1", "Temporary failure, try again later")
_DISCONNECT = (421, "4.7.0", "Closing connection")


def render(stage: Stage, decision: Decision) -> tuple[int, str, str]:
    """(code, enhanced, text) for a refusal or acceptance at ``stage``."""
    outcome = decision.outcome
    if outcome is Outcome.DISCONNECT:
        dcode, denh, dtext = _DISCONNECT
    elif outcome is Outcome.TEMPFAIL:
        dcode, denh, dtext = _DEFAULTS.get((stage, outcome), _TEMPFAIL)
    else:
        dcode, denh, dtext = _DEFAULTS.get((stage, outcome), _DEFAULTS.get((Stage.DATA, outcome), (550, "5.7.1", "Rejected")))
    code = decision.code or dcode
    if stage is Stage.CONNECT and outcome is Outcome.TEMPFAIL:
        code = 421   # RFC 5321 4.3.2: a 4xx greeting is always 421
    enhanced = decision.enhanced or (f"{str(code)[0]}{denh[1:]}" if denh else "")
    return code, enhanced, decision.text or dtext


REPLY_LIMIT = 510     # RFC 5321 4.5.3.1.5: 512 octets with the CRLF


def line(code: int, enhanced: str, text: str) -> str:
    """One reply line; multi-line text is folded onto one line, and text
    too long for a reply line (a rule's text with a long DNSBL TXT answer in
    it, say) is cut, by octets, to fit."""
    text = " ".join(text.split())
    out = f"{code} {enhanced} {text}" if enhanced else f"{code} {text}"
    raw = out.encode("utf-8")
    if len(raw) <= REPLY_LIMIT:
        return out
    return raw[:REPLY_LIMIT - 3].decode("utf-8", "ignore") + "..."


_RENDERED: dict[tuple[Stage, Decision], str] = {}


def for_decision(stage: Stage, decision: Decision) -> str:
    """The reply line for a decision at a stage.  Memoised: a ruleset has
    few distinct refusals, and every refused command needs its line."""
    key = (stage, decision)
    reply = _RENDERED.get(key)
    if reply is None:
        if len(_RENDERED) >= 4096:      # texts with per-session placeholders keep it growing
            _RENDERED.clear()
        reply = _RENDERED[key] = line(*render(stage, decision))
    return reply


# Protocol replies (RFC 5321 / 3463).
SYNTAX_CMD_TOO_LONG = "500 5.5.2 Line too long"
SYNTAX_UNRECOGNIZED = "500 5.5.2 Error: command not recognized"
SYNTAX_NUL = "500 5.5.2 Error: NUL character in command"
SYNTAX_BAD_ENCODING = "500 5.5.2 Error: command is not valid UTF-8/ASCII"
NOT_SMTP = "421 4.7.0 This is an SMTP server, not a web server or proxy, closing connection"
TOO_MANY_UNRECOGNIZED = "421 4.7.0 Too many unrecognized commands, closing connection"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TOO_MANY_TRANSACTIONS = "421 4.7.0 Too many transactions in one session, closing connection"
TOO_MANY_JUNK = "421 4.7.0 Too many commands that move no mail, closing connection"
NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed maximum message size"
NO_MEMORY = "452 4.3.1 Insufficient system storage, try again later"
DATA_LINE_TOO_LONG = "552 5.3.4 Message line too long (RFC 5321 4.5.3.1.6)"
BARE_LINEFEED = "554 5.6.11 Message contains bare CR or LF characters; use CRLF line endings (RFC 5321 2.3.8)"
DATA_NUL = "554 5.6.0 Message contains NUL characters"
IDLE_TIMEOUT = "421 4.4.2 Timeout exceeded, closing connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing connection"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_IP = "421 4.7.0 Too many connections from your address, try again later"
LOCAL_ERROR = "451 4.3.0 Temporary local problem, try again later"
BAD_SENDER_SYNTAX = "501 5.1.7 Bad sender address syntax"
BAD_RCPT_SYNTAX = "501 5.1.3 Bad recipient address syntax"
DATA_START = "354 End data with <CR><LF>.<CR><LF>"
NO_VALID_RCPTS = "554 5.5.1 Error: no valid recipients"
AUTH_UNAVAILABLE = "502 5.5.1 AUTH not available"
NEED_EHLO = "503 5.5.1 Error: send EHLO first"
ALREADY_AUTHENTICATED = "503 5.5.1 Already authenticated"
AUTH_IN_TRANSACTION = "503 5.5.1 Error: AUTH not allowed during a mail transaction"
AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_UNKNOWN_MECHANISM = "504 5.5.4 Unrecognized authentication type"
AUTH_THROTTLED = "454 4.7.0 Too many failed authentication attempts, try again later"
AUTH_BUSY = "454 4.7.0 Temporary authentication failure, try again later"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_ABORTED = "501 5.7.0 Authentication aborted"
AUTH_MALFORMED = "501 5.5.2 Malformed authentication response"
AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"
REJECTED_SESSION = "503 5.7.0 Error: session rejected, only QUIT is accepted"
