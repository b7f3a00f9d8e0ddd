"""Connections to the stores, with authentication and TLS: one place for every client.

Inputs: addresses, credentials and CA files (from ``jobs.config.NudgeflowConfig``). Outputs: a
cassandra-driver ``Cluster`` and a redis-py client. State: none. The engine's writer, the
provisioning, the Redis rebuild and the command-line tools all connect through here, so a TLS
or login setting reaches every one of them.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

#: the cassandra-driver logger that logs each warning a server attached to a reply
DRIVER_WARNINGS_LOGGER = "cassandra.protocol"


class ServerWarnings(logging.Filter):
    """Let one of the driver's "Server warning" records through per ``interval_s``.

    Cassandra attaches a warning to every reply of a request that crossed one of its
    thresholds (an unlogged batch over 10 partitions, by default), and cassandra-driver logs
    each at WARNING: the membership writer's batches (``cassandra_batch_changes`` above 3)
    would log one per request, thousands a minute. The first passes at once; later ones are
    counted and the next that passes says how many were held back. Other records pass.
    """

    def __init__(self, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.passed_at: float | None = None
        self.held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is logged (held-back counts are added to the one that is)."""
        if not str(record.msg).startswith("Server warning"):
            return True
        now, passed_at = self.clock(), self.passed_at
        if passed_at is not None and now - passed_at < self.interval_s:
            self.held_back += 1
            return False
        if passed_at is not None and self.held_back:
            record.msg = (f"{record.msg} (and {self.held_back} more server warnings in the "
                          f"last {now - passed_at:.0f} s, not logged)")
        self.passed_at, self.held_back = now, 0
        return True


def _hold_back_server_warnings() -> None:
    """Install one ``ServerWarnings`` on the driver's logger (once per process)."""
    logger = logging.getLogger(DRIVER_WARNINGS_LOGGER)
    if not any(isinstance(f, ServerWarnings) for f in logger.filters):
        logger.addFilter(ServerWarnings())


def cassandra_cluster(hosts: Sequence[str], port: int, username: str = "", password: str = "",
                      ssl_ca_file: str = "", **options: Any) -> Any:
    """A cassandra-driver ``Cluster`` (not connected yet; the caller shuts it down).

    Args:
        hosts: contact points.
        port: native protocol port.
        username: empty: no authentication (else the password authenticator).
        password: the user's password.
        ssl_ca_file: PEM file of the CAs that sign the nodes' certificates: the connections use
            TLS and verify each node's certificate and host name; empty: no TLS.
        options: further ``Cluster`` arguments (load balancing policy, ...).
    """
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    _hold_back_server_warnings()
    auth = PlainTextAuthProvider(username, password) if username else None
    context = ssl.create_default_context(cafile=ssl_ca_file) if ssl_ca_file else None
    return Cluster(list(hosts), port=port, auth_provider=auth, ssl_context=context,
                   protocol_version=5, connect_timeout=10, **options)


def redis_client(url: str, ssl_ca_file: str = "", **options: Any) -> Any:
    """A redis-py client for ``url``: ``redis://`` in the clear, ``rediss://`` over TLS.

    Args:
        url: the Redis URL (it may carry a user and password).
        ssl_ca_file: for ``rediss://``, PEM file of the CAs that sign the server's certificate;
            empty: the system's trust store.
        options: further client arguments (timeouts, ``decode_responses``, ...).
    """
    import redis

    if ssl_ca_file:
        options["ssl_ca_certs"] = ssl_ca_file
    return redis.Redis.from_url(url, **options)
