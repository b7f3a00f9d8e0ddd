"""A JVM consumer reads a trigger topic of the real stack with SingleObjectDeserializer.

TriggerEvents are produced to a tier topic of this test's own, in the default encoding (C3 01,
fingerprint, Avro body): current-version triggers, one written with the published version 1
(schemas/history), one in an aborted transaction, and two values the deserializer must refuse
(not single-object; an unknown fingerprint). io.nudgeflow.flink.tools.DumpTopic, run with plain
``java`` on the nudgeflow-flink jar and the consumer jars (Avro, kafka-clients), reads the topic
read_committed and prints JSON lines; every record must equal what the Python codec decodes
from the same bytes, field by field, the version-1 record resolved to the current version, and
the refused values reported with a message that says why; told to expect ClickEvents
(``nudgeflow.expect.record``), the deserializer refuses every trigger.
"""

import json
import subprocess
from io import BytesIO

import pytest
from fastavro import schemaless_writer

from infra.jars import ensure_jars
from schemas.codec import MAGIC, Codec
from tests.integration.kafka_io import produce_raw
from tests.integration.test_sender_e2e import produce_transactions
from tests.unit.test_sender import make_trigger

pytestmark = pytest.mark.integration

CODEC = Codec.load()
UNKNOWN_FINGERPRINT = bytes.fromhex("0123456789abcdef")
NO_JOURNEY = {"journey_id": None, "node_id": None, "journey_instance": None}  # their defaults


@pytest.fixture(scope="module")
def java_classpath():
    """nudgeflow-flink (built from this checkout, schemas included) and the consumer jars."""
    own = sorted(ensure_jars("flink").glob("nudgeflow-flink-*.jar"))
    consumer = sorted(ensure_jars("consumer").glob("*.jar"))
    assert own, "nudgeflow-flink was not built"
    return ":".join(str(p) for p in [*own, *consumer])


def dump_topic(classpath, *args, timeout_s=120, java_options=()):
    """Runs DumpTopic; returns its JSON lines, failing the test with its stderr if it fails."""
    proc = subprocess.run(  # noqa: S603 - fixed java command line of the test's own jars
        ["java", *java_options, "-cp", classpath, "io.nudgeflow.flink.tools.DumpTopic",
         *map(str, args)],
        capture_output=True, text=True, timeout=timeout_s, check=False)
    assert proc.returncode == 0, f"DumpTopic exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def encode_v1(trigger):
    """A TriggerEvent in the bytes a producer still on version 1 writes."""
    (version, fingerprint, writer), *_ = CODEC.versions("TriggerEvent")
    assert version == 1
    body = BytesIO()
    schemaless_writer(body, writer, trigger)
    return MAGIC + fingerprint + body.getvalue()


def current_triggers():
    """Triggers that use every kind of field: maps, arrays, unions set and null, enums."""
    plain = make_trigger("jvm-1", tier="P1", user_id="u-1")
    rich = make_trigger("jvm-2", tier="P1", user_id="u-2", channel="SMS",
                        expires_at=1_760_000_000_000)
    rich.update(
        payload={"product_id": "sku-42", "name": "Crème brûlée \"deluxe\"\n"},
        segments=["vip", "cart-abandoners"], churn_score=0.75, model_version="churn-7",
        journey_id="welcome", node_id="send-1", journey_instance=2, priority_score=-12.5,
        explanation={"reason": "scored", "definition_versions": {"c-1": 3, "seg-vip": 1},
                     "features": {"recency_days": 2.0, "ctr": 0.125},
                     "rivals": [{"campaign_id": "c-2", "priority_score": 3.5,
                                 "outcome": "DEFERRED"}]})
    return [plain, rich, *(make_trigger(f"jvm-{n}", tier="P1", user_id=f"u-{n}")
                           for n in range(3, 6))]


def test_a_jvm_consumer_reads_the_trigger_topic(isolated_cfg, java_classpath):
    topic = isolated_cfg.trigger_topic("P1")
    triggers = current_triggers()
    old = make_trigger("jvm-v1", tier="P1", user_id="u-old")
    assert not NO_JOURNEY.keys() & old.keys()  # version 1 has no journey fields
    values = {t["trigger_id"]: CODEC.encode("TriggerEvent", t) for t in triggers}
    values["jvm-v1"] = encode_v1(old)
    produce_raw(isolated_cfg, topic, [(tid.encode(), v) for tid, v in values.items()])
    aborted = make_trigger("jvm-aborted", tier="P1")
    produce_transactions(isolated_cfg, [
        ([(topic, b"aborted", CODEC.encode("TriggerEvent", aborted))], False)])
    refused = {
        b"not-avro": b"\x00\x00\x00\x00\x07 Confluent-framed or anything else",
        b"from-the-future": MAGIC + UNKNOWN_FINGERPRINT + b"\x02",
    }
    produce_raw(isolated_cfg, topic, list(refused.items()))

    lines = dump_topic(java_classpath, isolated_cfg.kafka_bootstrap, topic)

    by_key = {line["key"]: line for line in lines}
    assert len(lines) == len(by_key) == len(values) + len(refused), lines  # none twice
    assert "aborted" not in by_key  # read_committed
    for trigger_id, value in values.items():
        assert by_key[trigger_id]["value"] == CODEC.decode(value, expect="TriggerEvent")
    for trigger in triggers:  # and so equal to what was produced, field by field
        assert by_key[trigger["trigger_id"]]["value"] == {**NO_JOURNEY, **trigger}
    assert by_key["jvm-v1"]["value"] == {**old, **NO_JOURNEY}  # resolved to version 2
    assert "not Avro single-object encoding" in by_key["not-avro"]["error"]
    assert "Confluent Schema Registry framing" in by_key["not-avro"]["error"]
    assert ("unknown schema fingerprint 0123456789abcdef"
            in by_key["from-the-future"]["error"])
    assert "upgrade the nudgeflow-flink jar" in by_key["from-the-future"]["error"]

    clicks_only = dump_topic(java_classpath, isolated_cfg.kafka_bootstrap, topic,
                             java_options=["-Dnudgeflow.expect.record=ClickEvent"])
    wrong = [line for line in clicks_only if line["key"] in values]
    assert len(wrong) == len(values)
    assert all("expected a io.nudgeflow.ClickEvent" in line["error"] and
               "holds a io.nudgeflow.TriggerEvent" in line["error"] for line in wrong)


def test_the_jar_knows_every_published_fingerprint(java_classpath):
    shipped = {line["source"]: line["fingerprint"]
               for line in dump_topic(java_classpath, "--fingerprints")}
    expected = {}
    for name in CODEC.schema_names():
        for version, fingerprint, _ in CODEC.versions(name):
            current = version == CODEC.versions(name)[-1][0]
            source = f"{name}.avsc" if current else f"history/{name}.v{version}.avsc"
            expected[source] = fingerprint.hex()
    assert {s: f for s, f in shipped.items() if s in expected} == expected
