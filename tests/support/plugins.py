"""Misbehaving plugins for tests: each must cost only that session a 451."""

import asyncio

from smtpfw.plugins import Plugin, PluginResult
from smtpfw.verdict import Decision, Outcome


class Raises(Plugin):
    async def run(self, stage, state, message):
        raise RuntimeError("plugin bug")


class Hangs(Plugin):
    timeout = 0.3

    async def run(self, stage, state, message):
        await asyncio.sleep(3600)


class Garbage(Plugin):
    async def run(self, stage, state, message):
        return "250 OK"


class Undeclared(Plugin):
    fields = {"x": "int"}

    async def run(self, stage, state, message):
        return PluginResult(fields={"y": 1})


class Rejects(Plugin):
    fields = {"size": "int"}

    def __init__(self, limit=10):
        self.limit = limit

    async def run(self, stage, state, message):
        size = len(message or b"")
        decision = Decision(Outcome.REJECT, 550, "5.7.1", "too big for the plugin") if size > self.limit else None
        return PluginResult(fields={"size": size}, decision=decision)


class BadInit(Plugin):
    fields = {"x": "int"}

    def __init__(self, **args):
        raise ValueError("needs a key")


def plugin_rules(target: str, hook: str = "data", args: str = "") -> str:
    """A ruleset that runs plugin `p` (target "module:Class") at ``hook``."""
    return f"""
plugin p = "{target}" {args}
on {hook}:
    run p
on rcpt:
    accept if rcpt.domain in localnames
    reject 554 5.7.1 "Relaying denied"
"""


def send_one(srv, body: bytes) -> tuple[int, bytes]:
    """(code, text) of the refusal a message to u@localhost meets, or (250, b"")."""
    import smtplib

    with smtplib.SMTP(*srv.address, timeout=10) as s:
        s.ehlo("client.example")
        try:
            s.sendmail("a@b.example", ["u@localhost"], body)
            return 250, b""
        except smtplib.SMTPDataError as err:
            return err.smtp_code, err.smtp_error
        except smtplib.SMTPRecipientsRefused as err:
            return err.recipients["u@localhost"]


class Slow(Plugin):
    """Takes half a second, then has no opinion: a window in which a
    client can go away while its message is being handled."""

    async def run(self, stage, state, message):
        await asyncio.sleep(0.5)
        return None
