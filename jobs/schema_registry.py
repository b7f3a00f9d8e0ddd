"""The output topics' schemas in a schema registry with Confluent's REST API.

With ``output_wire_format: confluent`` the job frames the values of the topics other teams read
as Confluent's wire format: ``00``, the 4-byte big-endian id the registry gave the schema, the
Avro body (unchanged). Before the job is built, ``register_output_schemas`` registers the current
schema of each such topic's record under the subject ``<topic>-value`` (Confluent's
TopicNameStrategy, which its deserializers, Kafka Connect's AvroConverter, ksqlDB and Flink's
``avro-confluent`` format use by default) and returns the ids the job frames with; registering a
schema the subject already has returns its id again, so a restart or a second job changes
nothing. Only the job's own outputs are framed so: the outcomes and dead-letter topics keep the
single-object encoding, as several writers share them and the job reads the outcomes itself.

Readers: ``schema_lookup`` gives ``schemas.codec.Codec.with_schema_registry`` the registry's
schema for an id, so nudgeflow's readers (the sender) decode both encodings.

The local stack runs Apicurio Registry (``infra/servers/registry.py``), whose Confluent API is
at ``/apis/ccompat/v7``; any registry with that API will do.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from schemas.codec import Codec, SchemaLookup

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from jobs.config import NudgeflowConfig


class RegistryError(RuntimeError):
    """The schema registry refused a schema or could not be reached; the message says which."""


def framed_topics(cfg: NudgeflowConfig) -> dict[str, str]:
    """The topics ``output_wire_format`` applies to, each with the record it carries."""
    return {cfg.segment_changes_topic: "SegmentChange",
            **{topic: "TriggerEvent" for topic in cfg.trigger_topics().values()},
            cfg.trigger_decisions_topic: "TriggerDecision"}


def subject(topic: str) -> str:
    """The registry subject of a topic's values (TopicNameStrategy)."""
    return f"{topic}-value"


def registry_client(cfg: NudgeflowConfig) -> SchemaRegistryClient:
    """A client of ``cfg.schema_registry_url`` (with basic auth when configured)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = {"url": cfg.schema_registry_url}
    if cfg.schema_registry_user_info:
        conf["basic.auth.user.info"] = cfg.schema_registry_user_info
    return SchemaRegistryClient(conf)


def register_output_schemas(cfg: NudgeflowConfig, codec: Codec | None = None) -> dict[str, int]:
    """Registers each framed topic's current schema; returns the schema id per topic.

    Raises:
        RegistryError: the registry is unreachable, or refused a schema (e.g. as incompatible
            with what the subject holds); the message names the subject and the registry's
            answer.
    """
    from confluent_kafka.schema_registry import Schema, SchemaRegistryError

    codec = codec or Codec.load()
    client = registry_client(cfg)
    ids = {}
    for topic, record in framed_topics(cfg).items():
        try:
            ids[topic] = client.register_schema(subject(topic),
                                                Schema(codec.schema_text(record), "AVRO"))
        except SchemaRegistryError as exc:
            raise RegistryError(
                f"the schema registry at {cfg.schema_registry_url} refused the {record} schema "
                f"for subject {subject(topic)!r}: HTTP {exc.http_status_code}, "
                f"{exc.error_message}. If the subject holds an incompatible schema, the topic "
                "was written by something else: use other topics, or delete the subject"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the HTTP client's connection errors vary
            raise RegistryError(
                f"cannot reach the schema registry at {cfg.schema_registry_url} "
                f"({type(exc).__name__}: {exc}); start it (`nudgeflow stack up registry` on the "
                "local stack) or set schema_registry_url") from None
    return ids


def schema_lookup(cfg: NudgeflowConfig) -> SchemaLookup:
    """The registry's schema text by id, for ``Codec.with_schema_registry``.

    An id the registry does not have raises ``LookupError`` (the codec reports the record as of
    an unknown schema); a registry that cannot be reached raises ``RegistryError``, which is
    not a bad record: the reader should stop and retry, not dead-letter it.
    """
    # made at the first lookup: a reader of single-object data never imports the registry
    # client (~0.2 CPU s at start-up)
    client = functools.cache(lambda: registry_client(cfg))

    def lookup(schema_id: int) -> str:
        from confluent_kafka.schema_registry import SchemaRegistryError

        try:
            text = client().get_schema(schema_id).schema_str
            if text is None:
                raise LookupError(f"{cfg.schema_registry_url} gave schema {schema_id} no text")
            return text
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise LookupError(f"{cfg.schema_registry_url} has no schema {schema_id}: "
                                  f"{exc.error_message}") from None
            raise RegistryError(f"the schema registry at {cfg.schema_registry_url} did not "
                                f"give schema {schema_id}: HTTP {exc.http_status_code}, "
                                f"{exc.error_message}") from None
        except Exception as exc:  # noqa: BLE001 - the HTTP client's connection errors vary
            raise RegistryError(f"cannot reach the schema registry at "
                                f"{cfg.schema_registry_url} to look up schema {schema_id} "
                                f"({type(exc).__name__}: {exc})") from None

    return lookup
