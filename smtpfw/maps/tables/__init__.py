"""Maps whose entries live in a database or directory — SQLite, PostgreSQL,
MySQL/MariaDB, LDAP — declared with a Postfix-format settings file
(``map users = pgsql "users.cf"``).  Unlike file maps they are asked while
mail arrives, so their lookups are facts (provider "map"): gathered before
the rules run, cached, bounded by a timeout, recorded for replay.
"""

from smtpfw.checks.tableresult import NOT_FOUND, TableAnswer, TableQuery, unavailable
from smtpfw.maps.tables.cf import KINDS
from smtpfw.maps.tables.table import Table, load_table

__all__ = ["KINDS", "NOT_FOUND", "Table", "TableAnswer", "TableQuery", "load_table", "unavailable"]
