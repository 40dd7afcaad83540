"""The process's open-file limit, raised to hold the connections a server is configured for.

Each client connection is a file descriptor; a fleet of robots each on its own connection needs
one per robot, while many Linux sessions start with a soft limit of 1,024. A process may raise its
soft limit up to the hard one without privileges; beyond the hard limit only the operator can
(``ulimit -Hn``, systemd ``LimitNOFILE=``).
"""

from __future__ import annotations

import logging
import resource

__all__ = ["OTHER_FILES", "raise_open_file_limit"]

OTHER_FILES = 1024
"""Descriptors kept for everything but client connections: listeners, model files, logs, the metrics endpoint."""

_log = logging.getLogger("rnnpolicy.serve")


def raise_open_file_limit(connections: int) -> int:
    """Raise the soft open-file limit to hold ``connections`` client connections plus :data:`OTHER_FILES`,
    as far as the hard limit allows, logging what changed; return the soft limit now in force."""
    wanted = connections + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            _log.info("open-file limit raised from %d to %d: room for %d client connections", soft, target,
                      target - OTHER_FILES)
            soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        _log.warning("open-file limit %d (hard limit %s) holds about %d client connections, fewer than the %d "
                     "wanted: further connections are refused by the OS; raise the hard limit (ulimit -Hn, "
                     "systemd LimitNOFILE=)", soft, "unlimited" if hard == resource.RLIM_INFINITY else hard,
                     max(0, soft - OTHER_FILES), connections)
    return soft
