"""Python plugins: the escape hatch for what rules cannot say.

A plugin is a class named in a ruleset::

    plugin score = "smtpfw.plugins_builtin:HeaderScore" { threshold = 5 }
    on data:
        run score
        reject "Spam score {score.points}" if score.points >= 5

The API is small on purpose:

- ``__init__(**args)`` gets the ``{...}`` arguments of the declaration.
- ``fields``: a dict of field name -> type ("int", "string", "bool"); the
  rules see them as ``<plugin name>.<field>``.  Declare it on the class:
  lint reads it there without constructing the plugin.
- ``async run(stage, state, message) -> PluginResult | None``: ``message``
  is the raw message bytes at ``data``/``queue``, else None.  Return fields
  for later rules and/or a ``Decision`` that ends the hook like a rule.

A plugin that raises, hangs past its timeout or returns anything else costs
that session a 451 4.3.0; it is logged and the server goes on.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from dataclasses import dataclass, field

from smtpfw.session import SessionState
from smtpfw.verdict import Decision, Outcome, Stage

log = logging.getLogger("smtpfw.plugins")

PLUGIN_FAILED = Decision(Outcome.TEMPFAIL, 451, "4.3.0", "Temporary local problem, try again later")


class PluginError(Exception):
    pass


@dataclass(frozen=True)
class PluginResult:
    fields: dict = field(default_factory=dict)
    decision: Decision | None = None


class Plugin:
    """Base class (optional: any object with ``run`` and ``fields`` works)."""

    fields: dict[str, str] = {}
    timeout: float = 10.0

    def __init__(self, **args):
        self.args = args

    async def run(self, stage: Stage, state: SessionState, message: bytes | None) -> PluginResult | None:
        return None


def plugin_class(target: str) -> type:
    """The class a declaration names, imported but not constructed: what a
    check (lint) needs to know its ``fields``, without the connections or
    files a plugin's constructor may open."""
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise PluginError(f"\"{target}\" is not of the form \"package.module:ClassName\"")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an import can fail in any way
        raise PluginError(f"cannot import {module_name}: {err}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PluginError(f"{module_name} has no {class_name}")
    if not callable(getattr(cls, "run", None)):
        raise PluginError(f"{class_name} has no run() method")
    return cls


def load_plugin(target: str, args: dict) -> object:
    """The plugin object the server runs."""
    cls = plugin_class(target)
    try:
        return cls(**args)
    except Exception as err:
        raise PluginError(f"{cls.__name__}({', '.join(f'{k}=' for k in args)}) failed: {err}") from None


async def run_plugin(name: str, plugin, stage: Stage, state: SessionState,
                     message: bytes | None) -> Decision | None:
    """Run one plugin step, contained: any failure becomes a 451."""
    timeout = float(getattr(plugin, "timeout", 10.0) or 10.0)
    try:
        result = await asyncio.wait_for(plugin.run(stage, state, message), timeout)
    except asyncio.TimeoutError:
        log.error("plugin %s timed out after %.1fs at %s (session %s)", name, timeout, stage.value, state.session_id)
        return PLUGIN_FAILED
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("plugin %s raised at %s (session %s)", name, stage.value, state.session_id)
        return PLUGIN_FAILED
    if result is None:
        return None
    if not isinstance(result, PluginResult) or not isinstance(result.fields, dict) or not (
            result.decision is None or isinstance(result.decision, Decision)):
        log.error("plugin %s returned %r, not a PluginResult (session %s)", name, result, state.session_id)
        return PLUGIN_FAILED
    declared = getattr(plugin, "fields", {})
    for key, value in result.fields.items():
        if key not in declared:
            log.error("plugin %s set undeclared field %r (session %s)", name, key, state.session_id)
            return PLUGIN_FAILED
        state.plugin_fields[f"{name}.{key}"] = value
    return result.decision
