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
    def __init__(self, **args):
        raise ValueError("needs a key")
