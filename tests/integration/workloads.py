"""Generated workloads placed in the recent past, with this run's own user ids."""

import dataclasses
import time

from jobs.workload import generate
from jobs.workload.workload import WorkloadSpec, generate_events, generate_users
from schemas.codec import Codec
from tests.integration.kafka_io import produce_raw


def recent_workload(spec: WorkloadSpec, prefix: str) -> tuple[list[dict], list[dict]]:
    """(users, events) of ``spec``, ids prefixed, the last click two minutes ago at the latest.

    ``recent_start_ms`` places a workload by its estimated span, which the generated one can
    overshoot (its length depends on the start's time of day); moved back whole, no click is
    ahead of the wall clock (else TIME_IN_FUTURE; seen in CI). Cassandra and Redis are shared
    with other tests and runs, hence the ``prefix``.
    """
    spec = dataclasses.replace(spec, start_ms=generate.recent_start_ms(spec))
    users = [{**u, "user_id": prefix + u["user_id"]} for u in generate_users(spec)]
    events = [{**e, "user_id": prefix + e["user_id"]} for e in generate_events(spec)]
    overshoot = max(e["event_time"] for e in events) - (int(time.time() * 1000) - 120_000)
    if overshoot > 0:
        events = [{**e, "event_time": e["event_time"] - overshoot} for e in events]
        users = [{**u, "updated_at": u["updated_at"] - overshoot,
                  "signup_time": u["signup_time"] - overshoot} for u in users]
    return users, events


def produce_workload(cfg, users: list[dict], events: list[dict], codec: Codec) -> None:
    """The users' metadata, then the clicks, to the topics of ``cfg``, keyed by user."""
    produce_raw(cfg, cfg.user_metadata_topic,
                [(u["user_id"].encode(), codec.encode("UserMetadata", u)) for u in users])
    produce_raw(cfg, cfg.clicks_topic,
                [(e["user_id"].encode(), codec.encode("ClickEvent", e)) for e in events])
