"""Map values read as actions, as Postfix access(5) defines them, for
`apply MAP(field)`.

A value is read once (at compile time for access maps, on first use for
regexp maps, whose values carry ``$1`` substitutions) into what the engine
does with it:

======================================  ==========================================
value                                   smtpfw
======================================  ==========================================
``OK``, ``PERMIT``, all digits, ``2NN`` accept (this hook)
``REJECT [text]``                       reject 554 5.7.1 text (default "Access denied")
``DEFER [text]``                        tempfail 450 4.7.1 text
``5NN [x.y.z] text``                    reject with that code (521: disconnect)
``4NN [x.y.z] text``                    tempfail with that code (421: disconnect)
``DUNNO``                               nothing: the next rule runs
``WARN text``                           a warn line in the log
``PREPEND name: value``                 add_header (in `on data:`)
a class name                            the class's rules run (RESTRICTION_CLASS_README)
======================================  ==========================================

Anything else (DISCARD, HOLD, REDIRECT, FILTER, BCC, DEFER_IF_PERMIT,
Postfix restriction names) is not an action smtpfw takes: lint warns
(W305) and at run time the value does nothing but log a warning.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from smtpfw.actions import AddHeader, Note
from smtpfw.verdict import Decision, Outcome, Stage

# "550 text": a code needs text after it (Postfix: "550" alone is all digits, so OK)
_CODE = re.compile(r"([245])(\d\d)\s+(?:([245]\.\d{1,3}\.\d{1,3})(?:\s+|$))?(.*)$", re.S)
_HEADER = re.compile(r"([!-9;-~]+):\s*(.*)$", re.S)
_CACHE_MAX = 1024


def _text(value: str) -> str:
    """Reply text: printable, one line, bounded."""
    return "".join(ch if ch.isprintable() else "?" for ch in value)[:400]


def _constant(text: str) -> Callable[[object], str]:
    return lambda state: text


class AccessValues:
    """Reads map values as actions.  ``class_rules(name)`` gives a class's
    compiled rules for the hook (None if it cannot)."""

    def __init__(self, classes: set[str], class_rules: Callable[[str], Any], map_name: str):
        self.classes = classes
        self.class_rules = class_rules
        self.map_name = map_name
        self._cache: dict[str, Any] = {}

    def choose(self, value: str) -> Any:
        """What the engine does for ``value`` ("" = no entry: nothing)."""
        if not value:
            return None
        hit = self._cache.get(value, _MISSING)
        if hit is _MISSING:
            hit, _problem = self._read(value)
            if len(self._cache) < _CACHE_MAX:
                self._cache[value] = hit
        return hit

    def problem(self, value: str, stage: Stage) -> str | None:
        """Why ``value`` is not an action here (lint, W305), or None."""
        choice, problem = self._read(value, stage)
        return problem

    def _read(self, value: str, stage: Stage | None = None) -> tuple[Any, str | None]:
        if not value.strip():
            return None, "has no action after its key (a list entry, not an access map line)"
        word, _, rest = value.strip().partition(" ")
        rest = rest.strip()
        upper = word.upper()
        if upper in ("OK", "PERMIT") or value.strip().isdigit():
            return Decision(Outcome.ACCEPT), None
        if upper == "DUNNO":
            return None, None
        if upper == "REJECT":
            return Decision(Outcome.REJECT, 554, "5.7.1", _text(rest or "Access denied")), None
        if upper == "DEFER":
            return Decision(Outcome.TEMPFAIL, 450, "4.7.1", _text(rest or "Access denied")), None
        m = _CODE.match(value.strip())
        if m:
            klass, code = m.group(1), int(m.group(1) + m.group(2))
            enhanced, text = m.group(3), _text((m.group(4) or "").strip())
            if enhanced is not None and enhanced[0] != klass:
                return None, f"has enhanced code {enhanced}, which contradicts {code}"
            if klass == "2":
                return Decision(Outcome.ACCEPT), None
            if code in (421, 521):
                return Decision(Outcome.DISCONNECT, code, enhanced, text or None), None
            outcome = Outcome.REJECT if klass == "5" else Outcome.TEMPFAIL
            return Decision(outcome, code, enhanced, text or None), None
        if upper == "WARN":
            return Note("warn", _constant(_text(rest))), None
        if upper == "PREPEND":
            h = _HEADER.match(rest)
            if h is None:
                return None, "is not `PREPEND name: value`"
            if stage is not None and stage is not Stage.DATA:
                return None, "adds a header, which smtpfw does only in `on data:`"
            return AddHeader(h.group(1), _constant(_text(h.group(2)))), None
        if word in self.classes and not rest:
            rules = self.class_rules(word)
            return rules, None if rules is not None else f"names class {word}, which cannot run here"
        note = Note("warn", _constant(f"map {self.map_name}: `{_text(value)}` is not an action smtpfw takes"))
        return note, "is not an action smtpfw takes"


_MISSING = object()
