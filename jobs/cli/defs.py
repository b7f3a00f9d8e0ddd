"""``nudgeflow defs validate | publish | delete | list``: definitions as data.

Segments, campaigns, journeys, the priority policy and the currency rate table
(``udfs.definitions``) all travel the same way.

- validate: parse and check YAML files offline (exit 1 with ``file:path: message`` lines);
- publish: validate, then write each definition as a DefinitionUpdate to the definitions
  control topic (key = definition id). A version that is already published with the same content is
  skipped; the same version with other content is refused (bump ``version``);
- delete: publish a DELETE (a new version) for a definition id;
- list: what the running job holds (it records applied versions in Redis) next to what the
  control topic holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jobs.config import NudgeflowConfig
from schemas.codec import Codec, CodecError
from udfs.catalog.files import load_catalog, load_files
from udfs.definitions.envelope import (
    CAMPAIGN_KIND,
    POLICY_KIND,
    RATES_KIND,
    SEGMENT_KIND,
    delete_update,
)


class PublishError(RuntimeError):
    """A definition could not be published; the message says which and why."""


def applied_definitions_key(cfg: NudgeflowConfig) -> str:
    """The Redis hash in which the running job records the definition versions it applied."""
    return f"{cfg.redis_key_prefix}:definitions"


def published_updates(cfg: NudgeflowConfig, codec: Codec | None = None,
                      timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """The latest DefinitionUpdate per id on the control topic (read to its end)."""
    from jobs.cli.wiring import TopicMissing, TopicStalled, topic_values

    codec = codec or Codec.load()
    latest: dict[str, dict[str, Any]] = {}
    try:
        for value in topic_values(cfg, cfg.definitions_topic, stall_s=timeout_s):
            if value is None:
                continue  # a compaction tombstone: nothing to show
            try:
                update = codec.decode(value, expect="DefinitionUpdate")
            except CodecError:
                continue  # the job dead-letters it; nothing to show here
            held = latest.get(update["definition_id"])
            if held is None or update["version"] > held["version"]:
                latest[update["definition_id"]] = update
    except TopicMissing:
        raise PublishError(f"the definitions topic {cfg.definitions_topic!r} does not exist; "
                           "run `nudgeflow stack up` (or `stack provision`)") from None
    except TopicStalled:
        raise PublishError(f"reading {cfg.definitions_topic} timed out") from None
    return latest


def _produce(cfg: NudgeflowConfig, updates: Sequence[dict[str, Any]], codec: Codec) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(**cfg.python_client_kwargs(), acks="all")
    try:
        for update in updates:
            producer.send(cfg.definitions_topic, key=update["definition_id"].encode(),
                          value=codec.encode("DefinitionUpdate", update))
        producer.flush(timeout=30)
    finally:
        producer.close()


def publish(cfg: NudgeflowConfig, paths: Sequence[str], published_by: str | None,
            now_ms: int, say: Callable[[str], None] = print) -> tuple[int, dict[str, int]]:
    """Validate the files and publish their definitions.

    Returns:
        How many were published, and the version of every definition the files hold
        (published now or already): what a backfill of them is for.

    Raises:
        udfs.definitions.diagnostics.InvalidDefinitions: a file does not validate (nothing is
            published).
        PublishError: a version conflicts with what is already published.
    """
    codec = Codec.load()
    known = [s.id for s in load_catalog().segments]
    loaded = load_files(paths, known_segments=known)
    held = published_updates(cfg, codec)
    to_send = []
    versions: dict[str, int] = {}
    for update, definition in zip(loaded.updates(now_ms, published_by), loaded.all(),
                                  strict=True):
        label = f"{definition.id} v{definition.version}"
        versions[definition.id] = int(update["version"])
        current = held.get(definition.id)
        if current is not None and update["version"] <= current["version"]:
            if update["version"] == current["version"] and update["checksum"] == \
                    current["checksum"]:
                say(f"  {label}: already published, unchanged")
                continue
            raise PublishError(
                f"{definition.source or definition.id}: {label} cannot be "
                f"published: v{current['version']} is already on {cfg.definitions_topic} "
                f"({current['action']}); set version to {current['version'] + 1} or higher"
            )
        to_send.append(update)
        say(f"  {label} ({update['kind'].lower()}): publishing")
    _produce(cfg, to_send, codec)
    return len(to_send), versions


def delete(cfg: NudgeflowConfig, definition_id: str, published_by: str | None,
           now_ms: int) -> int:
    """Publish a DELETE for a definition of any kind; return the DELETE's version.

    Raises:
        PublishError: the id is neither on the control topic nor in the shipped catalog.
    """
    codec = Codec.load()
    current = published_updates(cfg, codec).get(definition_id)
    catalog = load_catalog()
    shipped = {d.id: (d.version, kind) for kind, group in (
        (SEGMENT_KIND, catalog.segments),
        (CAMPAIGN_KIND, catalog.campaigns),
        (POLICY_KIND, catalog.policies),
        (RATES_KIND, catalog.rates)) for d in group}
    if current is None and definition_id not in shipped:
        raise PublishError(f"{definition_id}: no such definition on {cfg.definitions_topic} or "
                           "in the shipped catalog; `nudgeflow defs list` shows what exists")
    file_version, kind = shipped.get(definition_id, (0, SEGMENT_KIND))
    if current is not None:
        kind = current["kind"]
    version = max(file_version, current["version"] if current else 0) + 1
    _produce(cfg, [delete_update(definition_id, version, now_ms, published_by, kind)],
             codec)
    return version


def listing(cfg: NudgeflowConfig) -> str:
    """A table: each definition's version in the running job and on the control topic."""
    from jobs.cli import wiring

    client = wiring.redis_client(cfg, socket_timeout=5, decode_responses=True)
    applied = {str(k): str(v) for k, v in client.hgetall(applied_definitions_key(cfg)).items()}
    published = published_updates(cfg)
    ids = sorted(set(applied) | set(published))
    lines = [f"{'definition':<28} {'running job':<24} {'control topic':<20}"]
    for definition_id in ids:
        topic = published.get(definition_id)
        topic_text = f"v{topic['version']} {topic['action']}" if topic else "-"
        lines.append(f"{definition_id:<28} {applied.get(definition_id, '-'):<24} {topic_text:<20}")
    if not applied:
        lines.append("(the running job has recorded nothing yet: is it running?)")
    return "\n".join(lines)
