"""MaildirDelivery: tmp -> fsync -> new/, 451 on any OSError."""

from __future__ import annotations

import asyncio
import os

import pytest

from smtpfw.delivery import Delivery, MaildirDelivery, Message
from smtpfw.delivery import maildir as maildir_mod

DATA = b"From: a@example.org\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"


def deliver(md: MaildirDelivery, data: bytes = DATA):
    return asyncio.run(md.deliver(Message("a@example.org", ("b@example.net",), data)))


def listing(root, sub):
    return sorted(os.listdir(os.path.join(root, sub)))


def test_delivers_one_exact_file(tmp_path):
    root = tmp_path / "Maildir"
    md = MaildirDelivery(root)
    assert isinstance(md, Delivery)
    result = deliver(md)
    assert result.ok and (result.code, result.enhanced) == (250, "2.0.0")
    new = listing(root, "new")
    assert len(new) == 1
    assert (root / "new" / new[0]).read_bytes() == DATA
    assert listing(root, "tmp") == [] and listing(root, "cur") == []
    for sub in ("tmp", "new", "cur"):
        assert (root / sub).stat().st_mode & 0o777 == 0o700
    name = new[0]
    assert f"P{os.getpid()}Q" in name and ":" not in name and "/" not in name


def test_unique_names_and_existing_maildir(tmp_path):
    root = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    md = MaildirDelivery(root)

    async def many():
        return await asyncio.gather(*(
            md.deliver(Message("", ("x@y",), b"n%d\r\n" % i)) for i in range(20)))

    results = asyncio.run(many())
    assert all(r.ok for r in results)
    new = listing(root, "new")
    assert len(new) == 20
    assert sorted((root / "new" / n).read_bytes() for n in new) == sorted(b"n%d\r\n" % i for i in range(20))
    assert listing(root, "tmp") == []


def test_parent_is_a_file_tempfails(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    md = MaildirDelivery(blocker / "Maildir")
    result = deliver(md)
    assert (result.code, result.enhanced) == (451, "4.3.0")
    assert "local delivery failed" in result.text


def test_new_replaced_by_file_tempfails_and_cleans_tmp(tmp_path):
    root = tmp_path / "Maildir"
    md = MaildirDelivery(root)
    assert deliver(md).ok
    # Break new/ after the Maildir was set up: link() into it fails (ENOTDIR),
    # even as root.
    for name in os.listdir(root / "new"):
        os.unlink(root / "new" / name)
    os.rmdir(root / "new")
    (root / "new").write_bytes(b"")
    result = deliver(md)
    assert result.code == 451 and result.enhanced == "4.3.0"
    assert listing(root, "tmp") == []


def test_fsync_failure_leaves_nothing_in_new(tmp_path, monkeypatch):
    root = tmp_path / "Maildir"
    md = MaildirDelivery(root)
    assert deliver(md).ok
    before = listing(root, "new")
    real_fsync = os.fsync

    def failing_fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}") or not os.path.exists("/proc/self/fd"):
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(maildir_mod.os, "fsync", failing_fsync)
    result = deliver(md)
    assert (result.code, result.enhanced) == (451, "4.3.0") and "No space left on device" in result.text
    assert listing(root, "new") == before
    assert listing(root, "tmp") == []


def test_maildir_removed_is_recreated(tmp_path):
    import shutil

    root = tmp_path / "Maildir"
    md = MaildirDelivery(root)
    assert deliver(md).ok
    shutil.rmtree(root)
    assert deliver(md).ok
    assert len(listing(root, "new")) == 1


def test_close_is_harmless(tmp_path):
    asyncio.run(MaildirDelivery(tmp_path / "M").close())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__]))
