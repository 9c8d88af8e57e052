"""Starting subdaemons with their sockets at the documented descriptor numbers.

Every subdaemon lightningd runs is started here, so that one function decides
how processes are made (see common/subdaemon.py for the descriptor table).
"""

from __future__ import annotations

import fcntl
import os
import sys

# Above every fixed number a subdaemon expects, so placing one never
# overwrites another that is still to be placed.
_STAGING_MIN_FD = 100


def spawn_subdaemon(module: str, fds: dict[int, int], args: list[str] | None = None) -> int:
    """Start `python -m module args` with fds[n] at descriptor n; returns the pid.

    The caller keeps ownership of the descriptors it passed; nothing else of
    the master's leaks into the child (Python opens everything close-on-exec).
    """
    staged = {
        target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _STAGING_MIN_FD)
        for target, fd in fds.items()
    }
    try:
        actions = [(os.POSIX_SPAWN_DUP2, high, target) for target, high in staged.items()]
        argv = [sys.executable, "-m", module, *(args or [])]
        return os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions)
    finally:
        for high in staged.values():
            os.close(high)
