"""Lint never crashes: random text, mutated shipped rule files, binary,
deep nesting and huge files all come back as a list of Diagnostics.

200 examples per property by default; SMTPFW_SOAK=1 runs 5000.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpfw.diagnostics import CODES, Diagnostic, Span
from smtpfw.lang.check import check_ruleset
from smtpfw.lint_output import format_json, format_text

REPO = Path(__file__).resolve().parent.parent
SOAK = os.environ.get("SMTPFW_SOAK") == "1"
FUZZ = settings(max_examples=5000 if SOAK else 200, deadline=None, derandomize=not SOAK,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

SEEDS = sorted((REPO / "rules").rglob("*.rules")) + sorted((REPO / "tests" / "lint").glob("*.rules"))
SEED_TEXTS = [p.read_text(encoding="utf-8", errors="replace") for p in SEEDS]
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\s+|[\w.:/-]+|.', re.S)
SEED_TOKENS = [_TOKEN.findall(t) for t in SEED_TEXTS]
VOCAB = sorted({tok for toks in SEED_TOKENS for tok in toks if not tok.isspace()}) + [
    "(", ")", "[", "]", ",", ":", "=", "!=", "<", ">=", "not", "and", "or", "in", "within", "matches",
    "like", "listed", "lookup", "failed", "codes", "mask", "if", "monitor", "on", "include", '"', "\\",
    '"{', '}"', '"\\x00"', "127.0.0.2-127.0.0.11", "5.7.1", "10M", "::1", "\u00e9", "\ufeff", "\r\n",
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of rules/ and config/ so relative includes and list files resolve."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "rules", root / "rules")
    shutil.copytree(REPO / "config", root / "config", dirs_exist_ok=True)
    (root / "rules" / "examples").mkdir(exist_ok=True)
    return root


_counter = itertools.count()


def lint_bytes(tree: Path, data: bytes) -> list[Diagnostic]:
    path = tree / "rules" / "examples" / f"fuzz{next(_counter) % 8}.rules"
    path.write_bytes(data)
    result = check_ruleset(str(path))
    assert isinstance(result, tuple) and len(result) == 2
    diags, sources = result
    assert isinstance(diags, list) and isinstance(sources, dict)
    for d in diags:
        assert isinstance(d, Diagnostic), d
        assert d.code in CODES, d
        assert isinstance(d.message, str) and d.message
        assert d.span is None or (isinstance(d.span, Span) and d.span.line >= 1 and d.span.column >= 1)
    # the formatters take whatever lint produced
    format_text(diags, sources, color=True, summary=True)
    format_json(diags, [str(path)])
    return diags


def lint_text(tree: Path, text: str) -> list[Diagnostic]:
    return lint_bytes(tree, text.encode("utf-8", "surrogatepass"))


# ---- properties -------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=2000))
def test_random_text(tree, text):
    lint_text(tree, text)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(tree, data):
    lint_bytes(tree, data)


@FUZZ
@given(st.lists(st.sampled_from(VOCAB), max_size=200), st.lists(st.sampled_from([" ", "\n", "\n    ", ""]), min_size=1))
def test_token_soup(tree, tokens, seps):
    text = "".join(tok + seps[i % len(seps)] for i, tok in enumerate(tokens))
    lint_text(tree, text)


@st.composite
def mutated(draw):
    tokens = list(draw(st.sampled_from(SEED_TOKENS)))
    for _ in range(draw(st.integers(1, 8))):
        if not tokens:
            tokens.append(draw(st.sampled_from(VOCAB)))
            continue
        i = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["delete", "insert", "swap", "replace", "bytes", "duplicate", "truncate"]))
        if op == "delete":
            j = draw(st.integers(i, min(len(tokens), i + 5)))
            del tokens[i:j]
        elif op == "insert":
            tokens.insert(i, draw(st.sampled_from(VOCAB)) + draw(st.sampled_from([" ", "", "\n"])))
        elif op == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op == "replace":
            tokens[i] = draw(st.sampled_from(VOCAB))
        elif op == "bytes":
            tokens[i] = draw(st.binary(min_size=1, max_size=8)).decode("latin-1")
        elif op == "duplicate":
            j = draw(st.integers(i, min(len(tokens), i + 30)))
            tokens[i:i] = tokens[i:j]
        else:
            del tokens[i:]
    return "".join(tokens)


@FUZZ
@given(mutated())
def test_mutated_shipped_rules(tree, text):
    lint_text(tree, text)


@FUZZ
@given(st.sampled_from(SEED_TEXTS), st.integers(0, 10_000), st.binary(min_size=1, max_size=64))
def test_seed_with_random_bytes_spliced(tree, text, at, junk):
    data = text.encode("utf-8")
    at %= len(data) + 1
    lint_bytes(tree, data[:at] + junk + data[at:])


# ---- fixed nasty inputs ----------------------------------------------------------

NASTY = {
    "empty": "",
    "only-comment": "# nothing\n",
    "bom": "\ufeffon rcpt:\n    reject if rcpt.domain not in localnames\n",
    "open-parens": "on helo:\n    reject if " + "(" * 5000 + "esmtp\n",
    "balanced-parens": "on helo:\n    reject if " + "(" * 190 + "esmtp" + ")" * 190 + "\n",
    "parens-over-limit": "on helo:\n    reject if " + "(" * 250 + "esmtp" + ")" * 250 + "\n",
    "not-chain": "on helo:\n    reject if " + "not " * 3000 + "esmtp\n",
    "not-chain-short": "on helo:\n    reject if " + "not " * 150 + "esmtp\n",
    "and-chain": "on helo:\n    reject if " + " and ".join(f'helo = "h{i}"' for i in range(3000)) + "\n",
    "or-chain": "on rcpt:\n    accept if " + " or ".join(f'rcpt.domain = "d{i}"' for i in range(3000)) + "\n",
    "nested-and-or": "on helo:\n    reject if " + "(esmtp and (tls or " * 90 + "esmtp" + "))" * 90 + "\n",
    "brackets": "list x = " + "[" * 3000 + "\n",
    "unterminated-string": 'on helo:\n    reject "abc\n',
    "lone-quote": '"',
    "crlf": "on rcpt:\r\n    reject if rcpt.domain not in localnames\r\n",
    "cr-only": "on rcpt:\r    reject if rcpt.domain not in localnames\r",
    "nul": "on rcpt:\x00\n",
    "self-include": 'include "fuzz-self.rules"\n',
    "include-dir": 'include "."\n',
    "include-deep": 'include "../examples/../examples/../../rules/default.rules"\n' * 50,
    "huge-regex": 'on helo:\n    reject if helo matches "' + "(a|" * 400 + "b" + ")" * 400 + '"\n',
    "regex-bomb": 'on helo:\n    reject if helo matches "(a+)+$"\n',
    "many-placeholders": 'on mail:\n    reject "' + "{sender}" * 5000 + '" if sender.null\n',
    "bad-placeholders": 'on mail:\n    reject "{" if sender.null\n    reject "}{{}}{" if sender.null\n',
    "big-numbers": "on data:\n    reject if message.size > " + "9" * 5000 + "\n",
    "big-code": "on helo:\n    reject " + "9" * 400 + ' "x"\n',
    "codes-weird": 'zone z = dnsbl "zen.spamhaus.org" codes [999.999.999.999-0.0.0.0, mask 99999999999, "x"]\n'
                   "on connect:\n    reject if client.ip listed in z\n",
    "plugin-odd": 'plugin p = "os:path"\nplugin q = ":"\nplugin r = "smtpfw.plugins_builtin:HeaderScore" { nope = 1 }\n',
    "list-odd": 'list a = file ""\nlist b = file "/"\nlist c = file "/dev/null"\nlist d = []\n'
                "on helo:\n    reject if helo in a or helo in b or helo in c or helo in d\n",
    "surrogates": "on helo:\n    reject if helo = \"\udc80\"\n",
    "long-line": "on helo:\n    reject if helo = \"" + "a" * 200_000 + "\"\n",
    "many-rules": "on helo:\n" + "".join(f'    reject if helo in ["h{i}", "x"]\n' for i in range(2000)),
    "many-unreachable": "on helo:\n    reject \"x\"\n" + '    tag t if esmtp\n' * 2000,
}


@pytest.mark.parametrize("name", sorted(NASTY))
def test_nasty_inputs(tree, name):
    text = NASTY[name]
    if name == "self-include":
        path = tree / "rules" / "examples" / "fuzz-self.rules"
        path.write_text(text)
        diags, _ = check_ruleset(str(path))
        assert [d.code for d in diags if d.code.startswith("E00")] == ["E003"]
        return
    lint_text(tree, text)


def test_huge_file(tree):
    """~1 MB of real rules: diagnostics, no traceback, in reasonable time."""
    base = (REPO / "rules" / "reference.rules").read_text(encoding="utf-8")
    body = base.split("on connect:", 1)[1]
    text = base + ("\non connect:" + body) * (1_000_000 // len(body))
    assert len(text) > 900_000
    diags = lint_text(tree, text)
    assert diags       # duplicates, shadowed rules...


def test_huge_garbage(tree):
    lint_bytes(tree, (b"reject if ( \xff\xfe " * 70_000)[:1_000_000])


def test_endless_file_is_not_read_whole(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    diags, _ = check_ruleset("/dev/zero")
    assert [d.code for d in diags] == ["E001"] and "not a regular file" in diags[0].message
