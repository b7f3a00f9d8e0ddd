"""Every store client is built in one place, with login and TLS (udfs.stores.connections)."""

import logging
import ssl
from pathlib import Path

import pytest

from jobs.config import ConfigError, load_config
from udfs.stores import connections


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory) -> Path:
    """A test certificate authority's certificate (PEM)."""
    import trustme

    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA(organization_name="nudgeflow-test-ca").cert_pem.write_to_path(str(path))
    return path


def test_cassandra_over_tls_verifies_the_nodes_against_the_ca(ca_file: Path) -> None:
    cluster = connections.cassandra_cluster(["10.0.0.1", "10.0.0.2"], 9142, "svc", "pw",
                                            str(ca_file))
    context = cluster.ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    [ca] = context.get_ca_certs()
    assert (("organizationName", "nudgeflow-test-ca"),) in ca["subject"]
    assert cluster.auth_provider.username == "svc"
    assert cluster.port == 9142
    plain = connections.cassandra_cluster(["10.0.0.1"], 9042)
    assert plain.ssl_context is None and plain.auth_provider is None


def test_redis_over_tls_with_a_private_ca(ca_file: Path) -> None:
    client = connections.redis_client("rediss://user:pw@cache:6380/0", str(ca_file),
                                      socket_timeout=5)
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert (kwargs["ssl_ca_certs"], kwargs["host"], kwargs["port"]) == (str(ca_file), "cache",
                                                                         6380)
    assert (kwargs["username"], kwargs["password"]) == ("user", "pw")
    plain = connections.redis_client("redis://127.0.0.1:6379/0")
    assert plain.connection_pool.connection_class.__name__ == "Connection"


def test_a_redis_ca_without_a_tls_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="TLS to Redis needs a rediss:// URL"):
        load_config(env={"NUDGEFLOW_REDIS_SSL_CA_FILE": "/ca.pem"})
    cfg = load_config(env={"NUDGEFLOW_REDIS_SSL_CA_FILE": "/ca.pem",
                           "NUDGEFLOW_REDIS_URL": "rediss://:secret@cache:6380/0"})
    assert "secret" not in str(cfg)  # the URL's password stays masked


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(connections.DRIVER_WARNINGS_LOGGER, logging.WARNING, "protocol.py",
                             1, msg, args, None)


def test_the_drivers_server_warnings_pass_once_a_minute_with_the_count_held_back() -> None:
    now = [100.0]
    held = connections.ServerWarnings(interval_s=60, clock=lambda: now[0])
    warning = "Unlogged batch covering 30 partitions detected"
    assert held.filter(_record("Server warning: %s", warning))  # the first at once
    assert not any(held.filter(_record("Server warning: %s", warning)) for _ in range(499))
    assert held.filter(_record("Connection lost to %s", "10.0.0.1"))  # others always pass
    now[0] += 61
    record = _record("Server warning: %s", warning)
    assert held.filter(record)
    assert record.getMessage() == (f"Server warning: {warning} (and 499 more server warnings "
                                   "in the last 61 s, not logged)")
    assert not held.filter(_record("Server warning: %s", warning))


def test_building_a_cluster_installs_the_filter_on_the_drivers_logger_once() -> None:
    logger = logging.getLogger(connections.DRIVER_WARNINGS_LOGGER)
    for _ in range(2):
        connections.cassandra_cluster(["10.0.0.1"], 9042)
    assert sum(isinstance(f, connections.ServerWarnings) for f in logger.filters) == 1
