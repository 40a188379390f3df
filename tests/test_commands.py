"""The commands layer (smtpfw.commands) called as a library, the way a web
workbench would: plain arguments in, report objects out, errors as
exceptions.  And the line replay draws between a bad record (exit 2) and a
bug in smtpfw (exit 3)."""

from __future__ import annotations

import json

import pytest

from smtpfw.cli import main
from smtpfw.commands.docs import docs
from smtpfw.commands.dryrun import dry_run
from smtpfw.commands.errors import CommandError, RulesetError
from smtpfw.commands.lint import lint
from smtpfw.commands.ruleset_tests import run_tests
from smtpfw.commands.trace import SessionSpec, trace
from smtpfw.diagnostics import Severity
from smtpfw.replay.build import make_record
from smtpfw.replay.records import ReplayBug, RecordError, replay_failure, shape_problem
from tests.support.server import REPO

DEFAULT = str(REPO / "rules" / "default.rules")


def _sessions(tmp_path, *records) -> str:
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _good(**kw) -> dict:
    return make_record(helo="mx.example.org", sender="a@example.org", rcpts=["root@localhost"], **kw)


def test_commands_return_reports(tmp_path):
    report = lint([DEFAULT])
    assert report.files == [DEFAULT] and not report.fails(Severity.ERROR)
    assert "lint" in docs() and docs("lint#e999").startswith("### E999 internal-error")
    tests = run_tests([DEFAULT])
    assert tests.status == 0 and tests.loaded[0].passed == len(tests.loaded[0].outcomes) > 0
    traced = trace(SessionSpec(helo="mx.example.org", sender="a@example.org", rcpts=["x@elsewhere.example"]),
                   rules=DEFAULT, no_dns=True)
    assert traced.result.verdict.kind == "rejected" and "verdict: rejected" in traced.to_text()
    dry = dry_run([_sessions(tmp_path, _good())], rules=DEFAULT)
    assert dry.sessions == 1 and dry.to_json()["sessions"] == 1


def test_command_errors_are_exceptions_with_one_line_per_problem(tmp_path):
    with pytest.raises(CommandError) as err:
        lint([str(tmp_path / "a.rules"), str(tmp_path / "b.rules")])
    assert [p.split(": ", 1)[1] for p in err.value.problems] == ["no such file or folder"] * 2
    (tmp_path / "bad.rules").write_text("on helo:\n    reject if nosuch.field\n")
    with pytest.raises(RulesetError) as err:
        dry_run([_sessions(tmp_path, _good())], rules=str(tmp_path / "bad.rules"))
    assert [d.code for d in err.value.diags] == ["E102"]
    with pytest.raises(CommandError, match="give either --session or"):
        trace(SessionSpec(ip="192.0.2.9"), session="x.jsonl", rules=DEFAULT)


# ---- a bad record is the input's fault, a replay crash is ours ---------------------------

def test_shape_problem_names_what_is_wrong():
    assert shape_problem(_good()) is None
    assert shape_problem({**_good(), "events": "nope"}) == "'events' is not a list"
    assert shape_problem({**_good(), "client": {"ip": 7}}) == "'client.ip' is not a string"
    bad_event = {**_good(), "events": [{"cmd": "ehlo", "arg": "x", "decision": {"outcome": "maybe"}}]}
    assert shape_problem(bad_event) == "event 1: 'decision': unknown outcome 'maybe'"
    assert shape_problem({**_good(), "dns": [{"lookup": {}}]}).startswith("'dns' is not a list")


def test_replay_failure_tells_a_bad_record_from_a_bug():
    err = KeyError("k")
    assert isinstance(replay_failure(err, {**_good(), "events": "nope"}, "f:1"), RecordError)
    bug = replay_failure(err, _good(), "f:1")
    assert isinstance(bug, ReplayBug) and "bug in smtpfw, please report it" in str(bug)


def test_dry_run_malformed_record_is_exit_2(tmp_path, capsys):
    path = _sessions(tmp_path, _good(), {**_good(), "events": "nope"})
    assert main(["dry-run", "--rules", DEFAULT, path]) == 2
    err = capsys.readouterr().err
    assert "s.jsonl:2: cannot replay this session: 'events' is not a list" in err and "bug" not in err


@pytest.mark.parametrize("command", [["dry-run"], ["dry-run", "--jobs", "2"], ["trace", "--session"]])
def test_replay_raising_on_a_good_record_is_a_bug_exit_3(tmp_path, capsys, monkeypatch, command):
    from smtpfw.replay.session import Replayer

    def broken(self, record):
        raise AttributeError("engine bug")
    monkeypatch.setattr(Replayer, "replay", broken)
    path = _sessions(tmp_path, _good())
    assert main([*command, path, "--rules", DEFAULT]) == 3
    err = capsys.readouterr().err
    assert "internal error replaying session 'trace': AttributeError: engine bug" in err
    assert "this is a bug in smtpfw, please report it" in err and "malformed" not in err
