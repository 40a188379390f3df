"""Big lists as packed, read-only sets that every worker shares.

A Python set of a million strings costs about 90 bytes an entry, in each
process that builds it: the workers rebuild their rules on a reload, so a
site with ten million list entries and four workers would hold the lists
five times.  A packed set is a sorted array of 8-byte keys instead, kept
in a file that every process maps (``share_in``): the pages are the
kernel's page cache, counted once however many workers use them, as
Postfix's cdb and lmdb maps are.

Keys: an IPv4 network number is its own key (exact).  A string's key is
Python's ``hash()`` of it: SipHash with a secret made at the start of the
server process and inherited by every worker it forks, so an attacker
cannot pick a string that collides with a listed one; two different
strings share a key with probability 2**-64, about one false match in
18 billion billion lookups of a list of a million entries (a Bloom filter,
by comparison, is built to err far more often).  The secret differs from
one server run to the next, so the files live in a folder of that run and
go with it.

A lookup is a binary search (about 20 probes for a million keys, in C):
slower than a hash set's one probe, but a session asks a list a few times,
and small lists (below ``MIN_PACKED``) stay ordinary sets.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import tempfile
from array import array
from bisect import bisect_left
from typing import Callable, Iterable

_numpy: list = []           # [module or None] once looked for (the `fast` extra)


def _load_numpy():
    """numpy if installed: it sorts a million keys in 60 ms rather than 550.
    Imported only when a big list is packed, and without OpenBLAS's thread
    pool: a thread that exists before the server blocks SIGTERM would take
    that signal and die of it (a process-directed signal goes to any thread
    that does not block it)."""
    if not _numpy:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        try:
            import numpy
        except ImportError:     # pragma: no cover - depends on the installation
            numpy = None
        _numpy.append(numpy)
    return _numpy[0]

MIN_PACKED = 2 ** 18        # smaller sets stay Python sets: a probe cheaper, 90 bytes an entry dearer
_INT64_MAX = 2 ** 63 - 1

log = logging.getLogger("smtpfw.lists")
_shared_dir: list[str | None] = [None]       # where packed arrays are written and mapped from
_warned: list[bool] = [False]
_in_use: set[str] = set()                    # files the last compile mapped (since ``begin``)


def share_in(directory: str | None) -> None:
    """Write packed sets to ``directory`` and map them from there (the
    server, before it compiles and forks); None: keep them in memory."""
    _shared_dir[0] = directory
    _in_use.clear()


def begin() -> None:
    """A compile starts: ``prune`` will keep only the files it maps."""
    _in_use.clear()


def prune() -> None:
    """Remove the files the compile since ``begin`` did not map (older
    versions of the lists).  A process that still maps one keeps its pages
    until it lets the set go: unlinking never takes a mapping away."""
    directory = _shared_dir[0]
    if directory is None:
        return
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if path not in _in_use and name.endswith(".keys"):
            try:
                os.unlink(path)
            except OSError:
                pass


class PackedSet:
    """A read-only set: membership by binary search of sorted int64 keys,
    narrowed first by an index of where each part of the key range starts
    (about 16 keys a part: a few probes rather than twenty for a million
    keys).  ``contains`` is the test itself, for hot paths (``membership``)."""

    __slots__ = ("contains", "_n", "_keys", "_mapped")

    def __init__(self, keys, strings: bool, mapped=None):
        self._keys = keys
        self._n = n = len(keys)
        self._mapped = mapped          # the mmap, kept open while the set lives
        # part b holds the keys k with (k - base) >> shift == b, at [index[b], index[b + 1])
        bits = min(16, max(4, n.bit_length() - 4))
        base = -2 ** 63 if strings else keys[0]
        span = (2 ** 64 - 1) if strings else keys[n - 1] - keys[0]
        shift = max(0, span.bit_length() - bits)
        parts = (span >> shift) + 1
        index = _index(keys, base, shift, parts)
        index.append(n)
        self.contains = _contains(keys, index, base, shift, parts, str if strings else int)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, value) -> bool:
        return self.contains(value)


def _index(keys, base: int, shift: int, parts: int) -> array:
    """Where each part of the key range starts in ``keys``: 65,536 binary
    searches, in one numpy call when numpy is there."""
    numpy = _numpy[0] if _numpy else None
    if numpy is not None and parts > 1:
        bounds = [base + (b << shift) for b in range(parts)]
        if bounds[-1] <= _INT64_MAX and bounds[0] >= -2 ** 63:
            found = numpy.searchsorted(numpy.frombuffer(keys, dtype=numpy.int64), numpy.array(bounds, dtype=numpy.int64))
            return array("l", found.tolist())
    return array("l", (bisect_left(keys, base + (b << shift)) for b in range(parts)))


def _contains(keys, index, base: int, shift: int, parts: int, kind: type) -> Callable[[object], bool]:
    strings = kind is str

    def contains(value) -> bool:
        if not isinstance(value, kind):
            return False
        key = hash(value) if strings else value
        part = (key - base) >> shift
        if not 0 <= part < parts:
            return False
        lo, hi = index[part], index[part + 1]
        i = bisect_left(keys, key, lo, hi)
        return i < hi and keys[i] == key
    return contains


def membership(values) -> Callable[[object], bool]:
    """The fastest membership test of a set or a PackedSet."""
    return values.contains if isinstance(values, PackedSet) else values.__contains__


def pack_strings(values: set[str]) -> set[str] | PackedSet:
    """``values`` packed, or as they are when small, or when PYTHONHASHSEED
    fixes the hash secret (then anyone can compute the keys and look for a
    string that collides with a listed one: a set compares the strings)."""
    if not packable(len(values)):
        return values
    return _packed(_sorted_keys(map(hash, values), len(values)), strings=True)


def pack_ints(values: set[int]) -> set[int] | PackedSet:
    """``values`` (non-negative, below 2**63: IPv4 network numbers) packed,
    or as they are when small or out of range."""
    if len(values) < MIN_PACKED or min(values) < 0 or max(values) > _INT64_MAX:
        return values
    return _packed(_sorted_keys(iter(values), len(values)), strings=False)


def _sorted_keys(keys: Iterable[int], count: int) -> array:
    """``keys`` sorted, as an int64 array."""
    numpy = _load_numpy()
    if numpy is not None:
        packed = numpy.fromiter(keys, dtype=numpy.int64, count=count)
        packed.sort()
        out = array("q")
        out.frombytes(packed.tobytes())
        return out
    return array("q", sorted(keys))


def _packed(keys: array, strings: bool) -> PackedSet:
    directory = _shared_dir[0]
    if directory is None:
        return PackedSet(keys, strings)
    data = keys.tobytes()
    try:
        name = write_keys(data)
    except OSError as err:
        return _unshared(keys, strings, err)   # it still works, in this process's memory
    try:
        mapped = _map(name, len(data))
    except (OSError, ValueError) as err:
        return _unshared(keys, strings, err)
    if mapped is None:                        # not what this process packed: do not trust it
        return PackedSet(keys, strings)
    return PackedSet(memoryview(mapped).cast("q"), strings, mapped)


def write_keys(data: bytes) -> str:
    """Sorted int64 keys (their bytes) as a file of the shared folder, named
    by its content; its path.  OSError when it cannot be written."""
    directory = _shared_dir[0]
    if directory is None:
        raise OSError("no folder for shared lists")
    name = os.path.join(directory, hashlib.blake2b(data, digest_size=16).hexdigest() + ".keys")
    if os.path.exists(name):            # another process may have written it: same content
        return name
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # workers read it after giving root up
            fh.write(data)
        os.replace(tmp, name)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return name


def _map(name: str, size: int) -> mmap.mmap | None:
    """The file ``name`` mapped, None when it is not ``size`` bytes."""
    with open(name, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if len(mapped) != size:
        mapped.close()
        return None
    _in_use.add(name)
    return mapped


def mapped_set(name: str, count: int, strings: bool) -> PackedSet | None:
    """The set of the ``count`` sorted keys another process wrote to ``name``
    (``write_keys``), or None when it cannot be mapped as that."""
    if count < 1 or os.path.dirname(name) != _shared_dir[0]:
        return None
    try:
        mapped = _map(name, count * 8)
    except (OSError, ValueError):
        return None
    if mapped is None:
        return None
    return PackedSet(memoryview(mapped).cast("q"), strings, mapped)


def packable(count: int) -> bool:
    """Whether ``pack_strings`` packs a set of ``count`` strings."""
    return count >= MIN_PACKED and os.environ.get("PYTHONHASHSEED", "random") == "random"


def sorted_keys(keys: Iterable[int], count: int) -> array:
    """``keys`` sorted, as an int64 array."""
    return _sorted_keys(keys, count)


def _unshared(keys: array, strings: bool, err: Exception) -> PackedSet:
    """The set in this process's memory: it works, but each worker that
    builds it holds a copy.  Said once a process."""
    if not _warned[0]:
        _warned[0] = True
        log.warning("big lists are not shared between workers (each keeps its own copy): %s in %s: %s",
                    type(err).__name__, _shared_dir[0], getattr(err, "strerror", None) or err)
    return PackedSet(keys, strings)
