"""Importers: other systems' configurations turned into smtpfw rulesets.

``postfix_conf.import_main_cf`` reads a Postfix main.cf (its restriction
lists, restriction classes, postscreen DNSBL scoring, networks, local
domains and the tables they name) and gives the ruleset, the map and list
files to write beside it, and a report of every parameter and restriction:
what was done, or why not.
"""

from __future__ import annotations

from smtpfw.importers.postfix_conf import (
    ImportResult,
    ReportLine,
    Status,
    import_main_cf,
    parse_main_cf,
)

__all__ = ["ImportResult", "ReportLine", "Status", "import_main_cf", "parse_main_cf"]
