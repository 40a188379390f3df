"""This process's id, without a system call each time it is asked for.

``os.getpid()`` is a system call (glibc stopped caching it), and a session
asked for it several times: its id, the log line, Maildir file names.  A
forked worker sets its own.
"""

from __future__ import annotations

import os

_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def pid() -> int:
    return _pid[0]
