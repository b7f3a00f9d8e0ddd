"""A live summary of a running job, read from Kafka offsets (works for local and cluster runs).

- clicks arrived: new records on the clicks topic since the summary started;
- consumed: how far the job's consumer group has committed (it commits on checkpoints, so this
  trails by up to one checkpoint interval) and the lag behind the topic's end;
- segment changes / triggers / dead letters: new records on the segment-changes topic, the four
  trigger topics and the dead-letter topic (with exactly-once delivery these offsets include
  transaction markers, so they run high).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs.config import NudgeflowConfig
from udfs.campaigns.grammar import TIERS


@dataclass(frozen=True)
class Snapshot:
    """Offsets summed over partitions at one moment."""

    clicks_end: int
    clicks_committed: int
    outputs_end: int
    dead_letters_end: int
    triggers_end: int = 0


class OffsetMonitor:
    """Reads end offsets and the consumer group's committed offsets with one admin client."""

    def __init__(self, cfg: NudgeflowConfig) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        self.cfg = cfg
        self.admin = KafkaAdminClient(**cfg.python_client_kwargs(), client_id="nudgeflow-monitor")
        self.consumer = KafkaConsumer(**cfg.python_client_kwargs(), client_id="nudgeflow-monitor")

    def _end(self, topic: str) -> int:
        from kafka import TopicPartition

        partitions = self.consumer.partitions_for_topic(topic) or set()
        ends = self.consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())

    def snapshot(self) -> Snapshot:
        """Current offsets."""
        group = self.cfg.consumer_group
        committed = self.admin.list_group_offsets(group).get(group, {})
        clicks_committed = sum(
            meta.offset for tp, meta in committed.items()
            if tp.topic == self.cfg.clicks_topic and meta.offset >= 0
        )
        return Snapshot(
            clicks_end=self._end(self.cfg.clicks_topic),
            clicks_committed=clicks_committed,
            outputs_end=self._end(self.cfg.segment_changes_topic),
            dead_letters_end=self._end(self.cfg.dead_letter_topic),
            triggers_end=sum(self._end(self.cfg.trigger_topic(t)) for t in TIERS),
        )

    def close(self) -> None:
        """Close the clients."""
        self.admin.close()
        self.consumer.close()


def format_line(start: Snapshot, now: Snapshot, elapsed_s: float) -> str:
    """One summary line: what changed since ``start``."""
    arrived = now.clicks_end - start.clicks_end
    # a group commits only on checkpoints; before its first commit nothing counts as consumed
    consumed = max(0, now.clicks_committed - start.clicks_committed) if now.clicks_committed else 0
    lag = max(0, now.clicks_end - max(now.clicks_committed, start.clicks_committed))
    out = now.outputs_end - start.outputs_end
    dead = now.dead_letters_end - start.dead_letters_end
    triggers = now.triggers_end - start.triggers_end
    return (
        f"[{elapsed_s:6.0f} s] clicks arrived +{arrived:,}  consumed (committed) +{consumed:,}"
        f"  lag {lag:,}  | segment changes +{out:,}  triggers +{triggers:,}"
        f"  dead letters +{dead:,}"
    )


def watch(
    cfg: NudgeflowConfig,
    interval_s: float = 2.0,
    keep_going: Callable[[], bool] = lambda: True,
    say: Callable[[str], None] = print,
) -> None:
    """Print a summary line every ``interval_s`` until ``keep_going()`` is false or Ctrl-C."""
    from kafka.errors import KafkaError

    monitor = OffsetMonitor(cfg)
    started = time.monotonic()
    start: Snapshot | None = None
    try:
        while keep_going():
            # a summary that cannot be read this time (broker busy, group coordinator moving)
            # is skipped, never fatal: the job matters, not its summary
            try:
                now = monitor.snapshot()
            except KafkaError as exc:
                say(f"[{time.monotonic() - started:6.0f} s] (summary unavailable: {exc})")
                now = None
            if now is not None:
                if start is None:
                    start = now
                    if now.clicks_committed == 0 and cfg.starting_offsets == "latest":
                        # a new group reading from the end: it has consumed up to there
                        start = dataclasses.replace(now, clicks_committed=now.clicks_end)
                say(format_line(start, now, time.monotonic() - started))
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()
