"""Where the shipped grammar, rulesets and config live.

In a source checkout (or an editable install) they are the top-level
``grammar/``, ``rules/`` and ``config/`` folders; in an installed wheel they
are packaged as ``smtpfw/data/{grammar,rules,config}``.  The relative layout
is the same in both, so ``rules/reference.rules`` can name
``../config/lists/badhelo`` either way.  ``docs/*.md`` are shipped the same
way (``smtpfw docs`` prints them).

Also here: ``writable_folder``, the start-up check of the folders smtpfw
writes to (Maildir, recordings).
"""

from __future__ import annotations

import os
import tempfile
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


def docs_dir() -> Path:
    return data_root() / "docs"


def writable_folder(path: str, mode: int = 0o777) -> None:
    """Create ``path`` if missing and prove a file can be made in it (a
    permission check would pass for root on a read-only file system).
    Raises OSError."""
    os.makedirs(path, mode=mode, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".smtpfw-probe-", dir=path)
    os.close(fd)
    os.unlink(probe)
