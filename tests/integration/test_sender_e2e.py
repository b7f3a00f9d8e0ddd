"""`run_sender` against the real Kafka and Redis of the local stack.

A backlog is produced transactionally into the four tier topics, interleaved (P3 first in every
round), with triggers that expired, the same trigger_id in P0 and P3, replays of P1 triggers,
one aborted transaction and one record that is not Avro. The sender must deliver P0 before P1
before P2 before P3 (starvation guard off), each expected trigger exactly once, nothing of the
aborted transaction, write one DELIVERED outcome per delivered trigger, and leave no lag; a
second run of the group delivers nothing; a run under a new group delivers every trigger once
more (the dedupe keys carry the group); and the first
group, its offsets rewound, finds every trigger already sent (Redis dedupe across restarts). A
second test turns the starvation guard on and sees P3 served while P0 still has a backlog.
"""

import pytest
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from jobs.sender.sender import SenderOptions, run_sender
from schemas.codec import Codec
from tests.integration.kafka_io import TopicReader, read_topic
from tests.unit.test_sender import NOW, make_trigger
from udfs.campaigns.grammar import TIERS

pytestmark = pytest.mark.integration

PER_TIER = 200
EXPIRED = {i for i in range(PER_TIER) if i % 20 == 7}  # 10 per tier
SHARED_WITH_P0 = set(range(0, 50, 5))  # these P3 triggers carry the id of the P0 trigger i
REPLAYED_P1 = set(range(0, PER_TIER, 40))  # published twice (an at-least-once replay)
GARBAGE = b"\x00 this is not a TriggerEvent"


class RecordingAdapter:
    def __init__(self):
        self.sent = []

    def send(self, trigger):
        self.sent.append((trigger["tier"], trigger["trigger_id"]))


def produce_transactions(cfg, transactions):
    """Each transaction is (records, commit?); a record is (topic, key, value)."""
    producer = KafkaProducer(**cfg.python_client_kwargs(), acks="all",
                             transactional_id=f"{cfg.transactional_id_prefix}-sender-backlog")
    try:
        producer.init_transactions()
        for records, commit in transactions:
            producer.begin_transaction()
            for topic, key, value in records:
                producer.send(topic, key=key, value=value)
            if commit:
                producer.commit_transaction()
            else:
                producer.flush()  # the records are in the log, then aborted
                producer.abort_transaction()
    finally:
        producer.close()


def trigger_record(cfg, trigger):
    value = Codec.load().encode("TriggerEvent", trigger)
    return cfg.trigger_topic(trigger["tier"]), trigger["user_id"].encode(), value


def backlog(cfg):
    """The committed records in production order, and the expected outcome."""
    records = []
    for i in range(PER_TIER):
        for tier in reversed(TIERS):  # lowest priority first: arrival order must not matter
            trigger_id = f"p0-{i:03d}" if tier == "P3" and i in SHARED_WITH_P0 \
                else f"{tier.lower()}-{i:03d}"
            expires_at = NOW - 60_000 if i in EXPIRED else (NOW + 3_600_000 if i % 3 else None)
            records.append(trigger_record(cfg, make_trigger(
                trigger_id, tier=tier, expires_at=expires_at, user_id=f"u-{i % 17}")))
    replays = [trigger_record(cfg, make_trigger(f"p1-{i:03d}", tier="P1", user_id=f"u-{i % 17}"))
               for i in sorted(REPLAYED_P1)]
    records[300:300] = [(cfg.trigger_topic("P2"), b"u-broken", GARBAGE)]
    records += replays
    expected = {
        tier: {f"{tier.lower()}-{i:03d}" for i in range(PER_TIER)
               if i not in EXPIRED and not (tier == "P3" and i in SHARED_WITH_P0)}
        for tier in TIERS
    }
    return records, expected


def rewind(cfg, group):
    """Commit offset 0 on every partition of the tier topics for ``group``: what a sender that
    crashed after its Redis writes but before its first commit leaves behind."""
    consumer = KafkaConsumer(**cfg.python_client_kwargs(), group_id=group,
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for topic in cfg.trigger_topics().values()
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in partitions})
    finally:
        consumer.close(autocommit=False)


def options(cfg, **changes):
    values = {"group": f"{cfg.consumer_group}-sender", "until_idle_s": 1.0,
              "report_every_s": 0, "dedupe_ttl_s": 600, "starvation_limit": 0}
    values.update(changes)
    return SenderOptions(**values)


def counts(report, counter):
    return {tier: getattr(stats, counter) for tier, stats in report.tiers.items()}


def test_drains_a_transactional_backlog_in_priority_order_exactly_once(isolated_cfg):
    cfg = isolated_cfg
    records, expected = backlog(cfg)
    aborted = [trigger_record(cfg, make_trigger(f"aborted-{tier}-{k}", tier=tier))
               for k in range(3) for tier in TIERS]
    transactions = [(records[i:i + 100], True) for i in range(0, 400, 100)]
    transactions.append((aborted, False))
    transactions += [(records[i:i + 100], True) for i in range(400, len(records), 100)]
    produce_transactions(cfg, transactions)

    adapter = RecordingAdapter()
    lines = []
    report = run_sender(cfg, options(cfg), adapter, clock=lambda: NOW, say=lines.append)

    tiers_in_order = [TIERS.index(tier) for tier, _ in adapter.sent]
    assert tiers_in_order == sorted(tiers_in_order), "a lower tier was served before a higher one"
    delivered = [trigger_id for _, trigger_id in adapter.sent]
    assert len(delivered) == len(set(delivered)), "a trigger was delivered twice"
    assert set(delivered) == set().union(*expected.values())
    for tier in TIERS:
        assert {t for s, t in adapter.sent if s == tier} == expected[tier]
    assert not [t for t in delivered if t.startswith("aborted")]

    assert report.stopped == "idle"
    assert counts(report, "delivered") == {t: len(expected[t]) for t in TIERS}
    assert counts(report, "expired") == dict.fromkeys(TIERS, len(EXPIRED))
    assert counts(report, "duplicates") == {"P0": 0, "P1": len(REPLAYED_P1), "P2": 0,
                                            "P3": len(SHARED_WITH_P0)}
    assert counts(report, "bad") == {"P0": 0, "P1": 0, "P2": 1, "P3": 0}
    # every committed record was counted once, and nothing of the aborted transaction
    seen = {t: sum(getattr(s, c) for c in ("delivered", "duplicates", "expired", "bad"))
            for t, s in report.tiers.items()}
    assert seen == {"P0": PER_TIER, "P1": PER_TIER + len(REPLAYED_P1), "P2": PER_TIER + 1,
                    "P3": PER_TIER}
    assert counts(report, "lag") == dict.fromkeys(TIERS, 0)
    assert any("bad record at " + cfg.trigger_topic("P2") in line for line in lines)
    assert "(stopped: idle)" in lines[-1]

    reader = TopicReader(cfg, cfg.dead_letter_topic)
    try:
        letters = reader.wait_for(lambda r: len(r) >= 1, timeout_s=30, what="the dead letter")
    finally:
        reader.close()
    assert [(name, r["raw"], r["source_topic"], r["key"]) for _, name, r in letters] == [
        ("DeadLetter", GARBAGE, cfg.trigger_topic("P2"), b"u-broken")]

    # one DELIVERED outcome per delivered trigger and one EXPIRED per expired one, keyed by its
    # user, at the sender's clock
    expired = len(EXPIRED) * len(TIERS)
    outcomes = read_topic(cfg, cfg.outcomes_topic, expected=len(delivered) + expired)
    by_kind = {kind: sorted(r["trigger_id"] for _, _, r in outcomes if r["outcome"] == kind)
               for kind in ("DELIVERED", "EXPIRED")}
    assert by_kind["DELIVERED"] == sorted(delivered)
    assert len(by_kind["EXPIRED"]) == expired == len(set(by_kind["EXPIRED"]))
    assert not set(by_kind["EXPIRED"]) & set(delivered)
    assert {(name, r["event_time"]) for _, name, r in outcomes} == {("CampaignOutcome", NOW)}
    assert all(key == r["user_id"].encode() for key, _, r in outcomes)
    assert len({r["outcome_id"] for _, _, r in outcomes}) == len(delivered) + expired

    # the group committed everything: a restart delivers nothing
    again = RecordingAdapter()
    report = run_sender(cfg, options(cfg), again, clock=lambda: NOW, say=lambda _: None)
    assert again.sent == []
    assert report.total("delivered") + report.total("duplicates") + report.total("bad") == 0
    assert counts(report, "lag") == dict.fromkeys(TIERS, 0)

    # a new group is another consumer: it delivers every trigger once more (the dedupe keys
    # carry the group) and drops only its own repeats
    fresh = RecordingAdapter()
    report = run_sender(cfg, options(cfg, group=f"{cfg.consumer_group}-sender-2", batch_size=500),
                        fresh, clock=lambda: NOW, say=lambda _: None)
    assert sorted(t for _, t in fresh.sent) == sorted(set().union(*expected.values()))
    assert report.total("duplicates") == len(REPLAYED_P1) + len(SHARED_WITH_P0)

    # the first group again, its offsets rewound: Redis knows every trigger was sent
    rewind(cfg, options(cfg).group)
    rewound = RecordingAdapter()
    report = run_sender(cfg, options(cfg, batch_size=500), rewound, clock=lambda: NOW,
                        say=lambda _: None)
    assert rewound.sent == []
    assert report.total("duplicates") == len(set().union(*expected.values())) + \
        len(REPLAYED_P1) + len(SHARED_WITH_P0)


def test_starvation_guard_serves_p3_before_p0_is_drained(isolated_cfg):
    cfg = isolated_cfg
    sizes = {"P0": 300, "P1": 30, "P2": 30, "P3": 100}
    records = [trigger_record(cfg, make_trigger(f"{tier.lower()}-{i:03d}", tier=tier))
               for tier in reversed(TIERS) for i in range(sizes[tier])]
    produce_transactions(cfg, [(records, True)])

    adapter = RecordingAdapter()
    report = run_sender(cfg, options(cfg, starvation_limit=2, batch_size=10, dedupe="memory"),
                        adapter, clock=lambda: NOW, say=lambda _: None)

    tiers = [tier for tier, _ in adapter.sent]
    assert len(adapter.sent) == sum(sizes.values())
    assert tiers.index("P3") < len(tiers) - 1 - tiers[::-1].index("P0"), \
        "P3 waited until P0 was drained"
    assert tiers[:20] == ["P0"] * 20  # P0 goes first; the guard steps in only after skips
    assert counts(report, "lag") == dict.fromkeys(TIERS, 0)
