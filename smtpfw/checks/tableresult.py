"""The plain data of a lookup in a database or directory map: its key and
its answer (smtpfw.facts: provider "map").

Rules never talk to a database.  The server asks the map for the keys a
hook's rules need, before they run, and the answers are recorded with the
session like DNS answers, so a replay gives the same verdicts offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class TableQuery(NamedTuple):
    """A map fact's key: the map's name in the ruleset and the key looked up
    (already folded: a lower-case address, domain or IP)."""

    map: str
    key: str

    @property
    def provider(self) -> str:
        return "map"

    def to_json(self) -> dict:
        return {"map": self.map, "key": self.key}

    @classmethod
    def from_json(cls, d: dict) -> "TableQuery":
        return cls(d["map"], d["key"])


@dataclass(frozen=True, slots=True)
class TableAnswer:
    """``status`` is "found" (``value`` is the result, several results
    joined with ", " as Postfix joins them), "none" (no entry), or "error"
    (the store could not answer: ``reason`` says why)."""

    status: str
    value: str = ""
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.status != "error"

    def to_json(self) -> dict:
        d = {"status": self.status}
        if self.value:
            d["value"] = self.value
        if self.reason:
            d["reason"] = self.reason
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TableAnswer":
        return cls(d["status"], d.get("value", ""), d.get("reason", ""))


NOT_FOUND = TableAnswer("none")


def unavailable(reason: str) -> TableAnswer:
    return TableAnswer("error", reason=reason)
