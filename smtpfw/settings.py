"""Settings loading: the config file (or the built-in defaults) and the
ruleset to use, as every command that runs rules needs them."""

from __future__ import annotations

from smtpfw import paths
from smtpfw.config import Config, load_config


def load_settings(config_path: str | None = None, rules: str | None = None) -> tuple[Config, str]:
    """The config and the rules path: ``rules`` if given, else the config's,
    else the packaged default ruleset."""
    cfg = load_config(config_path) if config_path else Config()
    return cfg, rules or cfg.rules or str(paths.default_rules())
