"""Postfix's ``%`` expansions (mysql_table(5), pgsql_table(5),
sqlite_table(5), ldap_table(5)) — with the values *bound*, never pasted.

Postfix builds a query by quoting the key and pasting it into the text.
smtpfw keeps the operator's query as written but turns every expansion into
a bound parameter of the driver (a single-quoted SQL literal that holds
expansions, ``'%u@%d'``, becomes one parameter), so no key can change what
the query means: ``'; DROP TABLE users; --`` is looked up, not run.  LDAP
has no parameters; there each expanded value is escaped (RFC 4515 in a
filter, RFC 4514 in a search base) as Postfix does.

Expansions, as Postfix defines them for the *query* (the key is
``user@mail.example.com``):

``%s`` the key; ``%u`` the local part (``user``; the whole key when it has
no ``@``); ``%d`` the domain (``mail.example.com``); ``%1`` .. ``%9`` the
domain's labels from the right (``com``, ``example``, ``mail``); ``%S %U
%D`` the same as lower case; ``%%`` a percent sign.  A ``%d`` or ``%1``..
``%9`` on a key without a domain (or with too few labels), or a ``%u`` on
an empty local part, suppresses the lookup: no entry.

In ``result_format`` the lower-case ones expand the *result* and the upper
case ones the key (``%s``, ``%u``, ``%d``, ``%1``.. of the result; ``%S``,
``%U``, ``%D`` of the key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

Piece = Union[str, tuple[str]]          # literal text, or (directive,) such as ("s",), ("U",), ("3",)
DIRECTIVES = frozenset("sudSUD123456789")


class TemplateError(ValueError):
    """An expansion Postfix does not define (``%x``), or a ``%`` at the end."""


def parse(text: str) -> tuple[Piece, ...]:
    """``text`` as literal pieces and directives."""
    out: list[Piece] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "%":
            buf.append(ch)
            i += 1
            continue
        if i + 1 >= len(text):
            raise TemplateError("a `%` at the end: write `%%` for a percent sign")
        nxt = text[i + 1]
        if nxt == "%":
            buf.append("%")
        elif nxt in DIRECTIVES:
            if buf:
                out.append("".join(buf))
                buf = []
            out.append((nxt,))
        else:
            raise TemplateError(f"`%{nxt}` is not an expansion (%s, %u, %d, %1..%9, %S, %U, %D; %% for a percent sign)")
        i += 2
    if buf:
        out.append("".join(buf))
    return tuple(out)


def has_directives(pieces: tuple[Piece, ...]) -> bool:
    return any(isinstance(p, tuple) for p in pieces)


def _part(directive: str, value: str) -> str | None:
    """One directive of ``value``, or None when it suppresses the lookup."""
    d = directive.lower()
    if d == "s":
        return value
    local, at, domain = value.rpartition("@")
    if d == "u":
        if not at:
            return value
        return local or None
    if not at or not domain:
        return None
    if d == "d":
        return domain
    labels = domain.split(".")
    n = int(d)
    return labels[-n] if n <= len(labels) and labels[-n] else None


def expand(pieces: tuple[Piece, ...], key: str, result: str | None = None,
           escape: Callable[[str], str] | None = None) -> str | None:
    """The text of ``pieces`` for ``key`` (and, for result_format, the
    ``result`` that lower-case directives expand), each expanded value passed
    through ``escape``; None when a directive suppresses the lookup."""
    out: list[str] = []
    for p in pieces:
        if type(p) is str:
            out.append(p)
            continue
        directive = p[0]
        source = key if result is None or directive.isupper() else result
        value = _part(directive, source)
        if value is None:
            return None
        out.append(escape(value) if escape is not None else value)
    return "".join(out)


# ---- SQL: expansions become bound parameters -------------------------------

PLACEHOLDERS: dict[str, Callable[[int], str]] = {
    "sqlite": lambda n: "?",
    "pgsql": lambda n: f"${n}",
    "mysql": lambda n: "%s",
}


@dataclass(frozen=True, slots=True)
class SqlQuery:
    """A query with the driver's placeholders, and per placeholder the
    pieces its value is expanded from."""

    text: str
    params: tuple[tuple[Piece, ...], ...]

    def bind(self, key: str) -> list[str] | None:
        """The parameters for ``key``; None when an expansion suppresses
        the lookup (no entry, no query)."""
        out = []
        for pieces in self.params:
            value = expand(pieces, key)
            if value is None:
                return None
            out.append(value)
        return out


def compile_sql(query: str, dialect: str) -> SqlQuery:
    """Postfix's query text in ``dialect`` ("sqlite", "pgsql", "mysql") with
    bound parameters.  A quoted literal that holds expansions becomes one
    parameter; an expansion outside quotes becomes one too; an expansion in a
    quoted identifier (``"%s"``, a MySQL backtick) is refused."""
    placeholder = PLACEHOLDERS[dialect]
    pct = "%%" if dialect == "mysql" else "%"      # the mysql driver formats the text with %
    out: list[str] = []
    params: list[tuple[Piece, ...]] = []
    i, n = 0, len(query)

    def add_param(pieces: tuple[Piece, ...]) -> None:
        params.append(pieces)
        out.append(placeholder(len(params)))

    while i < n:
        ch = query[i]
        if ch == "'":
            j, raw = i + 1, []
            while True:
                if j >= n:
                    raise TemplateError("a quoted string is not closed (a `'` is missing)")
                c = query[j]
                if c == "\\" and dialect == "mysql" and j + 1 < n:
                    raw.append(query[j + 1])
                    j += 2
                    continue
                if c == "'":
                    if j + 1 < n and query[j + 1] == "'":
                        raw.append("'")
                        j += 2
                        continue
                    break
                raw.append(c)
                j += 1
            pieces = parse("".join(raw))
            if has_directives(pieces):
                add_param(pieces)
            else:
                text = "".join(p for p in pieces if type(p) is str)
                out.append("'" + text.replace("'", "''").replace("%", pct) + "'")
            i = j + 1
        elif ch in "\"`":
            j = query.find(ch, i + 1)
            if j < 0:
                raise TemplateError(f"a quoted name is not closed (a `{ch}` is missing)")
            ident = query[i:j + 1]
            if has_directives(parse(ident)):
                raise TemplateError(f"an expansion inside the quoted name {ident}: keys can only be values")
            out.append(ident.replace("%%", "%").replace("%", pct))
            i = j + 1
        elif ch == "%":
            if i + 1 < n and query[i + 1] == "%":
                out.append(pct)
                i += 2
                continue
            pieces = parse(query[i:i + 2])
            add_param(pieces)
            i += 2
        else:
            out.append(ch)
            i += 1
    return SqlQuery("".join(out), tuple(params))
