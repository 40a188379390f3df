"""Where the shipped grammar, rulesets and config live.

In a source checkout (or an editable install) they are the top-level
``grammar/``, ``rules/`` and ``config/`` folders; in an installed wheel they
are packaged as ``smtpfw/data/{grammar,rules,config}``.  The relative layout
is the same in both, so ``rules/reference.rules`` can name
``../config/lists/badhelo`` either way.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_root() -> Path:
    source = _PKG.parent
    if (source / "grammar" / "smtpfw.lark").is_file():
        return source
    return _PKG / "data"


def grammar_file() -> Path:
    return data_root() / "grammar" / "smtpfw.lark"


def rules_dir() -> Path:
    return data_root() / "rules"


def config_dir() -> Path:
    return data_root() / "config"


def default_rules() -> Path:
    return rules_dir() / "default.rules"


def default_config() -> Path:
    return config_dir() / "smtpfw.yaml"
