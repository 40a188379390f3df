"""Session recording: JSON Lines, rotation, versioned reading."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest

from smtpfw.recording import FORMAT_VERSION, Recorder, RecordError, read_records


def record(i: int) -> dict:
    return {"v": FORMAT_VERSION, "id": f"s{i}", "client": {"ip": "192.0.2.1", "port": 1}, "events": [],
            "padding": "x" * 100}


def test_size_rotation_keeps_every_record(tmp_path):
    rec = Recorder(str(tmp_path), rotate="size", max_bytes=600)
    for i in range(20):
        rec.write(record(i))
    rec.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) > 3
    ids = [json.loads(line)["id"] for f in files for line in f.read_text().splitlines()]
    assert sorted(ids) == sorted(f"s{i}" for i in range(20))
    assert all(f.stat().st_size <= 600 for f in files)


def test_daily_files_are_named_by_date(tmp_path):
    rec = Recorder(str(tmp_path))
    rec.write(record(1))
    rec.close()
    (name,) = [p.name for p in tmp_path.iterdir()]
    assert name.startswith(f"sessions-{dt.date.today():%Y%m%d}-") and name.endswith(".jsonl")


def test_reads_gzip(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(record(1)) + "\n" + json.dumps(record(2)) + "\n")
    assert [r["id"] for r in read_records(str(path))] == ["s1", "s2"]


@pytest.mark.parametrize("line,message", [
    ('{"v": 99, "client": {}, "events": []}', "recorded with format version 99; this smtpfw reads versions 1 to 2"),
    ('{"v": 1, "events": []}', "record has no 'client'"),
    ("not json", "s.jsonl:2: not JSON"),
    ('[1, 2]', "not a session record"),
])
def test_bad_records_say_where_and_why(tmp_path, line, message):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(record(1)) + "\n" + line + "\n")
    with pytest.raises(RecordError) as err:
        list(read_records(str(path)))
    assert message in str(err.value)
