"""Importers: other systems' configurations turned into smtpfw rulesets.

``postfix_conf.import_main_cf`` reads a Postfix main.cf (its restriction
lists, restriction classes, postscreen DNSBL scoring, networks, local
domains and the tables they name) and gives the ruleset, the map and list
files to write beside it, and a report of every parameter and restriction:
what was done, or why not.  ``postfwd_conf.import_postfwd_cf`` does the same
for a postfwd ruleset (every rule, item, action and macro), and
``qpsmtpd_conf.import_qpsmtpd_config`` for a qpsmtpd config folder (every
plugin of config/plugins and the list files they read).
"""

from __future__ import annotations

from smtpfw.importers.postfix_conf import (
    ImportResult,
    ReportLine,
    Status,
    import_main_cf,
    parse_main_cf,
)
from smtpfw.importers.postfwd_conf import import_postfwd_cf, parse_postfwd
from smtpfw.importers.qpsmtpd_conf import import_qpsmtpd_config

__all__ = ["ImportResult", "ReportLine", "Status", "import_main_cf", "import_postfwd_cf", "import_qpsmtpd_config",
           "parse_main_cf", "parse_postfwd"]
