"""No secret leaks, end to end, with every server secured: Kafka with SASL_SSL (SCRAM-SHA-512),
Cassandra with a password and TLS, Redis with TLS and a password, all three from one test CA
(trustme), each on private ports with its own temporary directories (not the local stack).

The secrets reach the commands as a user gives them, in ``NUDGEFLOW_*`` environment variables:
provisioning, ``nudgeflow generate``, a bounded ``nudgeflow run --local`` (an embedded
MiniCluster), ``segments sizes|members``, ``stores rebuild-redis``, and the same tools with a
wrong password each, which must fail with a message. Then every byte those commands printed or
wrote (stdout, stderr, the job's log, the MiniCluster's Flink log directory, the checkpoint
directory) is searched for every secret, right or wrong. The servers' own logs and the
configuration this test writes for them are exempt: they are the servers'.

The run must have worked over the secured servers (records on the segment-changes topic,
members in Cassandra and Redis), and the search must have read a good amount of text, so the
test cannot pass by reading nothing.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.paths import StackPaths
from infra.servers.cassandra import CassandraServer
from infra.servers.kafka import CLUSTER_ID, KafkaServer
from jobs.cli import wiring
from jobs.config import load_config
from schemas.codec import Codec
from tests.ports import free_port
from udfs.stores import connections, keys

pytestmark = pytest.mark.integration

KAFKA_USER = "svc-nudgeflow"
KAFKA_SECRET = "kafka-Secret-7f3a"
CASSANDRA_USER = "svc_nudgeflow"
CASSANDRA_SECRET = "cass-Secret-91c2"
REDIS_SECRET = "redis-Secret-04be"
#: the wrong passwords of the failing commands: they must not be printed either
WRONG = {"kafka": "wrong-Kafka-3c9d", "cassandra": "wrong-Cass-8e51", "redis": "wrong-Redis-d27a"}
SECRETS = (KAFKA_SECRET, CASSANDRA_SECRET, REDIS_SECRET, *WRONG.values())

_START_TIMEOUT_S = 150.0


def _wait(what, check, proc, log, timeout_s=_START_TIMEOUT_S):
    """Call ``check`` until it returns without raising; fail with the server's log tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except Exception as exc:  # noqa: BLE001 - not ready yet
            last = exc
        tail = "\n".join(Path(log).read_text(errors="replace").splitlines()[-30:])
        assert proc.poll() is None, f"{what} exited ({proc.returncode}):\n{tail}"
        assert time.monotonic() < deadline, f"{what} not ready: {last!r}\n{tail}"
        time.sleep(1)


def _start(argv, log, env=None):
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- the servers -------------------------------------------------------------------------------


class SecuredKafka(KafkaServer):
    """The stack's KRaft broker with a SASL_SSL (SCRAM-SHA-512) client listener.

    Inter-broker traffic (to itself) stays on a plaintext listener of its own port: the test is
    about the clients.
    """

    def __init__(self, port, internal_port, controller_port, pem, ca):
        super().__init__(port, controller_port)
        self.internal_port = internal_port
        self.pem = pem
        self.ca = ca

    def server_properties(self, paths):
        props = dict(line.split("=", 1) for line in super().server_properties(paths).splitlines()
                     if "=" in line and not line.startswith("#"))
        internal = f"127.0.0.1:{self.internal_port}"
        controller = f"127.0.0.1:{self.controller_port}"
        props.update({
            "listeners": f"SASL_SSL://{self.address},INTERNAL://{internal},"
                         f"CONTROLLER://{controller}",
            "advertised.listeners": f"SASL_SSL://{self.address},INTERNAL://{internal}",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map":
                "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.pem),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
            "ssl.client.auth": "none",
        })
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def prepare(self, paths):
        for directory in (paths.conf(self.name), paths.logs(self.name), paths.data(self.name)):
            directory.mkdir(parents=True, exist_ok=True)
        self.properties_file(paths).write_text(self.server_properties(paths))
        self.log4j2_file(paths).write_text(self.log4j2_config(paths))
        # the SCRAM user is created with the storage (KRaft keeps it in its metadata log)
        proc = subprocess.run(
            [*self._java_prefix(paths, ("-Xmx256m",)), "kafka.tools.StorageTool", "format",
             "--cluster-id", CLUSTER_ID, "--config", str(self.properties_file(paths)),
             "--add-scram", f"SCRAM-SHA-512=[name={KAFKA_USER},password={KAFKA_SECRET}]"],
            capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


class SecuredCassandra(CassandraServer):
    """The stack's Cassandra with PasswordAuthenticator and TLS-only client connections."""

    def __init__(self, native_port, storage_port, pem):
        super().__init__(native_port, storage_port=storage_port, jmx_port=None, heap="768M",
                         num_tokens=4)
        self.pem = pem

    def prepare(self, paths):
        super().prepare(paths)
        conf = self._yaml_path(paths)
        text = conf.read_text().replace("authenticator: AllowAllAuthenticator",
                                        "authenticator: PasswordAuthenticator")
        text += (
            "client_encryption_options:\n"
            "  enabled: true\n"
            "  optional: false\n"
            "  ssl_context_factory:\n"
            "    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory\n"
            f"  keystore: {self.pem}\n"
            "  require_client_auth: false\n"
        )
        conf.write_text(text)

    def command(self, paths):
        argv = super().command(paths)
        # the default superuser at once, not after 10 s
        argv.insert(argv.index("-cp"), "-Dcassandra.superuser_setup_delay_ms=0")
        return argv


def _pkcs8_key_and_chain(cert) -> bytes:
    """A leaf's PKCS#8 private key and certificate chain in one PEM (Kafka's and Cassandra's
    PEM keystores want PKCS#8)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    return pkcs8 + b"".join(c.bytes() for c in cert.cert_chain_pems)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """The three secured servers; the NUDGEFLOW_* environment that reaches them."""
    import trustme

    root = tmp_path_factory.mktemp("secured")
    tls = root / "tls"
    tls.mkdir()
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    (tls / "server.pem").write_bytes(_pkcs8_key_and_chain(leaf))
    leaf.private_key_pem.write_to_path(str(tls / "server.key"))
    leaf.cert_chain_pems[0].write_to_path(str(tls / "server.crt"))
    ca_file = str(tls / "ca.pem")

    # a home of the servers' own, with the cached jars
    home = root / "home"
    home.mkdir()
    (home / "jars").symlink_to(StackPaths.from_env().home / "jars")
    paths = StackPaths(home)

    kafka = SecuredKafka(free_port(), free_port(), free_port(), tls / "server.pem", ca_file)
    cassandra = SecuredCassandra(free_port(), free_port(), tls / "server.pem")
    redis_port = free_port()
    procs = []
    try:
        kafka.prepare(paths)
        procs.append(_start(kafka.command(paths), root / "kafka.out"))
        cassandra.prepare(paths)
        procs.append(_start(cassandra.command(paths), root / "cassandra.out",
                            cassandra.env(paths)))
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is missing (the local stack installs it)"
        procs.append(_start(
            [redis_server, "--port", "0", "--tls-port", str(redis_port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(tls / "server.crt"), "--tls-key-file", str(tls / "server.key"),
             "--tls-ca-cert-file", ca_file, "--tls-auth-clients", "no",
             "--requirepass", REDIS_SECRET, "--save", "", "--appendonly", "no",
             "--dir", str(root)], root / "redis.out"))

        env = {
            "NUDGEFLOW_KAFKA_BOOTSTRAP": kafka.address,
            "NUDGEFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "NUDGEFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "NUDGEFLOW_KAFKA_SASL_USERNAME": KAFKA_USER,
            "NUDGEFLOW_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
            "NUDGEFLOW_KAFKA_SSL_CA_FILE": ca_file,
            "NUDGEFLOW_CASSANDRA_PORT": str(cassandra.native_port),
            "NUDGEFLOW_CASSANDRA_USERNAME": CASSANDRA_USER,
            "NUDGEFLOW_CASSANDRA_PASSWORD": CASSANDRA_SECRET,
            "NUDGEFLOW_CASSANDRA_SSL_CA_FILE": ca_file,
            "NUDGEFLOW_REDIS_URL": f"rediss://:{REDIS_SECRET}@127.0.0.1:{redis_port}/0",
            "NUDGEFLOW_REDIS_SSL_CA_FILE": ca_file,
        }
        cfg = load_config(env=env)

        def kafka_ready():
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(**cfg.python_client_kwargs(), request_timeout_ms=5000)
            try:
                admin.list_topics()
            finally:
                admin.close()

        def cassandra_ready():
            cluster = connections.cassandra_cluster(["127.0.0.1"], cassandra.native_port,
                                                    "cassandra", "cassandra", ca_file)
            try:
                session = cluster.connect()
                session.execute(
                    f"CREATE ROLE IF NOT EXISTS {CASSANDRA_USER} WITH PASSWORD = "
                    f"'{CASSANDRA_SECRET}' AND LOGIN = true AND SUPERUSER = true")
            finally:
                cluster.shutdown()

        _wait("redis-server", lambda: wiring.redis_client(cfg, socket_timeout=2).ping(),
              procs[2], root / "redis.out")
        _wait("kafka", kafka_ready, procs[0], root / "kafka.out")
        _wait("cassandra", cassandra_ready, procs[1], root / "cassandra.out")
        yield env, cfg, root
    finally:
        for proc in reversed(procs):
            _stop(proc)


# -- the commands -------------------------------------------------------------------------------


class Transcript:
    """What every command printed, kept to be searched for secrets."""

    def __init__(self, env):
        self.env = {**os.environ, **env}
        self.texts: dict[str, str] = {}

    def run(self, name, argv, env=None, timeout=300, expect_ok=True):
        # a session of its own: on a timeout the whole group goes (`run --local`'s job too)
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**self.env, **(env or {})}, start_new_session=True) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                pytest.fail(f"{name} did not finish in {timeout} s:\n{out}\n{err}")
        proc = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        self.texts[f"{name}: stdout"] = proc.stdout
        self.texts[f"{name}: stderr"] = proc.stderr
        if expect_ok:
            assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
        else:
            assert proc.returncode != 0, f"{name} should have failed:\n{proc.stdout}"
        return proc

    def cli(self, name, *args, **kwargs):
        return self.run(name, [sys.executable, "-m", "jobs.cli", *args], **kwargs)


#: provisioning as `nudgeflow stack provision` does it, with the clients' INFO logs on stderr
_PROVISION = """
import logging
logging.basicConfig(level=logging.INFO)
from jobs.cli import wiring
from jobs.config import load_config
cfg = load_config()
print(f"configuration: {cfg}")
wiring.provision_topics(cfg)
wiring.provision_cassandra(cfg)
"""


def test_no_secret_reaches_any_output_with_secured_servers(secured, tmp_path):
    env, cfg, _ = secured
    log_dir = tmp_path / "flink-log"
    checkpoints = tmp_path / "checkpoints"
    job_log = tmp_path / "job.log"
    t = Transcript(env)

    t.run("provision", [sys.executable, "-c", _PROVISION])
    t.cli("generate", "generate", "--users", "30", "--events", "600", "--seed", "7",
          "--quiet")
    t.cli("run", "run", "--local", "--bounded", "--log", str(job_log),
          "--starting-offsets", "earliest", "--checkpoint-interval-ms", "2000",
          "--checkpoint-dir", checkpoints.as_uri(),
          # every generated event counts, even the ones sent minutes late on purpose
          "--allowed-lateness-ms", str(24 * 3_600_000),
          env={"FLINK_LOG_DIR": str(log_dir)}, timeout=240)

    # the run worked over the secured servers: its output is on Kafka and in both stores
    codec = Codec.load()
    decoded = [codec.decode_named(value) for value in
               wiring.topic_values(cfg, cfg.segment_changes_topic) if value]
    changes = [record for name, record in decoded if name == "SegmentChange"]
    assert changes, "the generated traffic puts users in segments"
    # a bounded run ends with every user out of every segment: the history has them all
    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    try:
        rows = session.execute("SELECT change_id FROM membership_changes").all()
    finally:
        session.cluster.shutdown()
    assert {row.change_id for row in rows} == {c["change_id"] for c in changes}
    client = wiring.redis_client(cfg, decode_responses=True, socket_timeout=5)
    assert client.hgetall(keys.segment_sizes(cfg.redis_key_prefix)), "no segment sizes in Redis"
    segment = changes[0]["segment_id"]

    sizes = t.cli("segments sizes", "segments", "sizes")
    assert segment in sizes.stdout
    t.cli("segments members", "segments", "members", segment)
    rebuilt = t.cli("stores rebuild-redis", "stores", "rebuild-redis")
    assert rebuilt.stdout.strip()

    # the same tools with a wrong password: a clear failure, without either password
    bad_redis = env["NUDGEFLOW_REDIS_URL"].replace(REDIS_SECRET, WRONG["redis"])
    failed = t.cli("wrong redis password", "segments", "sizes",
                   env={"NUDGEFLOW_REDIS_URL": bad_redis}, expect_ok=False)
    assert "Redis at" in failed.stderr, failed.stderr
    failed = t.cli("wrong cassandra password", "segments", "members", segment,
                   env={"NUDGEFLOW_CASSANDRA_PASSWORD": WRONG["cassandra"]}, expect_ok=False)
    assert "Cassandra" in failed.stderr, failed.stderr
    # (kafka-python reports a failed SASL login as "Unable to bootstrap", with a traceback)
    failed = t.cli("wrong kafka password", "generate", "--users", "1", "--events", "1",
                   "--quiet", env={"NUDGEFLOW_KAFKA_SASL_PASSWORD": WRONG["kafka"]},
                   expect_ok=False, timeout=120)
    assert "Unable to bootstrap" in failed.stderr, failed.stderr[-2000:]

    # every byte the commands printed or wrote (the transcript kept for a failure's reader)
    texts = dict(t.texts)
    (tmp_path / "transcript.txt").write_text(
        "".join(f"==> {name} <==\n{text}\n" for name, text in texts.items()))
    files = [job_log, *sorted(p for p in log_dir.rglob("*") if p.is_file()),
             *sorted(p for p in checkpoints.rglob("*") if p.is_file())]
    for path in files:
        texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    flink_logs = [p for p in log_dir.rglob("*.log") if p.stat().st_size > 0]
    assert flink_logs, f"the MiniCluster wrote no log to FLINK_LOG_DIR={log_dir}"
    assert sum(len(text) for text in texts.values()) > 100_000, "too little was searched"
    everything = "".join(texts.values())
    assert "security.protocol = SASL_SSL" in everything, \
        "the Kafka clients' settings are not in the Flink log: the search would miss them"
    # the printed configurations are there, with the secrets masked
    assert "kafka_sasl_password='***'" in t.texts["run: stdout"]
    assert "cassandra_password='***'" in t.texts["run: stdout"]
    assert "redis_url='rediss://***@127.0.0.1:" in t.texts["run: stdout"]
    leaks = [(secret, where) for where, text in texts.items() for secret in SECRETS
             if secret in text]
    assert not leaks, "\n".join(f"{secret!r} in {where}: {_around(texts[where], secret)!r}"
                                for secret, where in leaks)


def _around(text, secret):
    at = text.find(secret)
    return text[max(0, at - 300):at + 100]
