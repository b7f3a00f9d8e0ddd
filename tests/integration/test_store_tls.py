"""The engine's store writer and the tools reach a Redis that speaks only TLS and wants a
password (`rediss://`, a private CA), with the stack's Cassandra: a real redis-server with TLS
(Debian's build has it), certificates from a test CA (trustme). A client that does not trust
the CA, or does not speak TLS, is refused."""

import shutil
import socket
import subprocess
import time
import uuid

import pytest
import redis

from jobs.cli import wiring
from jobs.config import load_config, replace
from tests.drills import runner
from tests.ports import free_port
from udfs.stores import keys
from udfs.stores.membership import CassandraRedisStore

pytestmark = pytest.mark.integration

PASSWORD = "tls-test-secret"


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server on loopback with TLS only (no plain port) and a password; its CA file."""
    import trustme

    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing (the local stack installs it)"
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "server.pem"),
         "--tls-key-file", str(tmp_path / "server.key"),
         "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert proc.poll() is None, "redis-server with TLS exited at start"
            assert time.monotonic() < deadline, "redis-server with TLS did not listen"
            time.sleep(0.1)
    yield port, tmp_path / "ca.pem"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def cfg(local_stack, tls_redis):
    port, ca = tls_redis
    run = uuid.uuid4().hex[:8]
    cfg = replace(load_config(env={}), cassandra_keyspace=f"it_{run}",
                  redis_key_prefix=f"it-{run}",
                  redis_url=f"rediss://:{PASSWORD}@127.0.0.1:{port}/0",
                  redis_ssl_ca_file=str(ca))
    wiring.provision_cassandra(cfg, say=lambda _: None)
    yield cfg
    runner.drop_keyspace(cfg)


def test_the_engine_writer_and_the_tools_use_tls_redis(cfg, tmp_path):
    change = {"change_id": "c-1", "user_id": "tls-user", "segment_id": "s1", "change": "ENTER",
              "definition_version": 1, "event_time": 1_800_000_000_000, "reason": "test",
              "churn_score": 0.5, "model_version": "m1"}
    store = CassandraRedisStore((cfg.cassandra_hosts,), cfg.cassandra_port,
                                cfg.cassandra_keyspace, cfg.redis_url, cfg.redis_key_prefix,
                                redis_ssl_ca_file=cfg.redis_ssl_ca_file)
    writer = store()
    try:
        assert writer.write_many([change]) == []
        assert writer.segment_sizes() == {"s1": 1}
    finally:
        writer.close()
    # a tool's client (nudgeflow stores / defs list) sees what the job wrote
    client = wiring.redis_client(cfg, decode_responses=True, socket_timeout=5)
    assert client.smembers(keys.user_segments(cfg.redis_key_prefix, "tls-user")) == {"s1"}

    # a client that does not trust the CA is refused by its own verification
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        wiring.redis_client(replace(cfg, redis_ssl_ca_file=str(other)), socket_timeout=5).ping()
    # and one in the clear gets no answer it can use
    plain = cfg.redis_url.replace("rediss://", "redis://")
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=3).ping()
