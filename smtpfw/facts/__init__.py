"""Facts: everything rules read that is not in the SMTP conversation itself.

A *fact* is a value a provider gives for a key: a DNS answer for a
``Lookup`` today; map and store lookups, SPF/DKIM/DMARC results and scanner
verdicts later.  Every key names its provider (``key.provider``), so one
gathering step, one recording format and one replay path serve them all:

- the compiled ruleset says which keys each hook needs (and which can be
  started early);
- ``Policy`` gathers them from a ``FactSource`` before evaluating rules,
  concurrently, each provider under its own budget;
- the session state holds them (``SessionState.facts``), the engine reads
  them as plain data, and the record keeps them under one key ("facts");
- replay answers from the record (``RecordedFacts``); a fact that is not
  there is the provider's "unavailable" value, never an error.
"""

from smtpfw.facts.base import (LAZY_PROVIDERS, PROVIDERS, FactMissing, FactSource, Facts, Provider, RecordedFacts,
                               decode, encode, provider_of)

__all__ = ["LAZY_PROVIDERS", "PROVIDERS", "FactMissing", "FactSource", "Facts", "Provider", "RecordedFacts",
           "decode", "encode", "provider_of"]
