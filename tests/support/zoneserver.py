"""A loopback DNS server answering from a zone a test sets (SPF, DKIM,
DMARC records...): tests/support/dnsserver.py's DnsServer with a swappable
zone, CNAME chasing and names that never answer (timeouts)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from tests.support.dnsserver import DnsServer

IN = dns.rdataclass.IN


class ZoneServer(DnsServer):
    """DnsServer answering from a zone a test sets: ``{(name, TYPE): [values]}``.

    TXT values are raw text (split into 255-byte strings) or a tuple of
    strings (one record of several strings); other types are presentation
    text.  A CNAME is followed (loops end the chain).  ``timeouts`` holds
    (name, TYPE or "*"): such a query, unless the name has data of that type,
    is never answered.  Unknown names are NXDOMAIN.
    """

    def __init__(self) -> None:
        super().__init__()
        self.set_zone({})

    def set_zone(self, records: dict, timeouts=()) -> None:
        zone: dict = {}
        for (name, rtype), values in records.items():
            qname = dns.name.from_text(name)
            rt = dns.rdatatype.from_text(rtype)
            rrset = dns.rrset.RRset(qname, IN, rt)
            for v in values:
                if rt == dns.rdatatype.TXT:
                    if isinstance(v, (str, bytes)):
                        data = v.encode() if isinstance(v, str) else v
                        strings = [data[i:i + 255] for i in range(0, len(data), 255)]
                    else:
                        strings = [s.encode() if isinstance(s, str) else s for s in v]
                    rrset.add(dns.rdtypes.ANY.TXT.TXT(IN, rt, strings or [b""]), 60)
                else:
                    rrset.add(dns.rdata.from_text(IN, rt, v), 60)
            zone.setdefault(qname, {})[rt] = rrset
        self.zone = zone
        self.timeouts = {(dns.name.from_text(n), t.upper()) for n, t in timeouts}

    async def _respond(self, wire, max_size):
        try:
            q = dns.message.from_wire(wire).question[0]
        except Exception:
            return None
        has = q.rdtype in self.zone.get(q.name, {})
        rtype = dns.rdatatype.to_text(q.rdtype)
        if not has and ((q.name, rtype) in self.timeouts or (q.name, "*") in self.timeouts):
            self._count()
            return None
        return await super()._respond(wire, max_size)

    def answer(self, query):
        r = dns.message.make_response(query)
        r.flags |= dns.flags.AA
        q = query.question[0]
        name, seen = q.name, set()
        while name not in seen:
            seen.add(name)
            node = self.zone.get(name)
            if node is None:
                if not r.answer:
                    r.set_rcode(dns.rcode.NXDOMAIN)
                return r
            if q.rdtype in node:
                r.answer.append(node[q.rdtype])
                return r
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                return r
            r.answer.append(cname)
            name = cname[0].target
        return r                                  # a CNAME loop: the chain, NOERROR
