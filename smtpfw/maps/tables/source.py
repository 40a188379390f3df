"""One session's database and directory lookups (a fact source, provider "map")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from smtpfw.checks.tableresult import TableAnswer, TableQuery, unavailable
from smtpfw.maps.tables.table import Table


class TableFacts:
    """Asks the ruleset's maps: ``start`` sends the queries whose key is
    known early (they run while the client talks), ``results`` waits for
    them, each within its map's timeout (``Table.ask``)."""

    def __init__(self, tables: Mapping[str, Table]):
        self.tables = tables
        self._pending: dict[TableQuery, asyncio.Future] = {}

    def start(self, keys: Iterable[TableQuery]) -> None:
        for key in keys:
            table = self.tables.get(key.map)
            if table is None or key in self._pending or table.cached(key.key) is not None:
                continue
            self._pending[key] = asyncio.ensure_future(table.ask(key.key))

    async def results(self, keys: Iterable[TableQuery]) -> dict:
        keys = list(keys)
        self.start(keys)
        out: dict[TableQuery, TableAnswer] = {}
        for key in keys:
            table = self.tables.get(key.map)
            if table is None:
                out[key] = unavailable(f"map {key.map} is not in this ruleset")
                continue
            pending = self._pending.pop(key, None)
            out[key] = await pending if pending is not None else await table.ask(key.key)
        return out

    def close(self) -> None:
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()
