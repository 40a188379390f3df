"""The workspace: the ruleset's own folder, the only files the workbench
reads or writes, and the shadow copy through which the engine reads
unsaved text.

A file is named by its path relative to the folder (``site.rules``,
``lists/badhelo``).  ``Workspace.resolve`` refuses every other form: an
absolute path, ``..``, a NUL or control character, a backslash, and a name
whose real path (symbolic links followed) leaves the folder.

The engine (lint, compile, tests, trace, dry-run) reads files from disk, so
unsaved text is given to it as a *shadow*: a temporary tree that mirrors the
ruleset's folder at the same absolute path under a temp dir, with the edited
files written into it and every other entry a symbolic link to the real one.
The folders above it are mirrored the same way, so an include or a list file
named with ``../`` resolves as it does for the real ruleset.  Paths the
engine reports are mapped back with ``Shadow.unshadow``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

MAX_FILE_BYTES = 4 * 1024 * 1024      # a file the editor opens or saves
MAX_NAME = 512
NOT_WRITTEN = (".yaml", ".yml", ".pem", ".key", ".crt", ".db", ".sqlite")   # the server's config, keys, state


class PathRefused(ValueError):
    """A file name the workbench does not read or write."""


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class Workspace:
    rules: str          # the ruleset file, its real absolute path
    root: str           # its folder (real path): nothing outside it is read or written

    @classmethod
    def open(cls, rules_path: str) -> Workspace:
        rules = os.path.realpath(rules_path)
        return cls(rules, os.path.dirname(rules))

    @property
    def rules_name(self) -> str:
        return os.path.basename(self.rules)

    @property
    def tests_name(self) -> str:
        return self.rules_name.removesuffix(".rules") + ".tests"

    def resolve(self, name: object) -> str:
        """The absolute path of the workspace file ``name``, or PathRefused."""
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise PathRefused("a file name is a non-empty relative path")
        if any(ord(c) < 32 or c in "\x7f\\" for c in name):
            raise PathRefused(f"{name!r}: control characters and backslashes are not allowed in a file name")
        if name.startswith(("/", "~")):
            raise PathRefused(f"{name!r}: absolute paths are refused; name files relative to {self.root}")
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise PathRefused(f"{name!r}: `..`, `.` and empty path parts are refused")
        path = os.path.join(self.root, *parts)
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.root]) != self.root:
            raise PathRefused(f"{name!r}: it leads outside {self.root}")
        return path

    def name_of(self, path: str) -> str | None:
        """The workspace name of a path, or None when it is outside the folder."""
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.root]) != self.root or real == self.root:
            return None
        return os.path.relpath(real, self.root)

    def read(self, name: str) -> str:
        """The text of a workspace file ("" for a file that does not exist yet)."""
        path = self.resolve(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return ""
        except NotADirectoryError:
            raise PathRefused(f"{name}: a folder of this path is a file") from None
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused(f"{name}: not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise PathRefused(f"{name}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        with open(path, "rb") as fh:
            return fh.read(MAX_FILE_BYTES).decode("utf-8", "replace").removeprefix("\ufeff")

    def write(self, name: str, text: str) -> None:
        """Replace a workspace file whole (a temp file renamed over it: the
        server's reload never sees half a file)."""
        path = self.resolve(name)
        self.check_writable(name)
        if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
            raise PathRefused(f"{name}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise PathRefused(f"{name}: a folder of this path is a file") from None
        old = None
        with contextlib.suppress(OSError):
            old = os.stat(path)
        fd, tmp = tempfile.mkstemp(prefix=".wb-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
            # a replaced file keeps its mode and, for root, its owner; a new one is 0644 (as a list
            # written by hand): the server reading it as server.user must be able to
            os.chmod(tmp, stat.S_IMODE(old.st_mode) if old is not None else 0o644)
            if old is not None and os.geteuid() == 0:
                os.chown(tmp, old.st_uid, old.st_gid)
            os.replace(tmp, os.path.realpath(path) if os.path.islink(path) else path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @staticmethod
    def check_writable(name: str) -> None:
        """PathRefused for what the workbench never writes: hidden files,
        the server's configuration, keys and state beside the rules."""
        base = os.path.basename(name)
        if base.startswith(".") or base.lower().endswith(NOT_WRITTEN):
            raise PathRefused(f"{name}: the workbench saves rules, tests, lists and maps, not hidden files, "
                              "configuration or keys")

    def check_edits(self, edits: object) -> dict[str, str]:
        """``{name: text}`` from a request, every name resolved (PathRefused otherwise)."""
        if not isinstance(edits, dict):
            raise PathRefused("`files` is an object of file name -> text")
        out: dict[str, str] = {}
        for name, text in edits.items():
            self.resolve(name)
            if not isinstance(text, str):
                raise PathRefused(f"{name}: the text is not a string")
            if len(text) > MAX_FILE_BYTES:
                raise PathRefused(f"{name}: larger than {MAX_FILE_BYTES // 2**20} MiB")
            out[name] = text
        return out


# ---- the shadow ------------------------------------------------------------------

@dataclass(frozen=True)
class Shadow:
    base: str           # the temp dir; the mirror of /path is base + /path
    ws: Workspace

    @property
    def rules(self) -> str:
        return self.base + self.ws.rules

    def unshadow(self, text: str) -> str:
        """Paths into the shadow, in text the engine wrote, as the real paths."""
        up = os.path.relpath("/")                     # the engine shows some paths relative to the cwd
        return text.replace(self.base + "/", "/").replace(os.path.relpath(self.base) + "/", up + "/")

    def real(self, path: str | None) -> str | None:
        """The real path of a path the engine reported (absolute, or relative to the cwd)."""
        if path is None:
            return None
        if not os.path.isabs(path) and not path.startswith("<"):
            path = os.path.normpath(os.path.join(os.getcwd(), path))
        return path[len(self.base):] if path.startswith(self.base + "/") else path


@contextlib.contextmanager
def shadow(ws: Workspace, edits: dict[str, str]) -> Iterator[Shadow]:
    """A shadow of the workspace with ``edits`` (checked names -> text) in it."""
    base = tempfile.mkdtemp(prefix="smtpfw-workbench-")
    try:
        _mirror_ancestors(base, ws.root, _outside_entries(ws, edits))
        tree: dict = {}
        for name, text in edits.items():
            node = tree
            parts = name.split("/")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise PathRefused(f"{name}: a file of that name is edited too")
            node[parts[-1]] = text
        _populate(ws.root, base + ws.root, tree)
        yield Shadow(base, ws)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _entries(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


_UPWARD = re.compile(r'"((?:[^"\\\n]|\\.)*\.\./(?:[^"\\\n]|\\.)*)"')


def _outside_entries(ws: Workspace, edits: dict[str, str]) -> set[str]:
    """The paths outside the folder that the rule files name with ``../``
    (an include, a list or map file): only those are mirrored, not every
    entry of / and /tmp."""
    texts: list[tuple[str, str]] = [(os.path.dirname(ws.resolve(n)), t) for n, t in edits.items()]
    for folder, _dirs, names in os.walk(ws.root):
        for n in names:
            if n.endswith(".rules"):
                path = os.path.join(folder, n)
                if ws.name_of(path) not in edits:
                    try:
                        with open(path, encoding="utf-8", errors="replace") as fh:
                            texts.append((folder, fh.read(1 << 20)))
                    except OSError:
                        pass
    out = set()
    for folder, text in texts:
        for m in _UPWARD.finditer(text):
            target = os.path.normpath(os.path.join(folder, m.group(1)))
            if os.path.commonpath([target, ws.root]) != ws.root:
                out.add(target)
    return out


def _mirror_ancestors(base: str, root: str, outside: set[str]) -> None:
    """The folders from / down to ``root``: real folders in the shadow,
    with a link to each entry that a path in ``outside`` goes through."""
    os.makedirs(base + root, exist_ok=True)
    for target in outside:
        here = "/"
        for part in [p for p in target.split("/") if p]:
            nxt = os.path.join(here, part)
            if os.path.commonpath([nxt, root]) != nxt:          # leaves the way down to root: link it
                link = base + nxt
                if not os.path.lexists(link) and os.path.lexists(nxt):
                    os.symlink(nxt, link)
                break
            here = nxt


def _populate(real: str, mirror: str, tree: dict) -> None:
    os.makedirs(mirror, exist_ok=True)
    for entry in _entries(real):
        if entry not in tree:
            os.symlink(os.path.join(real, entry), os.path.join(mirror, entry))
    for entry, node in tree.items():
        if isinstance(node, dict):
            _populate(os.path.join(real, entry), os.path.join(mirror, entry), node)
        else:
            with open(os.path.join(mirror, entry), "w", encoding="utf-8", newline="") as fh:
                fh.write(node)
