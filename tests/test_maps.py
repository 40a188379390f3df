"""Maps (smtpfw.maps): Postfix access(5), regexp_table(5) and pcre_table(5)
tables and qpsmtpd list files, and the RE2 regex layer under them."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from smtpfw.diagnostics import Code, Severity, Span
from smtpfw.maps import AccessMap, MapHit, RegexpMap, compile_pattern, compile_regex, load_map, map_from_pairs
from smtpfw.maps.base import logical_lines

DATA = Path(__file__).parent / "data" / "maps"


def load(name: str, fmt: str):
    m, diags = load_map(str(DATA / name), name, fmt)
    assert m is not None
    return m, diags


def table(tmp_path, text: str, fmt: str, name: str = "t.map"):
    """A map from text (lines joined as written), and its diagnostics."""
    path = tmp_path / name
    path.write_text(text)
    m, diags = load_map(str(path), name, fmt)
    assert m is not None
    return m, diags


def codes(diags) -> list[tuple[str, int]]:
    return [(str(d.code), d.span.line if d.span else 0) for d in diags]


def value(m, text: str, ftype: str = "string") -> str | None:
    hit = m.lookup(text, ftype)
    return None if hit is None else hit.value


def key(m, text: str, ftype: str = "string") -> str | None:
    hit = m.lookup(text, ftype)
    return None if hit is None else hit.key


def pairs(*items: tuple[str, str]) -> list[tuple[str, str, Span]]:
    return [(k, v, Span.point("site.rules", 10 + i, 5, len(k))) for i, (k, v) in enumerate(items)]


# ---------------------------------------------------------------------------
# reading: logical lines, files


def test_logical_lines_follow_postfix_readlline():
    text = ("# comment\n"
            "key1 value\n"
            "  continued\n"
            "   # an indented comment does not end the line\n"
            "\tmore\n"
            "\n"
            "  orphan after an empty line\n"
            "key2 v # not a comment\r\n"
            "#key3 commented out\n"
            "key4   \n")
    lines, diags = logical_lines(text, "f")
    assert [(ll.line, ll.text) for ll in lines] == [
        (2, "key1 value  continued\tmore"), (8, "key2 v # not a comment"), (10, "key4")]
    assert codes(diags) == [("E304", 7)]
    assert "continues the line before it" in diags[0].message
    ll = lines[0]
    assert ll.position(0) == (2, 1)
    assert ll.position(len("key1 value  cont")) == (3, len("  cont") + 1)
    assert ll.position(len("key1 value  continued\tm")) == (5, 3)


def test_a_missing_file_is_e301_with_a_did_you_mean(tmp_path):
    (tmp_path / "badmailfrom").write_text("@spam.example\n")
    m, diags = load_map(str(tmp_path / "badmailfom"), "maps/badmailfom", "access")
    assert m is None and codes(diags) == [("E301", 0)]
    assert "map file maps/badmailfom" in diags[0].message and "did you mean maps/badmailfrom?" in diags[0].message


def test_a_directory_or_fifo_is_not_read(tmp_path):
    m, diags = load_map(str(tmp_path), "dir", "pcre")
    assert m is None and codes(diags) == [("E301", 0)]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    m, diags = load_map(str(fifo), "fifo", "access")          # must not hang
    assert m is None and "not a regular file" in diags[0].message


def test_unknown_format_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        load_map(str(DATA / "access"), "access", "hash")
    with pytest.raises(ValueError):
        map_from_pairs([], "cidr")


def test_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "bom"
    path.write_bytes(b"\xef\xbb\xbfexample.com OK\r\n/x/ ignored\r\n")
    m, diags = load_map(str(path), "bom", "access")
    assert m is not None and not diags
    assert value(m, "example.com", "domain") == "OK"


# ---------------------------------------------------------------------------
# access maps: the Postfix access(5) fixture


@pytest.fixture(scope="module")
def access():
    m, diags = load("access", "access")
    assert diags == []
    assert isinstance(m, AccessMap) and len(m) == 17
    return m


@pytest.mark.parametrize("ip, expected_key", [
    ("192.0.2.1", "192.0.2.1"),             # exact address beats its truncated /24
    ("192.0.2.7", "192.0.2"),               # Postfix truncated form a.b.c
    ("198.51.100.1", "198.51"),             # a.b
    ("203.0.113.5", "203.0.113.0/25"),      # the more specific CIDR wins
    ("203.0.113.200", "203.0.113.0/24"),
    ("10.200.0.1", "10.0.0.0/8"),
    ("2001:db8::25", "2001:db8::25"),       # IPv6 exact
    ("2001:DB8:0:0:0:0:0:25", "2001:db8::25"),   # any spelling of the address
    ("2001:db8:0:1::9", "2001:db8:0:1"),    # IPv6 truncated form, four groups = /64
    ("2001:db8:5::1", "2001:db8::/32"),
    ("::ffff:192.0.2.1", "192.0.2.1"),      # IPv4-mapped: looked up as IPv4
    ("fe80::1%eth0", None),                 # a zone index is ignored
    ("8.8.8.8", None),
    ("not-an-ip", None),
])
def test_access_ip_search_order(access, ip, expected_key):
    assert key(access, ip, "ip") == expected_key


def test_access_ip_hit_carries_value_key_and_line(access):
    assert access.lookup("192.0.2.7", "ip") == MapHit("REJECT listed /24", "192.0.2", 7)
    assert access.lookup("203.0.113.5", "ip") == MapHit("DEFER try later", "203.0.113.0/25", 9)


@pytest.mark.parametrize("domain, expected_key", [
    ("example.net", "example.net"),
    ("mx.example.net", "example.net"),            # a parent domain key matches its subdomains
    ("a.b.mx.example.net", "example.net"),
    ("sub.example.com", "sub.example.com"),       # itself: the plain key
    ("a.sub.example.com", ".sub.example.com"),    # a subdomain: `.sub...` is tried before `sub...`
    ("spam.example", "spam.example."),            # a key's trailing dot is dropped
    ("example.com", None),
    ("net", None),
])
def test_access_domain_search_order(access, domain, expected_key):
    assert key(access, domain, "domain") == expected_key


@pytest.mark.parametrize("address, expected_key", [
    ("joe@example.net", "joe@example.net"),      # user@domain first
    ("bob@example.net", "example.net"),           # then the domain
    ("bob@mx.example.net", "example.net"),        # and its parents
    ("x@example.org", "@example.org"),            # @domain: anyone at that domain
    ("x@sub.example.org", None),                  # ... but not its subdomains
    ("abuse@elsewhere.test", "abuse@"),           # user@ last
    ("abuse@example.net", "example.net"),         # the domain comes before user@
    ("", "<>"),                                   # the null sender
    ("<>", "<>"),
])
def test_access_address_search_order(access, address, expected_key):
    assert key(access, address, "address") == expected_key


def test_access_string_lookup_is_exact(access):
    assert key(access, "example.net", "string") == "example.net"
    assert key(access, "mx.example.net", "string") is None
    assert key(access, ".sub.example.com", "string") == ".sub.example.com"
    assert key(access, "@example.org", "string") == "@example.org"
    assert key(access, "abuse@", "string") == "abuse@"
    assert key(access, "10.0.0.0/8", "string") == "10.0.0.0/8"
    assert key(access, "192.0.2.1", "int") == "192.0.2.1"


def test_access_hits_are_made_once(access):
    first = access.lookup("mx.example.net", "domain")
    assert access.lookup("example.net", "domain") is first


def test_access_entries_give_each_value_with_its_span(access):
    entries = list(access.entries())
    assert entries[0] == ("192.0.2.1", "REJECT listed host", Span.point("access", 6, 17, 18))
    assert entries[-1][0] == "<>" and entries[-1][2].line == 26


# ---------------------------------------------------------------------------
# access maps: which key wins when several match


def test_address_precedence_step_by_step():
    keys = [("joe@mx.example.com", "1 address"), ("@mx.example.com", "2 at-domain"),
            ("mx.example.com", "3 domain"), (".example.com", "4 dot-parent"), ("example.com", "5 parent"),
            (".com", "6 dot-tld"), ("joe@", "7 user")]
    for n in range(len(keys)):
        m, diags = map_from_pairs(pairs(*keys[n:]))
        assert not diags
        assert value(m, "joe@mx.example.com", "address") == keys[n][1]


def test_recipient_delimiter_lookups():
    keys = pairs(("joe+list@example.com", "1"), ("joe@example.com", "2"), ("example.com", "3"),
                 ("joe+list@", "4"), ("joe@", "5"))
    m, _ = map_from_pairs(keys, recipient_delimiter="+")
    assert value(m, "joe+list@example.com", "address") == "1"
    assert value(m, "joe+other@example.com", "address") == "2"    # user@domain for user+ext@domain
    m, _ = map_from_pairs(keys[2:], recipient_delimiter="+")
    assert value(m, "joe+list@example.com", "address") == "3"
    assert value(m, "joe+list@other.test", "address") == "4"
    assert value(m, "joe+x@other.test", "address") == "5"       # then user@ without the extension
    off, _ = map_from_pairs(keys)                                # off by default, as in Postfix
    assert value(off, "joe+other@example.com", "address") == "3"
    assert value(off, "joe+x@other.test", "address") is None
    dash, _ = map_from_pairs(keys, recipient_delimiter="+-")     # each character a delimiter
    assert value(dash, "joe-x@example.com", "address") == "2"


def test_domain_precedence_nearest_first():
    m, _ = map_from_pairs(pairs(("example.com", "far"), ("b.example.com", "near"), (".a.b.example.com", "sub")))
    assert value(m, "x.a.b.example.com", "domain") == "sub"
    assert value(m, "a.b.example.com", "domain") == "near"       # `.a.b...` is subdomains only
    assert value(m, "c.example.com", "domain") == "far"
    star, _ = map_from_pairs(pairs(("*.example.com", "subs")))
    assert value(star, "a.example.com", "domain") == "subs" and value(star, "example.com", "domain") is None


def test_ip_precedence_most_specific_network_first():
    m, _ = map_from_pairs(pairs(("10", "/8"), ("10.1.", "/16"), ("10.1.2.0/24", "/24 cidr"),
                                ("10.1.2.128/25", "/25"), ("10.1.2.200", "/32")))
    assert [value(m, ip, "ip") for ip in ("10.1.2.200", "10.1.2.201", "10.1.2.1", "10.1.3.1", "10.9.9.9")] == \
        ["/32", "/25", "/24 cidr", "/16", "/8"]
    assert value(m, "11.0.0.1", "ip") is None
    everything, _ = map_from_pairs(pairs(("0.0.0.0/0", "any v4"), ("::/0", "any v6")))
    assert value(everything, "192.0.2.1", "ip") == "any v4" and value(everything, "2001:db8::1", "ip") == "any v6"


def test_a_number_key_is_text_and_a_postfix_network():
    m, _ = map_from_pairs(pairs(("25", "port or 25/8")))
    assert value(m, "25", "int") == "port or 25/8"
    assert value(m, "25.1.2.3", "ip") == "port or 25/8"


# ---------------------------------------------------------------------------
# qpsmtpd list files


def test_qpsmtpd_relayclients():
    m, diags = load("relayclients", "access")
    assert diags == []
    assert [key(m, ip, "ip") for ip in ("127.0.0.1", "192.168.44.5", "10.1.2.3", "10.1.3.3", "172.31.255.1")] == \
        ["127.0.0.1", "192.168.", "10.1.2.", None, "172.16.0.0/12"]
    # `2001:0DB8:0000:` is a prefix of qpsmtpd's expanded address text; here
    # it is the network 2001:db8::/48, matched by any spelling.
    for ip in ("2001:db8::1", "2001:0db8:0000:0000:0000:0000:0000:0001", "2001:DB8:0:ffff::1"):
        assert key(m, ip, "ip") == "2001:0DB8:0000:"
    assert key(m, "2001:db8:1::1", "ip") is None
    assert key(m, "fd00:abc:1::5", "ip") == "fd00:0abc:"       # groups are numbers: 0abc = abc
    assert value(m, "::1", "ip") == ""                          # an entry without a reason: value ""


def test_qpsmtpd_badmailfrom():
    m, diags = load("badmailfrom", "access")
    assert diags == []
    assert value(m, "spammer@example.com", "address") == "Sorry, we don't take mail from you"
    assert value(m, "anyone@spam.example", "address") == "Your whole domain is blocked"
    assert value(m, "anyone@mx.spam.example", "address") is None     # @domain: not its subdomains
    assert value(m, "bounce-me@example.net", "address") == ""
    assert m.lookup("info@newsletter.example", "address") == MapHit("unsubscribed", "<info@newsletter.example>", 5)
    assert key(m, "x@phish.example", "address") == "*@phish.example"


# ---------------------------------------------------------------------------
# access maps: diagnostics


def test_access_malformed_keys_are_e304_with_their_line(tmp_path):
    text = "\n".join([
        "ok.example OK",                 # 1
        "10.0.0.0/33 REJECT",            # 2 prefix too long
        "10.1.2.3/8 REJECT",             # 3 host bits
        "1.2.3.256 REJECT",              # 4
        "1.2.3.4. REJECT",               # 5
        "01.2.3.4 REJECT",               # 6 leading zero
        "*spam.example REJECT",          # 7 a pattern
        "joe@bad..domain REJECT",        # 8
        "@ REJECT",                      # 9
        ".bad..example REJECT",          # 10
        "2001:db8:::1 REJECT",           # 11
        "10.2.0.0/16 OK",                # 12 good
        "mx*.example.com REJECT",        # 13
        "joe*@example.com REJECT",       # 14
        "10.* REJECT",                   # 15
        "text/plain OK",                 # 16 not a network: a text key
    ]) + "\n"
    m, diags = table(tmp_path, text, "access")
    assert codes(diags) == [("E304", n) for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15)]
    assert all(d.span.column == 1 for d in diags)
    by_line = {d.span.line: d for d in diags}
    assert "host bits" in by_line[3].message and "10.0.0.0/8" in by_line[3].help
    assert "`spam.example`" in by_line[7].help and "`.spam.example`" in by_line[7].help
    assert "@example.com" in by_line[14].help
    assert "10.0.0.0/8" in by_line[15].help
    assert len(m) == 3 and value(m, "10.2.3.4", "ip") == "OK" and value(m, "text/plain") == "OK"


def test_access_invisible_character_is_named(tmp_path):
    m, diags = table(tmp_path, "ok.example OK\n10.0.0.0/8\u200b REJECT\n", "access")
    assert codes(diags) == [("E304", 2)]
    assert "ZERO WIDTH SPACE" in diags[0].help


def test_access_duplicates_are_w303_and_the_first_counts(tmp_path):
    text = ("192.0.2 first\n"
            "192.0.2.0/24 second\n"
            "192.0.2. third\n"
            "Example.COM first\n"
            "example.com. second\n"
            "@x.example first\n"
            "*@x.example second\n"
            "2001:db8::/32 first\n"
            "2001:db8 second\n")
    m, diags = table(tmp_path, text, "access")
    assert codes(diags) == [("W303", n) for n in (2, 3, 5, 7, 9)]
    assert "first on line 1" in diags[0].message and "as `192.0.2`" in diags[0].message
    assert value(m, "192.0.2.9", "ip") == "first"
    assert value(m, "example.com", "domain") == "first"
    assert value(m, "a@x.example", "address") == "first"
    assert value(m, "2001:db8::1", "ip") == "first"


def test_access_values_keep_hashes_and_continuations(tmp_path):
    m, diags = table(tmp_path, "example.com REJECT see ticket #12\n"
                               "example.net 550 5.7.1 a long\n"
                               "    reply text\n", "access")
    assert not diags
    assert value(m, "example.com", "domain") == "REJECT see ticket #12"
    assert value(m, "example.net", "domain") == "550 5.7.1 a long    reply text"
    spans = [span for _, _, span in m.entries()]
    assert (spans[1].line, spans[1].column) == (2, 13)


def test_inline_access_map_lines_and_spans():
    m, diags = map_from_pairs(pairs(("example.com", "OK"), ("10.0.0.0/33", "REJECT"), ("10.0.0.0/8", "DUNNO")))
    assert m.lookup("example.com", "domain") == MapHit("OK", "example.com", 1)
    assert m.lookup("10.1.1.1", "ip") == MapHit("DUNNO", "10.0.0.0/8", 3)     # index + 1
    assert codes(diags) == [("E304", 11)]                                    # the entry's own span
    assert diags[0].span == Span.point("site.rules", 11, 5, len("10.0.0.0/33"))
    assert [span.line for _, _, span in m.entries()] == [10, 12]
    empty, diags = map_from_pairs([])
    assert len(empty) == 0 and empty.lookup("x", "string") is None and not diags


# ---------------------------------------------------------------------------
# regexp and pcre tables


@pytest.fixture(scope="module")
def fqrdns():
    m, diags = load("fqrdns.pcre", "pcre")
    assert diags == []
    assert isinstance(m, RegexpMap) and len(m) == 1500
    return m


def _reference_rules(path: Path):
    """The fixture's patterns with Python's re, in file order (the table has
    nothing Python reads differently)."""
    rules = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("/"):
            end = line.index("/ REJECT")
            rules.append((re.compile(line[1:end], re.I | re.S), line[end + 2:].strip(), line[:end + 1], number))
    return rules


def test_fqrdns_table_answers_as_a_walk_in_file_order(fqrdns):
    rules = _reference_rules(DATA / "fqrdns.pcre")
    domains = [v.rpartition("(")[2].rstrip(")") for _, v, _, _ in rules]
    rng = random.Random(7)
    hits = 0
    for _ in range(1500):
        d = rng.choice(domains) if rng.random() < 0.7 else f"example{rng.randint(1, 99)}.org"
        a, b, c, e = (rng.randint(0, 255) for _ in range(4))
        subject = rng.choice([f"{a}-{b}-{c}-{e}.dsl.{d}", f"dsl{a}.pool.{d}", f"mail.{d}",
                              f"ip-{a}-{b}-{c}-{e}.static.{d}", f"c-{a}-{b}-{c}-{e}.hsd1.ca.{d}",
                              f"host-{a}.{b}.{c}.{e}.{d}", f"ppp-{a}-{b}.cust{c}.{d}"])
        expected = next(((v, k, n) for r, v, k, n in rules if r.search(subject)), None)
        hit = fqrdns.lookup(subject, "domain")
        assert (None if hit is None else (hit.value, hit.key, hit.line)) == expected, subject
        hits += hit is not None
    assert hits > 50          # the sample exercises the table


def test_a_table_too_large_for_one_set_is_split(monkeypatch, fqrdns):
    import smtpfw.maps.regexp as regexp_module

    sizes: list[int] = []
    real = regexp_module.set_matcher

    def counting(patterns):
        sizes.append(len(patterns))
        return real(patterns)

    monkeypatch.setattr("smtpfw.maps.regex.SET_MAX_MEM", 2 << 20)     # fqrdns.pcre needs about 5 MiB
    monkeypatch.setattr(regexp_module, "set_matcher", counting)
    small, diags = load("fqrdns.pcre", "pcre")
    assert diags == [] and sizes[0] == 1500 and len(sizes) > 3
    for name in ("dsl-1234.pool.linhub.net.au", "1-2-3-4.client.oxzonhub.co.uk", "mail.example.org",
                 "adsl12ab.dial.zonlinge.net"):
        assert small.lookup(name, "domain") == fqrdns.lookup(name, "domain")
    assert small.lookup("adsl12ab.dial.zonlinge.net", "domain").line == 1532      # in the last part


def test_fqrdns_example_hit(fqrdns):
    hit = fqrdns.lookup("dsl-1234.pool.linhub.net.au", "domain")
    assert hit == MapHit("REJECT Generic - Please relay via ISP (linhub.net.au)",
                         r"/^(dhcp|dsl|cable|ppp|pool)[-.]?\d+[-.].*\.linhub\.net\.au$/", 5)
    assert fqrdns.lookup("mail.linhub.net.au", "domain") is None


@pytest.fixture(scope="module")
def helo():
    m, diags = load("helo_access.pcre", "pcre")
    assert diags == []
    return m


@pytest.mark.parametrize("helo_name, expected", [
    ("10.1.2.3", "REJECT ACCESS DENIED. Your HELO (10.1.2.3) is a private address"),          # $1
    ("[192.168.0.1]", "REJECT ACCESS DENIED. Your HELO (192.168.0.1) is a private address"),  # ${1}
    ("172.20.1.1", "REJECT ACCESS DENIED. Your HELO (172.20.1.1) is a private address"),      # $(1)
    ("127.0.0.1", "REJECT ACCESS DENIED. Your HELO is a loopback address"),
    ("mail.example.org", "REJECT Spoofed HELO: mail.example.org is us"),
    ("ylmf-pc", "REJECT HELO is not a fully qualified domain name"),                         # !/\./
    ("dsl-12.foo.example", 'REJECT Dynamic HELO (matched "dsl"): please relay via  your provider\'s server'),
    ("dynamic.partner.example", "OK"),        # the `if !/partner/` block does not apply to it
    ("mail.good.example", None),
])
def test_helo_access_pcre(helo, helo_name, expected):
    assert value(helo, helo_name, "domain") == expected


def test_helo_access_lines(helo):
    assert helo.lookup("ylmf-pc", "domain") == MapHit("REJECT HELO is not a fully qualified domain name",
                                                      r"!/\./", 15)
    assert helo.lookup("dsl-1.x.example", "domain").line == 20


@pytest.fixture(scope="module")
def rdns():
    m, diags = load("rdns.regexp", "regexp")
    assert diags == []
    return m


@pytest.mark.parametrize("name, expected_line", [
    ("unknown", 4),
    ("1-2-3-4.isp.example", 5),
    ("host-12.dyn.isp.example", 6),     # [[:alpha:]] and [[:digit:]]
    ("mx2.example.com", 7),
    ("mail.foo.example", 8),            # case-sensitive (i toggled), but folded values are lower-case
    ("www.example.net", 9),             # /pattern1/!/pattern2/: the first occurs, the second not
    ("mx.b.example.net", None),         # ... the second occurs too
    ("mail1.test", 10),                 # x: basic syntax, \( \) a group
    ("mail(1).test", None),
])
def test_rdns_regexp(rdns, name, expected_line):
    hit = rdns.lookup(name, "domain")
    assert (None if hit is None else hit.line) == expected_line


def test_regexp_substitution_from_posix_pattern(rdns):
    assert value(rdns, "host-12.dyn.isp.example") == "REJECT dynamic (host) address"


def test_first_match_in_file_order_and_negation(tmp_path):
    m, diags = table(tmp_path, "/b/ second-listed-first\n"
                               "/a/ a\n"
                               "!/c/ no c\n"
                               "/c/ c\n", "pcre")
    assert not diags
    assert value(m, "ab") == "second-listed-first"
    assert value(m, "a") == "a"
    assert value(m, "x") == "no c"
    assert value(m, "xc") == "c"


def test_if_endif_nest_and_negate(tmp_path):
    text = ("if /\\.example$/\n"           # 1
            "if !/^mx/\n"                  # 2
            "/^a/ a, not mx, in example\n"  # 3
            "endif\n"                      # 4
            "/^mx/ mx in example\n"        # 5
            "ENDIF\n"                      # 6
            "/./ anything else\n")         # 7
    m, diags = table(tmp_path, text, "pcre")
    assert not diags
    assert m.lookup("a.example", "domain") == MapHit("a, not mx, in example", "/^a/", 3)
    assert value(m, "amx.example") == "a, not mx, in example"
    assert value(m, "mxa.example") == "mx in example"
    assert value(m, "b.example") == "anything else"
    assert value(m, "a.example.org") == "anything else"
    assert len(m) == 3


def test_negated_first_rule_before_set_hits(tmp_path):
    m, _ = table(tmp_path, "!/^[a-z]/ not a letter first\n/x/ x\n", "pcre")
    assert value(m, "1x") == "not a letter first"
    assert value(m, "ax") == "x"
    assert value(m, "ab") is None


def test_substitution_forms(tmp_path):
    m, diags = table(tmp_path, r"/^(\w+)-(\w*)-(\d+)?/ $1|${2}|$(3)|$$1|${1}x|cost $$5" + "\n", "pcre")
    assert not diags
    assert value(m, "ab-cd-12") == "ab|cd|12|$1|abx|cost $5"
    assert value(m, "ab--x") == "ab|||$1|abx|cost $5"      # empty and unset groups give ""
    m, _ = table(tmp_path, "/x/ costs $$10\n", "regexp")
    assert value(m, "x") == "costs $10"
    many, _ = table(tmp_path, "/(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)/ $10$1\n", "pcre")
    assert value(many, "abcdefghij") == "ja"


def test_pcre_flags(tmp_path):
    m, diags = table(tmp_path, "\n".join([
        "/^ABC$/i case-sensitive",       # never matches a folded value
        "/^a b c$/x extended",
        "/^x.y$/ dotall by default",
        "/^p.q$/s dot without newline",
        "/^line2$/m multiline",
        "/b.*/A anchored",
        "/^(a+?)(a*)$/U ungreedy: $1",
        "/^e$/EX no-ops",
    ]) + "\n", "pcre")
    assert not diags
    assert value(m, "abc") == "extended"
    assert value(m, "x\ny") == "dotall by default"
    assert value(m, "p\nq") is None and value(m, "p-q") == "dot without newline"
    assert value(m, "line1\nline2") == "multiline"
    assert value(m, "bcd") == "anchored" and value(m, "abcd") is None
    assert value(m, "aaa") == "ungreedy: aaa"      # U swaps greedy and lazy
    assert value(m, "e") == "no-ops"


def test_regexp_flags(tmp_path):
    m, diags = table(tmp_path, "/^x.y$/ dot matches newline by default\n"
                               "/^line2$/m multiline\n"
                               "/^a+$/xx toggled twice\n", "regexp")
    assert not diags
    assert value(m, "x\ny") == "dot matches newline by default"
    assert value(m, "line1\nline2") == "multiline"
    assert value(m, "aaa") == "toggled twice"


def test_other_delimiters_and_escaped_delimiter(tmp_path):
    m, diags = table(tmp_path, "|a/b| slash\n/c\\/d/ escaped\n!!/e/ double negation\n", "pcre")
    assert not diags
    assert value(m, "a/b") == "slash" and value(m, "c/d") == "escaped" and value(m, "e") == "double negation"


def test_posix_leftmost_longest_submatch(tmp_path):
    m, _ = table(tmp_path, "/^x(a|ab)/ $1\n", "regexp")
    p, _ = table(tmp_path, "/^x(a|ab)/ $1\n", "pcre")
    assert value(m, "xab") == "ab"          # POSIX: the longest match
    assert value(p, "xab") == "a"           # Perl: the first alternative that works


def test_regexp_diagnostics_with_line_numbers(tmp_path):
    text = "\n".join([
        "/ok/ fine",                         # 1
        "/unclosed REJECT",                  # 2  no closing delimiter
        "/x/q REJECT",                       # 3  unknown flag
        "/no-result/",                       # 4
        "REJECT /x/",                        # 5  not a pattern line
        "/(a)/ $2",                          # 6  $2 beyond the groups
        "!/(a)/ $1",                         # 7  $n in a negated line
        "/a/ $x",                            # 8  non-numeric
        "/a/ $0",                            # 9
        "/a/ ${1",                           # 10 not closed
        "/a/ 5$",                            # 11 lone $
        "endif",                             # 12 without if
        "/(a)\\1/ backreference",            # 13 E404
        "/(abc/ REJECT",                     # 14 E401
        "/ok/ fine",                         # 15 W303
        "if /x/ extra",                      # 16 warning, if still applies
        "/y/ y inside",                      # 17
        "endif trailing",                    # 18 warning
        "if /(?<=a)b/",                      # 19 E404: the block never applies
        "/z/ z inside a dead block",         # 20
        "endif",                             # 21
        "if /open/",                         # 22 no endif
        "/w/ w",                             # 23
    ]) + "\n"
    m, diags = table(tmp_path, text, "pcre")
    assert codes(diags) == [("E304", 2), ("E304", 3), ("E304", 4), ("E304", 5), ("E304", 6), ("E304", 7),
                            ("E304", 8), ("E304", 9), ("E304", 10), ("E304", 11), ("E304", 12), ("E404", 13),
                            ("E401", 14), ("W303", 15), ("E304", 16), ("E304", 18), ("E404", 19),
                            ("E304", 22)]
    d = {(str(x.code), x.span.line): x for x in diags}
    assert d["E304", 3].span.column == 4 and "i, m, s, x, A, E, U and X" in d["E304", 3].help
    assert "no closing `/`" in d["E304", 2].message
    assert "no result" in d["E304", 4].message
    assert d["E304", 6].message == "`$2` in the result, but the pattern has 1 group"
    assert "negated" in d["E304", 7].message
    assert "$$" in d["E304", 11].help
    assert d["E404", 13].span.column == 5 and "alternatives" in d["E404", 13].help
    assert d["E304", 16].level is Severity.WARNING and d["E304", 18].level is Severity.WARNING
    assert d["E304", 12].level is Severity.ERROR
    assert "already on line 1" in d["W303", 15].message
    assert "`endif`" in d["E304", 22].message
    assert value(m, "ok") == "fine"
    assert value(m, "xy") == "y inside"
    assert value(m, "z") is None                 # inside the unusable if
    assert value(m, "open w") == "w"             # an if without endif runs to the end
    assert value(m, "w") is None


def test_regexp_posix_specific_diagnostics(tmp_path):
    m, diags = table(tmp_path, "/^\\d+$/ digits\n"
                               "/(?:a)/ perl group\n"
                               "/\\<word/ word start\n"
                               "/[[:alpah:]]/ typo\n"
                               "/[\\.]x/ backslash or dot\n", "regexp")
    assert codes(diags) == [("E401", 1), ("E401", 2), ("E404", 3), ("E401", 4)]
    assert "letter `d`" in diags[0].message and "[0-9]" in diags[0].help and diags[0].span.column == 3
    assert "pcre: table" in diags[1].help
    assert "\\b" in diags[2].help
    assert value(m, ".x") == "backslash or dot" and value(m, "\\x") == "backslash or dot"


def test_continuation_lines_in_pattern_tables(tmp_path):
    m, diags = table(tmp_path, "/^a\n   b$/x joined with\n  the next line\n", "pcre")
    assert not diags
    assert m.lookup("ab", "string") == MapHit("joined with  the next line", "/^a   b$/x", 1)


def test_inline_pattern_map():
    m, diags = map_from_pairs(pairs(("/^dsl-(\\d+)/", "REJECT dynamic $1"), ("!/\\./", "REJECT bare"),
                                    ("/(?=x)/", "bad"), ("if /x/", "no"), ("/a/ b", "text after")), "pcre")
    assert m.lookup("dsl-12.example", "domain") == MapHit("REJECT dynamic 12", "/^dsl-(\\d+)/", 1)
    assert m.lookup("bare", "domain") == MapHit("REJECT bare", "!/\\./", 2)
    assert codes(diags) == [("E404", 12), ("E304", 13), ("E304", 14)]
    assert diags[0].span == Span.point("site.rules", 12, 5, len("/(?=x)/"))
    assert [k for k, _, _ in m.entries()] == ["/^dsl-(\\d+)/", "!/\\./"]


def test_empty_tables(tmp_path):
    m, diags = table(tmp_path, "# nothing\n\n", "pcre")
    assert len(m) == 0 and not diags and m.lookup("x", "string") is None
    m, diags = table(tmp_path, "if /x/\nendif\n", "regexp")
    assert len(m) == 0 and not diags and m.lookup("x", "string") is None


def test_pattern_map_entries_give_result_spans(helo):
    entries = list(helo.entries())
    assert entries[0][1] == "REJECT ACCESS DENIED. Your HELO ($1) is a private address"
    assert (entries[0][2].line, entries[0][2].column) == (5, len(r"/^\[?(10\.\d{1,3}\.\d{1,3}\.\d{1,3})\]?$/ ") + 1)


def _random_table(rng: random.Random):
    """Random rules with negations and nested ifs, as text and as a
    reference: [(kind, negated, pattern, result)]."""
    atoms = ["a", "b", "c", "ab", "^a", "c$", "b.c", "[ab]c"]
    lines: list[str] = []
    depth = 0
    for n in range(rng.randint(1, 25)):
        choice = rng.random()
        pattern = rng.choice(atoms)
        neg = "!" if rng.random() < 0.3 else ""
        if choice < 0.15 and depth < 3:
            lines.append(f"if {neg}/{pattern}/")
            depth += 1
        elif choice < 0.25 and depth:
            lines.append("endif")
            depth -= 1
        else:
            lines.append(f"{neg}/{pattern}/ r{n}")
    lines.extend(["endif"] * depth)
    return lines


def _reference_lookup(lines: list[str], subject: str) -> str | None:
    """Postfix's dict_pcre walk, literally."""
    skipping = 0          # depth of failed ifs we are inside
    depth = 0
    for line in lines:
        if line == "endif":
            if skipping and skipping == depth:
                skipping = 0
            depth -= 1
            continue
        neg = line.startswith("!") or line.startswith("if !")
        body = line.split("/")[1]
        matched = bool(re.search(body, subject, re.I | re.S)) != neg
        if line.startswith("if"):
            depth += 1
            if not skipping and not matched:
                skipping = depth
            continue
        if not skipping and matched:
            return line.rsplit(" ", 1)[1]
    return None


def test_set_walk_equals_postfix_walk_on_random_tables(tmp_path):
    rng = random.Random(12345)
    subjects = ["", "a", "b", "c", "ab", "abc", "bac", "cab", "xbxc", "aac", "bbc", "ca", "zzz"]
    for round_ in range(200):
        lines = _random_table(rng)
        path = tmp_path / f"r{round_}.pcre"
        path.write_text("\n".join(lines) + "\n")
        m, diags = load_map(str(path), path.name, "pcre")
        assert m is not None
        assert all(d.code == Code.W303_LIST_ENTRY_DUPLICATE for d in diags), diags
        dups = {d.span.line for d in diags}
        kept = [line if n not in dups else "/(?!)/ never" for n, line in enumerate(lines, 1)]
        for s in subjects:
            hit = m.lookup(s, "string")
            expected = _reference_lookup([k for k in kept if not k.startswith("/(?!)/")], s)
            assert (hit.value if hit else None) == expected, (lines, s)


# ---------------------------------------------------------------------------
# compile_regex: rule regexes on RE2


def test_compile_regex_searches_case_insensitively_by_default():
    r, err = compile_regex(r"^mx\.example\.org$")
    assert err is None and r is not None
    assert r.search("MX.example.ORG") and not r.search("mx.example.org.evil")
    cs, _ = compile_regex("^MX", ignore_case=False)
    assert cs is not None and cs.search("MX1") and not cs.search("mx1")
    uni, _ = compile_regex("^école$")
    assert uni is not None and uni.search("ÉCOLE")


def test_compile_regex_captures():
    r, _ = compile_regex(r"(\w+)@(?P<domain>[a-z.]+)|(x)")
    assert r is not None and r.groups == 3 and r.groupindex == {"domain": 2}
    assert r.captures("mail from Joe@Example.com!") == ("Joe@Example.com", "Joe", "Example.com", "")
    assert r.captures("nothing") is None
    u, _ = compile_regex("(é+)")
    assert u is not None and u.captures("caféé!") == ("éé", "éé")


@pytest.mark.parametrize("source, text, matches", [
    (r"a\Z", "xa", True),                        # \Z -> \z
    (r"^a{,2}$", "aa", True),                    # Python's {,n}
    (r"^a{,2}$", "aaa", False),
    (r"(?<name>x)y", "xy", True),                # (?<name>...) -> (?P<name>...)
    ("(?x) a  b  # a comment", "ab", True),      # leading (?x)
    (r"\u00e9\N{LATIN SMALL LETTER A}", "éa", True),
    (r"(?#a comment)abc", "abc", True),
    (r"(?a)\w+", "abc", True),
    (r"[[:digit:]]+", "42", True),
    (r"\Qa.b\E", "a.b", True),
    (r"\Qa.b\E", "axb", False),
    (r"\101", "a", True),                        # octal
    (r"[\b]", "\b", True),                      # a backspace in a class
    (r"^\p{Greek}+$", "αβγ", True),
    (r"\x{41}b", "ab", True),
])
def test_compile_regex_translations(source, text, matches):
    r, err = compile_regex(source)
    assert err is None, err
    assert r is not None and r.search(text) is matches


@pytest.mark.parametrize("source, texts", [
    (r"^\[?[0-9.]+\]?$", ["mail1.example.org", "[192.0.2.1]", "192.0.2.1", "1.2.3.4\n", "x1", "1x", ""]),
    ("[%!@]", ["rcpt1", "a%b", "a!b", "a@b", ""]),
    ("(?i)viagra|casino", ["report 1", "VIAGRA", "Casino", "vi agra"]),
    ("k", ["K", "k", "\u212a", "x"]),                  # the Kelvin sign folds to k (RE2 decides: not ASCII)
    ("(?-i:K)", ["k", "K", "\u212a"]),
    ("\u017f", ["s", "S", "x"]),                       # a long s in the pattern matches s: no atom from it
    ("s", ["\u017f", "S", "x"]),                       # and s matches a long s (RE2 decides: not ASCII)
    ("[[:digit:]]+", ["42", "a", "[:d"]),               # Python reads it as a nested set: no prefilter
    ("(?m)^b$", ["a\nb", "b\nc", "ab"]),               # ^ and $ at every line
    ("^abc$", ["abc", "abc\n", "xabc"]),               # RE2's $ is the end of the text
    ("\\Aab|cd\\Z", ["abx", "xcd", "xabx"]),
    ("(ab|cd)+x", ["abx", "cdcdx", "adx", "x"]),
    ("a{0,2}b", ["b", "ab", "x"]),
    (r"\A(?s:.*\.dyn\..*)\Z", ["a.dyn.b", "a.dynb", "A.DYN.B"]),
])
def test_prefilter_answers_as_re2(source, texts):
    """What a rule's pattern test answers without calling RE2 (a text that
    lacks every match's literal, or first or last character) is what RE2
    answers."""
    r, err = compile_regex(source)
    assert r is not None, err
    for text in texts:
        assert r.search(text) is bool(r._searcher()(text.encode("utf-8", "surrogatepass"))), (source, text)


def test_prefilter_is_used_for_common_patterns():
    for source in (r"^\[?[0-9.]+\]?$", "[%!@]", "(?i)viagra|casino", r"\.dyn\.", r"^mx[0-9]+\.example\.net$"):
        r, _ = compile_regex(source)
        assert r is not None and r._needs is not None, source
    for source in ("a*", ".", r"\d+", "[[:digit:]]+", r"\p{Greek}"):
        r, _ = compile_regex(source)
        assert r is not None and r._needs is None, source


def test_prefilter_random_patterns_agree_with_re2():
    rnd = random.Random(14)
    pieces = ["a", "b", "K", "s", r"\.", "-", "@", "[ab]", "[a-c]", "[%!@]", "[^a]", "[0-9.]", r"\d", ".",
              "(a|bc)", "(?:x|)", "(?-i:S)", r"\b", "a*", "b+", "k?", "(ab)+", "[sk]{1,2}"]
    alphabet = "abcKks.-@%!01 \n\u212a\u017f"
    for _ in range(400):
        source = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 5)))
        source = rnd.choice(["", "^", "(?i)", "(?m)^"]) + source + rnd.choice(["", "$", "|zz"])
        r, _ = compile_regex(source)
        if r is None:
            continue
        raw = r._searcher()
        for _ in range(40):
            text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8)))
            assert r.search(text) is bool(raw(text.encode("utf-8", "surrogatepass"))), (source, text)


@pytest.mark.parametrize("source, dialect, code, offset, help_has", [
    (r"(a|b)\1", "python", "E404", 5, "alternatives"),
    (r"foo(?=bar)", "python", "E404", 3, "foobar"),
    (r"foo(?!bar)", "python", "E404", 3, "not matches"),
    (r"foo(?!bar)", "pcre", "E404", 3, "if !/"),
    (r"(?<=@)example", "python", "E404", 0, "@example"),
    (r"(?<!x)y", "python", "E404", 0, "separate condition"),
    (r"(?>a+)b", "python", "E404", 0, "(?:...)"),
    (r"a++b", "python", "E404", 2, "a+"),
    (r"a{2}+", "pcre", "E404", 4, "a+"),
    (r"(?P<x>a)(?P=x)", "python", "E404", 8, "alternatives"),
    (r"\g{1}", "pcre", "E404", 0, "alternatives"),
    (r"\k<n>", "pcre", "E404", 0, "alternatives"),
    (r"(?(1)a|b)", "pcre", "E404", 0, "alternatives"),
    (r"(?R)", "pcre", "E404", 0, "fixed depth"),
    (r"(?|a)", "pcre", "E404", 0, "(?:...)"),
    (r"(*SKIP)a", "pcre", "E404", 0, "remove it"),
    (r"a\Kb", "pcre", "E404", 1, "delete it"),
    (r"\h+", "pcre", "E404", 0, "[ \\t]"),
    (r"[\h]", "pcre", "E404", 1, "[ \\t]"),
    (r"\R", "pcre", "E404", 0, "\\r\\n"),
    (r"\e", "pcre", "E404", 0, "\\x1b"),
    (r"\Gx", "pcre", "E404", 0, "^"),
    (r"a{1001}", "python", "E404", 1, "1000"),
    (r"a(?x) b", "python", "E404", 1, "remove the spaces"),
    (r"(abc", "python", "E401", 0, None),
    (r"[a-", "python", "E401", 0, "]"),
    (r"*a", "python", "E401", 0, None),
    (r"\h", "python", "E401", 0, "[ \\t]"),       # not Python syntax at all: invalid, with the hint
    (r"(?L)a", "python", "E401", 0, None),
    (r"[[:alpah:]]", "python", "E401", 1, "alpha"),
    (r"x\1", "posix", "E404", 1, "alternatives"),
    (r"\d", "posix", "E401", 0, "[0-9]"),
    (r"[[.ch.]]", "posix", "E404", 1, "characters"),
    (r"a{2}*", "posix", "E404", 4, "(a{2,3})*"),
    (r"a*{2}", "posix", "E404", 2, "(a{2,3})*"),
    ("a\\", "python", "E401", 1, "\\\\"),
    (r"a{2,1}", "python", "E401", 1, "{1,2}"),
    (r"(a)\12", "python", "E404", 3, "alternatives"),
])
def test_compile_regex_errors(source, dialect, code, offset, help_has):
    r, err = compile_regex(source, dialect=dialect)
    assert r is None and err is not None
    assert str(err.code) == code, err
    assert err.not_linear is (code == "E404")
    assert err.offset == offset, err
    if help_has is not None:
        assert err.help is not None and help_has in err.help, err.help
    diag = err.diagnostic(Span.point("site.rules", 3, 20))
    assert diag.code == code and diag.span.line == 3 and diag.help == err.help


@pytest.mark.parametrize("source, expected", [
    (r"[\.]", r"[\\.]"),                        # a backslash in brackets is itself
    (r"[]a-]", r"[\]a-]"),
    (r"[^]x]", r"[^\]x]"),
    (r"[[=e=][.-.]]", r"[e\-]"),
    (r"a+?", r"a*"),                            # POSIX: (a+)?
    (r"a*+", r"a*"),
    (r"a??", r"a?"),
    (r"a{,3}", r"a{0,3}"),
    (r"\`x\'", r"\Ax\z"),
    (r"\w\W\s\S\b\B", r"\w\W\s\S\b\B"),
    (r"\.\/\-", r"\.\/\-"),
])
def test_posix_translation(source, expected):
    r, err = compile_pattern(source, "posix", ignore_case=False)
    assert err is None, err
    assert r is not None and r.pattern == expected


@pytest.mark.parametrize("source, expected", [
    (r"\(a\)*b\{2,3\}{x}", r"(a)*b{2,3}\{x\}"),   # * is an operator, braces need \{ \}
    (r"\(ab\)\{2\}", r"(ab){2}"),
    (r"a|b+?(c)", r"a\|b\+\?\(c\)"),
    (r"^*a$b$", r"^\*a\$b$"),
    (r"\(^a\|b$\)", r"(^a|b$)"),
    (r"a\+\?", r"a*"),                           # GNU \+ \? combine as in ERE
])
def test_posix_basic_translation(source, expected):
    r, err = compile_pattern(source, "posix", ignore_case=False, basic=True)
    assert err is None, err
    assert r is not None and r.pattern == expected


def test_pcre_keeps_brace_comma_literal():
    r, err = compile_pattern(r"^a{,2}$", "pcre")
    assert err is None and r is not None
    assert r.search("a{,2}") and not r.search("aa")


def test_undecodable_text_does_not_break_lookups():
    text = b"\xff\xfex".decode("utf-8", "surrogateescape")     # as a raw SMTP argument may arrive
    r, _ = compile_regex("(.)x$")
    assert r is not None and r.search(text) and r.captures(text) is not None
    m, _ = map_from_pairs(pairs(("/(x)$/", "got $1")), "pcre")
    assert value(m, text) == "got x"


def test_unknown_dialect_is_a_programming_error():
    with pytest.raises(ValueError):
        compile_regex("a", dialect="perl")
