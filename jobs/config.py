"""The one configuration object of nudgeflow.

``NudgeflowConfig`` is frozen and typed; every field has a help text (its ``metadata["help"]``),
shown by ``nudgeflow run --help`` and in docs/operations.md. Values are layered, later wins:

1. the defaults below (they match the local stack of ``nudgeflow stack up``);
2. a YAML file (``--config FILE`` or ``$NUDGEFLOW_CONFIG``), keys spelled as the fields;
3. environment variables ``NUDGEFLOW_<FIELD>`` (e.g. ``NUDGEFLOW_KAFKA_BOOTSTRAP``);
4. command-line flags ``--<field-with-dashes>`` (e.g. ``--kafka-bootstrap``).

Fields marked secret are masked in ``repr`` and in ``describe()``, so logging a config never
leaks a password.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from udfs.intake import Limits

ENV_PREFIX = "NUDGEFLOW_"
DELIVERY_GUARANTEES = ("exactly-once", "at-least-once")
STARTING_OFFSETS = ("committed", "earliest", "latest")
EXECUTION_MODES = ("thread", "process")
STORE_CLIENTS = ("process", "in-task")
#: Kafka security protocols and the SASL mechanisms the job and the tools can log in with
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
STATE_BACKENDS = ("hashmap", "rocksdb")
#: where inputs wait for the watermark (``input_order``)
INPUT_ORDERS = ("java", "engine")
#: how values are framed on the topics other teams read (jobs/schema_registry.py)
WIRE_FORMATS = ("single-object", "confluent")
#: the job's Kafka connector (flink-sql-connector-kafka) carries the Kafka client relocated
#: under this package: a JAAS line naming the unshaded login module fails at the first
#: connection with "No LoginModule found"
FLINK_KAFKA_SHADED_PREFIX = "org.apache.flink.kafka.shaded."
#: Flink's upper bound on key groups (``KeyGroupRangeAssignment.UPPER_BOUND_MAX_PARALLELISM``)
MAX_KEY_GROUPS = 32_768
#: the largest dead_letter_raw_max_bytes: 1 MiB (Kafka's default max.request.size and
#: message.max.bytes) minus the 48 KiB the rest of a DeadLetter may take, minus a margin
MAX_DEAD_LETTER_RAW_BYTES = 983_040
#: the churn model shipped with nudgeflow (its metadata ``churn.json`` beside it); a plain path,
#: so that the job imports nothing from ``models``
SHIPPED_CHURN_MODEL = Path(__file__).resolve().parent.parent / "models" / "churn.onnx"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _opt(default: Any, help: str, secret: bool = False, choices: Sequence[str] = ()) -> Any:  # noqa: A002
    return field(default=default, metadata={"help": help, "secret": secret, "choices": choices})


@dataclass(frozen=True)
class NudgeflowConfig:
    """Everything a nudgeflow job or command reads from its environment."""

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str = _opt("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated.")
    kafka_security_protocol: str = _opt(
        "PLAINTEXT", "Kafka security.protocol.", choices=KAFKA_SECURITY_PROTOCOLS
    )
    kafka_sasl_mechanism: str = _opt(
        "", "Kafka SASL mechanism (with SASL_PLAINTEXT or SASL_SSL); empty: none.",
        choices=KAFKA_SASL_MECHANISMS,
    )
    kafka_sasl_username: str = _opt("", "Kafka SASL user name.")
    kafka_sasl_password: str = _opt("", "Kafka SASL password.", secret=True)
    kafka_ssl_ca_file: str = _opt(
        "", "PEM file of the CA certificates that sign the brokers' (SSL, SASL_SSL); empty: "
        "the JVM's and Python's default trust stores.")
    kafka_ssl_client_pem: str = _opt(
        "", "PEM file holding this client's private key and certificate chain, for brokers "
        "that require mutual TLS; empty: none.")
    kafka_ssl_key_password: str = _opt(
        "", "Password of the private key in kafka-ssl-client-pem, if it is encrypted.",
        secret=True)
    kafka_replication_factor: int = _opt(
        0, "Replication factor of the topics `nudgeflow` creates; 0: infra/topics.yaml's (1, "
        "for the local stack's single broker).")
    consumer_group: str = _opt("nudgeflow", "Consumer group id of the job's Kafka sources.")
    starting_offsets: str = _opt(
        "committed",
        "Where the clicks source starts without a checkpoint: committed offsets of the "
        "consumer group (falling back to earliest), earliest, or latest.",
        choices=STARTING_OFFSETS,
    )
    # --- topics ----------------------------------------------------------------------------
    clicks_topic: str = _opt("clicks", "Topic of Avro ClickEvents (input).")
    user_metadata_topic: str = _opt("user-metadata", "Compacted topic of Avro UserMetadata.")
    definitions_topic: str = _opt("definitions", "Compacted control topic of DefinitionUpdates.")
    segment_changes_topic: str = _opt("segment-changes", "Topic of Avro SegmentChanges.")
    trigger_topic_prefix: str = _opt(
        "triggers-", "Trigger topics are <prefix><tier>, tier p0 (critical) to p3 (low)."
    )
    trigger_decisions_topic: str = _opt(
        "trigger-decisions",
        "Topic of Avro TriggerDecisions: campaigns that fired but were suppressed or deferred.",
    )
    dead_letter_topic: str = _opt("dead-letter", "Topic of Avro DeadLetters (rejected input).")
    outcomes_topic: str = _opt("outcomes", "Topic of Avro CampaignOutcomes (feedback).")
    backfill_topic: str = _opt(
        "backfill-requests",
        "Topic of Avro BackfillRequests: per-user re-evaluations (`defs publish --backfill`).",
    )
    # --- event time and the per-user engine ------------------------------------------------
    max_out_of_orderness_ms: int = _opt(
        20,
        "Watermarks trail the newest event time by this much (bounded out-of-orderness); "
        "every input waits this long (plus the watermark interval) to be applied in order. A "
        "click further behind a later click of its partition is applied at its user's clock "
        "when that has passed it (counted: inputs_applied_late). Raise it (the "
        "reordered-input profile: 1,000 ms) where a user's own clicks reach Kafka out of order "
        "by more (docs/operations.md, \"Event time and latency\").",
    )
    watermark_interval_ms: int = _opt(
        10, "How often the sources emit watermarks (pipeline.auto-watermark-interval) while "
        "live: an input waits up to this long on top of the out-of-orderness bound (catching "
        "up, see catch_up_watermark_interval_ms).")
    catch_up_lag_ms: int = _opt(
        1_000, "The clicks source is catching up (a backlog, a replay, a job behind) while its "
        "newest record's Kafka append time is more than this behind the wall clock.")
    catch_up_watermark_interval_ms: int = _opt(
        200, "While catching up, the clicks source emits watermarks at most this often, so a "
        "user's backlog clicks are applied together in fewer steps; live, every "
        "watermark_interval_ms. Changes when inputs are applied, never what they give "
        "(io.nudgeflow.flink.ClickWatermarks). 0: never paced.")
    idleness_ms: int = _opt(
        10_000, "A source partition without events for this long stops holding watermarks back "
        "(the user-metadata topic, once quiet this long after the job starts, for good)."
    )
    input_order: str = _opt(
        "java",
        "Where a user's inputs wait for the watermark: 'java' (a Java keyed operator before the "
        "engine holds them and hands each user's on together, so the engine applies them in "
        "the one step that receives them) or 'engine' (the engine buffers them in its clock state "
        "and applies them at a later timer step: two Python steps per click). The same "
        "records either way; a savepoint taken under one restores only under the same setting "
        "or from 'engine' to 'java' (docs/operations.md).",
        choices=INPUT_ORDERS,
    )
    quiet_release_ms: int = _opt(
        3_000,
        "An input still waiting for the watermark after this much processing time is applied "
        "anyway: the stream went quiet and no later click will move the watermark. 0: never "
        "(strictly event time; the last inputs then wait for the next click).",
    )
    allowed_lateness_ms: int = _opt(
        60_000,
        "Events up to this much behind the watermark are still processed; later ones go to "
        "the dead-letter topic with reason LATE_EVENT.",
    )
    max_future_skew_ms: int = _opt(
        600_000,
        "Events (and metadata updated_at) more than this far ahead of the record's Kafka "
        "timestamp (the broker's append time) are rejected as TIME_IN_FUTURE, in the clicks "
        "source too, so they never move a watermark.",
    )
    max_event_age_ms: int = _opt(
        30 * 24 * 3600 * 1000,
        "Clicks whose event time is more than this far behind the record's Kafka timestamp are "
        "rejected as TIME_TOO_OLD (0: no age limit; times before 2000-01-01 are always "
        "rejected).",
    )
    # --- input limits (udfs/intake.py; README "Decode and validate") -------------------------
    max_record_bytes: int = _opt(
        65_536, "A clicks or user-metadata value longer than this is rejected (TOO_LARGE) "
        "before it is decoded.")
    max_definition_bytes: int = _opt(
        262_144, "A definitions-topic value longer than this is rejected (TOO_LARGE).")
    max_id_bytes: int = _opt(
        256, "Ids (event_id, user_id, session/product/order id, definition_id), Kafka keys and "
        "property names: at most this many UTF-8 bytes (ID_TOO_LONG, KEY_TOO_LONG).")
    max_string_bytes: int = _opt(
        4096, "Other string fields (page_url, category, search_query, currency, country) and "
        "property values: at most this many UTF-8 bytes (STRING_TOO_LONG).")
    max_properties: int = _opt(
        64, "A click's properties map holds at most this many entries (PROPERTIES_TOO_MANY).")
    max_price: int = _opt(
        1_000_000_000, "A click's unit price must be finite and in [0, max-price] "
        "(NOT_FINITE, OUT_OF_RANGE).")
    max_quantity: int = _opt(
        1_000_000, "A click's quantity must be in [1, max-quantity] (OUT_OF_RANGE).")
    max_lifetime_value: int = _opt(
        1_000_000_000_000, "A user's lifetime_value must be finite and within +-this "
        "(NOT_FINITE, OUT_OF_RANGE).")
    dead_letter_raw_max_bytes: int = _opt(
        65_536, "A DeadLetter carries the rejected value in raw up to this size; a longer one "
        "is left out (raw_omitted) and found by topic, partition and offset. At most 983040, "
        "so that every DeadLetter stays under Kafka's 1 MiB default record limit.")
    state_ttl_ms: int = _opt(
        90 * 24 * 3600 * 1000,
        "A user's state is cleared after this much event time without events (bounded state).",
    )
    segments_dir: str = _opt(
        "", "Directory of segment YAML files loaded at start; empty: the shipped catalog."
    )
    campaigns_dir: str = _opt(
        "",
        "Directory of campaign YAML files (and optionally priority-policy.yaml, "
        "currency-rates.yaml) loaded at start; empty: the shipped catalog; 'none': no campaigns.",
    )
    journeys_dir: str = _opt(
        "",
        "Directory of journey YAML files loaded at start; empty: none (journeys are opt-in: "
        "the shipped ones are in udfs/catalog/journeys; they can also be published at "
        "runtime with `nudgeflow defs publish`).",
    )
    redis_key_prefix: str = _opt("nudgeflow", "Prefix of the Redis keys nudgeflow writes.")
    churn_model: str = _opt(
        "",
        "Churn model (.onnx, its metadata .json beside it) scored in the engine; empty: the "
        "shipped models/churn.onnx; 'off': no scoring.",
    )
    # --- stores ----------------------------------------------------------------------------
    cassandra_hosts: str = _opt("127.0.0.1", "Cassandra contact points, comma-separated.")
    cassandra_port: int = _opt(9042, "Cassandra native protocol port.")
    cassandra_keyspace: str = _opt("nudgeflow", "Cassandra keyspace.")
    cassandra_username: str = _opt("", "Cassandra user name; empty: no authentication.")
    cassandra_password: str = _opt("", "Cassandra password.", secret=True)
    cassandra_ssl_ca_file: str = _opt(
        "", "PEM file of the CAs that sign the Cassandra nodes' certificates: connect over TLS "
        "and verify each node's certificate and host name; empty: no TLS.")
    cassandra_replication: str = _opt(
        "", "Replication of the keyspace `nudgeflow` creates, as a CQL map, e.g. {'class': "
        "'NetworkTopologyStrategy', 'dc1': 3}; empty: SimpleStrategy with one replica (the "
        "local stack). An existing keyspace keeps its own (ALTER KEYSPACE changes it).")
    redis_url: str = _opt("redis://127.0.0.1:6379/0", "Redis URL (may carry a password); "
                          "rediss://... connects over TLS.", secret=True)
    redis_ssl_ca_file: str = _opt(
        "", "With a rediss:// URL: PEM file of the CAs that sign the Redis server's "
        "certificate; empty: the system's trust store.")
    # --- Flink -----------------------------------------------------------------------------
    job_name: str = _opt("nudgeflow", "Flink job name.")
    parallelism: int = _opt(1, "Default parallelism of the job's operators.")
    max_parallelism: int = _opt(
        128, "Key groups of the keyed state (pipeline.max-parallelism): the most the job can be "
        "rescaled to. Fixed for the life of the state: a savepoint taken with another value is "
        "refused by Flink.")
    execution_mode: str = _opt(
        "thread",
        "python.execution-mode: thread (in the JVM, ~25x faster here) or process.",
        choices=EXECUTION_MODES,
    )
    gil_switch_interval_us: int = _opt(
        200,
        "sys.setswitchinterval of the Python that runs the operators, in microseconds "
        "(Python's default: 5000): how long one Python thread keeps the GIL while another "
        "waits for it. A churn model onnxruntime must score (not a tree ensemble) is scored "
        "on a thread of its own, each score handed over and back; with 200 a drain ran about "
        "a third faster here than with 5000 (docs/performance.md). "
        "Process-wide: it applies to every job in the TaskManager's interpreter.",
    )
    gc_thresholds: str = _opt(
        "50000,20,100",
        "gc.set_threshold of the Python that runs the operators: three counts, comma-separated "
        "(Python's default: 700,10,10). The engine keeps many users' decoded state alive, and "
        "each full collection walks all of it: with the defaults the collector took 20-28 µs "
        "per click at 10,000 users in the domain loop, 3-4 µs with these (docs/performance.md). "
        "Cyclic garbage waits longer to be freed; the engine makes little. Process-wide: it "
        "applies to every job in the TaskManager's interpreter.")
    state_backend: str = _opt("hashmap", "state.backend.type.", choices=STATE_BACKENDS)
    decoded_state_users: int = _opt(
        50_000,
        "Users whose decoded state (features, metadata, clock, waiting inputs) each engine "
        "instance keeps in memory between their steps, the least recently stepped evicted: a "
        "user beyond it decodes its state again at its next step (~25-30 µs). About 7 KB of "
        "Python memory per user for the shipped catalog (~350 MB at 50,000), outside Flink's "
        "JVM heap: size the TaskManager's memory for it (docs/performance.md, Tuning guide).")
    checkpoint_interval_ms: int = _opt(10_000, "Checkpoint interval; 0 disables checkpoints.")
    checkpoint_dir: str = _opt(
        "",
        "Checkpoint storage URI (file:///..., s3://...); empty: the cluster's own setting "
        "(`nudgeflow run --local` and the bench pass $NUDGEFLOW_HOME/checkpoints).",
    )
    delivery_guarantee: str = _opt(
        "exactly-once",
        "Kafka sinks: exactly-once (transactional; consumers read_committed) or at-least-once.",
        choices=DELIVERY_GUARANTEES,
    )
    transactional_id_prefix: str = _opt(
        "nudgeflow", "Prefix of the Kafka sinks' transactional ids; keep it stable per job."
    )
    bundle_size: int = _opt(1000, "python.fn-execution.bundle.size.")
    bundle_time_ms: int = _opt(100, "python.fn-execution.bundle.time (ms).")
    buffer_timeout_ms: int = _opt(100, "execution.buffer-timeout (ms): latency vs throughput.")
    trigger_path_buffer_timeout_ms: int = _opt(
        5, "The buffer timeout (ms) of the exchanges a click and its trigger cross (the click "
        "into the keying, the keying into the input order, the input order into the engine, "
        "the trigger into the Kafka sink); the rest of the job flushes every "
        "buffer_timeout_ms. -1: buffer_timeout_ms.")
    membership_batch_rows: int = _opt(
        500, "The membership writer takes the engine's write steps in batches of at most this "
        "many (one Python call per batch; its changes go to Cassandra and Redis together).")
    membership_batch_ms: int = _opt(
        200, "A batch of membership writes leaves at most this long (ms) after its first step, "
        "and before every checkpoint barrier and watermark: the most a segment change waits to "
        "be batched. While the clicks source catches up (watermarks every 200 ms) a batch holds "
        "what the engine wrote between two watermarks (fewer, fuller writes: "
        "docs/performance.md); live, the 10 ms watermarks flush batches that often.")
    cassandra_batch_changes: int = _opt(
        3, "Segment changes per Cassandra request (one unlogged batch; each change writes three "
        "tables). Most of a write's cost is per request, the driver's and the server's: more "
        "per batch is cheaper (docs/performance.md), but above 3 a batch spans more than the 10 "
        "partitions at which Cassandra warns by default "
        "(unlogged_batch_across_partitions_warn_threshold; the local stack's is 64).")
    store_clients: str = _opt(
        "process",
        "Where the membership store's clients (cassandra-driver, redis-py) run: process (a child "
        "Python process per writer, so their CPU does not take the interpreter lock of the "
        "TaskManager's operators; docs/performance.md) or in-task (in the operator's thread).",
        choices=STORE_CLIENTS)
    store_clients_nice: int = _opt(
        10, "With store-clients=process: how much lower the child process's scheduling "
        "priority is than the TaskManager's (a nice increment, 0-19). When the cores are "
        "contended the kernel then runs the engine before the store clients: backlog drains "
        "about a tenth faster on two cores, while under that load the stores fall further "
        "behind the engine (membership_write_lag_ms p99 0.6-0.9 s -> 1.2-3.4 s; "
        "docs/performance.md). With idle cores it changes nothing. 0: the same priority.")
    flink_rest_url: str = _opt("http://127.0.0.1:8081", "REST address of the Flink cluster.")
    jars: str = _opt(
        "",
        "The job's jars (Kafka connector, nudgeflow-flink): file:// URLs or paths separated by "
        "';'; the job does not start without them. It never resolves jars itself: `nudgeflow "
        "run`, the bench and the tests resolve them with Maven (`nudgeflow jars flink`) and "
        "pass them here.",
    )
    prometheus_settings: str = _opt(
        "",
        "Local (--local) runs: the Flink settings of the Prometheus metric reporter, key=value "
        "pairs separated by ';', applied when its jar is on the JVM's classpath "
        "($FLINK_LIB_DIR); `nudgeflow run --local` and the bench set both. Empty: no reporter.",
    )
    # --- tracing (udfs/tracing.py, udfs/spans.py) ---------------------------------------------
    tracing_otlp_endpoint: str = _opt(
        "", "OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces): the engine exports "
        "a span per sampled click it applies. Empty: no spans (the traceparent headers of its "
        "outputs are written all the same).")
    tracing_sample_ratio: float = _opt(
        0.01, "Share of clicks without a sampled traceparent of their own whose traces are "
        "sampled (0..1); a click whose producer sampled it is always sampled.")
    # --- the output topics' wire format (jobs/schema_registry.py) ---------------------------
    output_wire_format: str = _opt(
        "single-object", "How the job frames the values of the topics other teams read "
        "(segment changes, the trigger topics, trigger decisions): single-object (C3 01, the "
        "schema's fingerprint, the Avro body; no registry) or confluent (00, a schema "
        "registry's 4-byte schema id, the Avro body; read by Confluent deserializers, Kafka "
        "Connect's AvroConverter, ksqlDB and Flink's avro-confluent). With confluent the job "
        "registers the schemas under <topic>-value when it is submitted.",
        choices=WIRE_FORMATS)
    schema_registry_url: str = _opt(
        "http://127.0.0.1:8085/apis/ccompat/v7",
        "A schema registry with Confluent's REST API (Confluent's; Apicurio's under "
        "/apis/ccompat/v7; Karapace): output-wire-format confluent registers the schemas there, "
        "and nudgeflow's readers (the sender) look schema ids up there. Default: the local "
        "stack's.")
    schema_registry_user_info: str = _opt(
        "", "user:password for the schema registry's HTTP basic auth; empty: none.",
        secret=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices") or ()
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(
                    f"{f.name}={value!r} is not allowed; choose one of: {', '.join(choices)}"
                )
        if self.parallelism < 1:
            raise ConfigError(f"parallelism must be >= 1, got {self.parallelism}")
        for name in ("membership_batch_rows", "membership_batch_ms", "decoded_state_users",
                     "cassandra_batch_changes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.tracing_sample_ratio <= 1.0:
            raise ConfigError(f"tracing_sample_ratio must be between 0 and 1, got "
                              f"{self.tracing_sample_ratio}")
        if self.tracing_otlp_endpoint and not re.match(r"https?://", self.tracing_otlp_endpoint):
            raise ConfigError(f"tracing_otlp_endpoint must be an http:// or https:// URL, got "
                              f"{self.tracing_otlp_endpoint!r}")
        if not self.parallelism <= self.max_parallelism <= MAX_KEY_GROUPS:
            raise ConfigError(
                f"max_parallelism must be between parallelism ({self.parallelism}) and "
                f"{MAX_KEY_GROUPS}, got {self.max_parallelism}; it is fixed for the life of the "
                "job's state (a savepoint keeps it), so set it to the most you will scale to")
        self._check_kafka_security()
        if not re.match(r"https?://", self.schema_registry_url):
            raise ConfigError(f"schema_registry_url must be an http:// or https:// URL, got "
                              f"{self.schema_registry_url!r}")
        if self.schema_registry_user_info and ":" not in self.schema_registry_user_info:
            raise ConfigError("schema_registry_user_info must be user:password")
        if self.redis_ssl_ca_file and not self.redis_url.startswith("rediss://"):
            raise ConfigError("redis_ssl_ca_file is set but redis_url is not rediss://...: "
                              "TLS to Redis needs a rediss:// URL")
        if self.kafka_replication_factor < 0:
            raise ConfigError(f"kafka_replication_factor must be >= 0 (0: the topic file's), "
                              f"got {self.kafka_replication_factor}")
        if self.cassandra_replication and not re.fullmatch(
                r"\{\s*'class'\s*:\s*'[A-Za-z.]+'\s*(,\s*'[A-Za-z0-9_.-]+'\s*:\s*'?[0-9A-Za-z_]+'?"
                r"\s*)*\}", self.cassandra_replication):
            raise ConfigError(
                f"cassandra_replication {self.cassandra_replication!r} is not a CQL replication "
                "map like {'class': 'NetworkTopologyStrategy', 'dc1': 3}")
        self.gc_threshold_counts()  # raises ConfigError when malformed
        if not 1 <= self.gil_switch_interval_us <= 1_000_000:
            raise ConfigError(f"gil_switch_interval_us must be 1..1000000 (µs), got "
                              f"{self.gil_switch_interval_us}")
        if not 0 <= self.store_clients_nice <= 19:
            raise ConfigError(f"store_clients_nice must be 0..19 (a nice increment), got "
                              f"{self.store_clients_nice}")
        if self.trigger_path_buffer_timeout_ms < -1:
            raise ConfigError(f"trigger_path_buffer_timeout_ms must be >= -1 (-1: "
                              f"buffer_timeout_ms; 0: flush every record), got "
                              f"{self.trigger_path_buffer_timeout_ms}")
        if self.watermark_interval_ms < 1:
            raise ConfigError(f"watermark_interval_ms must be >= 1 (0 would stop event time: "
                              f"no input would ever be applied), got {self.watermark_interval_ms}")
        for name in ("max_out_of_orderness_ms", "idleness_ms", "allowed_lateness_ms",
                     "quiet_release_ms", "catch_up_lag_ms", "catch_up_watermark_interval_ms",
                     "max_future_skew_ms", "state_ttl_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_event_age_ms < 0:
            raise ConfigError(f"max_event_age_ms must be >= 0 (0: no limit), got "
                              f"{self.max_event_age_ms}")
        for name in ("max_record_bytes", "max_definition_bytes", "max_id_bytes",
                     "max_string_bytes", "max_properties", "max_price", "max_quantity",
                     "max_lifetime_value", "dead_letter_raw_max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dead_letter_raw_max_bytes > MAX_DEAD_LETTER_RAW_BYTES:
            raise ConfigError(
                f"dead_letter_raw_max_bytes={self.dead_letter_raw_max_bytes} is over "
                f"{MAX_DEAD_LETTER_RAW_BYTES}: a DeadLetter (raw plus up to 48 KiB of reason, "
                "key and problems) could exceed Kafka's 1 MiB default record limit and stop "
                "the job; lower it")
        if self.checkpoint_interval_ms < 0:
            raise ConfigError("checkpoint_interval_ms must be >= 0 (0 disables checkpoints)")
        self.prometheus_settings_map()  # raises ConfigError on a malformed pair
        if self.delivery_guarantee == "exactly-once" and self.checkpoint_interval_ms == 0:
            raise ConfigError(
                "delivery_guarantee=exactly-once needs checkpoints (Kafka transactions commit on "
                "checkpoint); set checkpoint_interval_ms > 0 or use at-least-once"
            )

    def __repr__(self) -> str:
        return f"NudgeflowConfig({', '.join(f'{k}={v}' for k, v in self.describe().items())})"

    def describe(self) -> dict[str, str]:
        """Field values as strings, secrets masked: safe to log or print."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = _mask(str(value))
            out[f.name] = repr(value)
        return out

    def gc_threshold_counts(self) -> tuple[int, int, int]:
        """``gc_thresholds`` as ``gc.set_threshold``'s three arguments.

        Raises:
            ConfigError: not three whole numbers, or a first one of 0 (that would turn the
                collector off: cyclic garbage would never be freed).
        """
        parts = self.gc_thresholds.split(",")
        try:
            counts = tuple(int(p) for p in parts)
        except ValueError:
            counts = ()
        if len(counts) != 3 or counts[0] < 1 or min(counts) < 0:
            raise ConfigError(f"gc_thresholds must be three whole numbers like 50000,20,100, the "
                              f"first at least 1, got {self.gc_thresholds!r}")
        return counts[0], counts[1], counts[2]

    def intake_limits(self) -> Limits:
        """The input limits and event-time window of ``udfs.intake`` from this configuration."""
        from udfs.intake import Limits

        return Limits(
            max_record_bytes=self.max_record_bytes,
            max_definition_bytes=self.max_definition_bytes,
            max_id_bytes=self.max_id_bytes,
            max_string_bytes=self.max_string_bytes,
            max_properties=self.max_properties,
            max_price=self.max_price,
            max_quantity=self.max_quantity,
            max_lifetime_value=self.max_lifetime_value,
            max_future_skew_ms=self.max_future_skew_ms,
            max_event_age_ms=self.max_event_age_ms,
            dead_letter_raw_max_bytes=self.dead_letter_raw_max_bytes,
        )

    def churn_model_path(self) -> str | None:
        """The churn model file to load, None when scoring is off."""
        if self.churn_model == "off":
            return None
        if self.churn_model:
            return self.churn_model
        return str(SHIPPED_CHURN_MODEL)

    def jar_urls(self) -> list[str]:
        """The ``jars`` setting as URLs (paths become ``file://`` URLs); empty when unset."""
        urls = []
        for entry in (e.strip() for e in self.jars.split(";")):
            if entry:
                urls.append(entry if "://" in entry else Path(entry).resolve().as_uri())
        return urls

    def prometheus_settings_map(self) -> dict[str, str]:
        """The ``prometheus_settings`` setting as a dict of Flink keys to values.

        Raises:
            ConfigError: a pair is not ``key=value``.
        """
        settings = {}
        for pair in (p.strip() for p in self.prometheus_settings.split(";")):
            if not pair:
                continue
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"prometheus_settings: {pair!r} is not key=value (pairs separated by ';')"
                )
            settings[key.strip()] = value.strip()
        return settings

    def topic_fields(self) -> dict[str, str]:
        """Every topic field's name and value (``clicks_topic``: ``clicks``, ...)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name.endswith("_topic")}

    def trigger_topics(self) -> dict[str, str]:
        """Each priority tier's trigger topic (``P0``: ``triggers-p0``, ...)."""
        from udfs.campaigns.grammar import TIERS

        return {tier: self.trigger_topic(tier) for tier in TIERS}

    def trigger_topic(self, tier: str) -> str:
        """The topic of a priority tier (``P0`` .. ``P3``)."""
        return f"{self.trigger_topic_prefix}{tier.lower()}"

    def _check_kafka_security(self) -> None:
        """The Kafka security settings fit together (a wrong one would fail at connect)."""
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not self.kafka_sasl_mechanism:
            raise ConfigError(f"kafka_security_protocol={self.kafka_security_protocol} needs "
                              f"kafka_sasl_mechanism (one of "
                              f"{', '.join(m for m in KAFKA_SASL_MECHANISMS if m)})")
        if self.kafka_sasl_mechanism and not sasl:
            raise ConfigError(f"kafka_sasl_mechanism={self.kafka_sasl_mechanism} is used only "
                              f"with kafka_security_protocol SASL_PLAINTEXT or SASL_SSL, got "
                              f"{self.kafka_security_protocol}")
        if sasl and not self.kafka_sasl_username:
            raise ConfigError("kafka_sasl_username is empty: SASL needs a user name")
        tls = self.kafka_security_protocol in ("SSL", "SASL_SSL")
        for name in ("kafka_ssl_ca_file", "kafka_ssl_client_pem"):
            if getattr(self, name) and not tls:
                raise ConfigError(f"{name} is set but kafka_security_protocol is "
                                  f"{self.kafka_security_protocol}: use SSL or SASL_SSL")
        if self.kafka_ssl_key_password and not self.kafka_ssl_client_pem:
            raise ConfigError("kafka_ssl_key_password is set without kafka_ssl_client_pem")

    def kafka_client_properties(self) -> dict[str, str]:
        """Java Kafka client properties for the job's sources and sinks (security included).

        The JAAS login module is named as the job's shaded Kafka connector has it.
        """
        props = {"bootstrap.servers": self.kafka_bootstrap}
        if self.kafka_security_protocol != "PLAINTEXT":
            props["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            props["sasl.mechanism"] = self.kafka_sasl_mechanism
            module = FLINK_KAFKA_SHADED_PREFIX + (
                "org.apache.kafka.common.security.plain.PlainLoginModule"
                if self.kafka_sasl_mechanism == "PLAIN"
                else "org.apache.kafka.common.security.scram.ScramLoginModule"
            )
            props["sasl.jaas.config"] = (
                f'{module} required username="{_jaas_quoted(self.kafka_sasl_username)}" '
                f'password="{_jaas_quoted(self.kafka_sasl_password)}";'
            )
        if self.kafka_ssl_ca_file:
            props["ssl.truststore.type"] = "PEM"
            props["ssl.truststore.location"] = self.kafka_ssl_ca_file
        if self.kafka_ssl_client_pem:
            props["ssl.keystore.type"] = "PEM"
            props["ssl.keystore.location"] = self.kafka_ssl_client_pem
            if self.kafka_ssl_key_password:
                props["ssl.key.password"] = self.kafka_ssl_key_password
        return props

    def librdkafka_config(self) -> dict[str, Any]:
        """Client settings for librdkafka (confluent-kafka): bootstrap and security."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        if self.kafka_security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password
        if self.kafka_ssl_ca_file:
            conf["ssl.ca.location"] = self.kafka_ssl_ca_file
        if self.kafka_ssl_client_pem:  # key and chain in one file
            conf["ssl.certificate.location"] = self.kafka_ssl_client_pem
            conf["ssl.key.location"] = self.kafka_ssl_client_pem
            if self.kafka_ssl_key_password:
                conf["ssl.key.password"] = self.kafka_ssl_key_password
        return conf

    def python_client_kwargs(self) -> dict[str, Any]:
        """kafka-python client arguments (bootstrap and security) for tools and tests."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap.split(",")}
        if self.kafka_security_protocol != "PLAINTEXT":
            kwargs["security_protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = self.kafka_sasl_password
        if self.kafka_ssl_ca_file:
            kwargs["ssl_cafile"] = self.kafka_ssl_ca_file
        if self.kafka_ssl_client_pem:
            kwargs["ssl_certfile"] = self.kafka_ssl_client_pem  # key and chain in one file
            if self.kafka_ssl_key_password:
                kwargs["ssl_password"] = self.kafka_ssl_key_password
        return kwargs


def _jaas_quoted(value: str) -> str:
    """A value inside a JAAS double-quoted string: backslashes and quotes escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _mask(value: str) -> str:
    if value.startswith("redis://") or value.startswith("rediss://"):
        # keep the address readable, hide only the credentials
        scheme, _, rest = value.partition("://")
        if "@" in rest:
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return value
    return "***"


def _coerce(name: str, raw: Any, target: type, origin: str) -> Any:
    if target in (int, float):
        wrong = ConfigError(f"{origin}: {name} must be "
                            f"{'an integer' if target is int else 'a number'}, got {raw!r}")
        if isinstance(raw, bool):  # YAML's true/false would otherwise read as 1/0
            raise wrong
        try:
            return target(raw)
        except (TypeError, ValueError):
            raise wrong from None
    return str(raw)


def _field_types() -> dict[str, type]:
    kinds: dict[Any, type] = {"int": int, int: int, "float": float, float: float}
    return {f.name: kinds.get(f.type, str) for f in fields(NudgeflowConfig)}


#: the reordered-input profile (a config file: ``--config``): its trade-off is written in it
REORDERED_INPUT_PROFILE = Path(__file__).resolve().parent / "profiles" / "reordered-input.yaml"


def load_config(
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NudgeflowConfig:
    """Build the configuration from defaults, a YAML file, the environment and overrides.

    Args:
        file: a YAML mapping of field names to values; ``$NUDGEFLOW_CONFIG`` when None.
        env: the environment to read ``NUDGEFLOW_*`` from; ``os.environ`` when None.
        overrides: values that win over everything (the CLI flags); None values are ignored.

    Raises:
        ConfigError: an unknown key, a value of the wrong type or out of range; the message
            names where it came from (file path, variable or flag).
    """
    env = os.environ if env is None else env
    types = _field_types()
    values: dict[str, Any] = {}
    file = file or env.get(f"{ENV_PREFIX}CONFIG") or None
    if file:
        path = Path(file)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
        for key, raw in doc.items():
            name = str(key).replace("-", "_")
            if name not in types:
                raise ConfigError(
                    f"config file {path}: unknown key {key!r}; known keys: {', '.join(types)}"
                )
            values[name] = _coerce(name, raw, types[name], f"config file {path}")
    for name, typ in types.items():
        var = ENV_PREFIX + name.upper()
        if var in env:
            values[name] = _coerce(name, env[var], typ, f"environment variable {var}")
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in types:
            raise ConfigError(f"unknown configuration field {name!r}")
        values[name] = _coerce(name, raw, types[name], f"--{name.replace('_', '-')}")
    return NudgeflowConfig(**values)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one ``--<field>`` flag per field, with env fallbacks in the help."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML file of configuration values [env: {ENV_PREFIX}CONFIG]",
    )
    group = parser.add_argument_group("configuration (flag > env > file > default)")
    types = _field_types()
    for f in fields(NudgeflowConfig):
        flag = "--" + f.name.replace("_", "-")
        default = "***" if f.metadata.get("secret") and f.default else f.default
        help_text = (
            f"{f.metadata['help']} [env: {ENV_PREFIX}{f.name.upper()}] [default: {default!r}]"
        )
        kwargs: dict[str, Any] = {"dest": f"cfg_{f.name}", "default": None, "help": help_text}
        if f.metadata.get("choices"):
            kwargs["choices"] = list(f.metadata["choices"])
        kwargs["type"] = types[f.name]
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> NudgeflowConfig:
    """The configuration given parsed arguments of a parser set up by add_config_arguments."""
    overrides = {
        f.name: getattr(args, f"cfg_{f.name}", None) for f in fields(NudgeflowConfig)
    }
    return load_config(getattr(args, "config", None), overrides=overrides)


#: the fields that make a job's Kafka and store names its own (tests, benchmarks, demos)
ISOLATION_FIELDS = (
    "clicks_topic", "user_metadata_topic", "outcomes_topic", "definitions_topic",
    "backfill_topic", "segment_changes_topic", "trigger_topic_prefix", "trigger_decisions_topic",
    "dead_letter_topic", "consumer_group", "transactional_id_prefix", "redis_key_prefix",
)


def isolated(cfg: NudgeflowConfig, tag: str) -> NudgeflowConfig:
    """``cfg`` with topics, consumer group, transactional ids and Redis prefix of ``tag``'s own.

    Every topic field becomes ``<tag>-<name>`` (``it-1a2b-user-metadata``), the trigger topics
    ``<tag>-triggers-p0`` .. ``p3``: tests, drills and measuring scripts never read each
    other's records.
    """
    topics = {f.name: f"{tag}-{f.name.removesuffix('_topic').replace('_', '-')}"
              for f in fields(NudgeflowConfig) if f.name.endswith("_topic")}
    return replace(cfg, **topics, trigger_topic_prefix=f"{tag}-triggers-", consumer_group=tag,
                   transactional_id_prefix=tag, redis_key_prefix=tag)


def as_flags(cfg: NudgeflowConfig, names: Sequence[str] = ISOLATION_FIELDS) -> list[str]:
    """Command-line flags that hand some of ``cfg``'s values to another nudgeflow process."""
    flags: list[str] = []
    for name in names:
        flags += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    return flags


def replace(cfg: NudgeflowConfig, **changes: Any) -> NudgeflowConfig:
    """A copy of ``cfg`` with some fields changed (validated again)."""
    return dataclasses.replace(cfg, **changes)
