"""Process-tree CPU and memory from /proc (Linux), for bench/run.py.

- CPU: utime + stime of every process in the tree (a server and its
  workers), read before and after a run.
- Memory: a background thread samples /proc/PID/smaps_rollup of the whole
  tree and keeps the peak of the summed RSS and PSS.  PSS shares pages
  between the processes that map them, so forked workers are not counted
  twice; RSS is the naive sum.
"""

from __future__ import annotations

import os
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    return raw[raw.rindex(")") + 2:].split()


def tree(root: int) -> list[int]:
    """``root`` and all its descendants (a snapshot)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (live processes; dead ones count 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])   # utime, stime (fields 14, 15)
    return total / CLK_TCK


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in kB summed over ``pids``."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith(b"Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


class MemorySampler:
    """Peak RSS/PSS of a process tree while running (``with`` block)."""

    def __init__(self, root: int, interval: float = 0.05):
        self.root = root
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._sample(tree(self.root))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self, pids: list[int]) -> None:
        rss, pss = memory_kb(pids)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.samples += 1

    def _run(self) -> None:
        pids = tree(self.root)
        refreshed = time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - refreshed > 1.0:      # a worker may have been replaced
                pids, refreshed = tree(self.root), time.monotonic()
            self._sample(pids)
        self._sample(tree(self.root))
