"""Connections to the stores, with authentication and TLS: one place for every client.

Inputs: addresses, credentials and CA files (from ``jobs.config.NudgeflowConfig``). Outputs: a
cassandra-driver ``Cluster`` and a redis-py client. State: none. The engine's writer, the
provisioning, the Redis rebuild and the command-line tools all connect through here, so a TLS
or login setting reaches every one of them.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any


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
