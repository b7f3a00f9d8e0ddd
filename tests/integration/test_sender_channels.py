"""Two `nudgeflow sender` processes, one per channel, on the real Kafka and Redis (issue 18).

An email sender (`--channels EMAIL`) and an SMS sender (`--channels SMS`), each under its own
group, run at the same time over the same four tier topics and the same Redis key prefix. The
backlog holds EMAIL, SMS and PUSH triggers interleaved over the tiers, and a replay of some
EMAIL and SMS triggers on another tier. Each sender must deliver exactly its own channel's
triggers, every one once (none lost, none twice), count the other channels as skipped, and
leave Redis holding one dedupe key per delivery, under its group and channel; the PUSH
triggers, which neither takes, are never marked. Before the fix an email sender marked the SMS
triggers it passed over as sent, and the SMS sender dropped them as duplicates.
"""

import re
import subprocess
import sys

import pytest
import redis

from jobs.config import as_flags
from tests.integration.test_sender_e2e import produce_transactions, trigger_record
from tests.unit.test_sender import make_trigger
from udfs.campaigns.grammar import TIERS
from udfs.stores import keys

pytestmark = pytest.mark.integration

PER_CHANNEL = 120
PUSH = 30  # a channel neither sender takes
REPLAYED = set(range(0, PER_CHANNEL, 10))  # published twice, the second time on another tier
SENDERS = ("EMAIL", "SMS")
# what ConsoleAdapter prints for each trigger it is handed (jobs.sender.sender.describe_trigger)
DELIVERY = re.compile(r"^\[(P[0-3])\] (\w+) +user=\S+ campaign=\S+ template=\S+ trigger=(\S+)$")


def backlog(cfg):
    """The records in production order (channels interleaved), and the ids each channel has."""
    records = []
    for i in range(PER_CHANNEL):
        for channel in [*SENDERS, "PUSH"] if i < PUSH else SENDERS:
            trigger = make_trigger(f"{channel.lower()}-{i:03d}", tier=TIERS[i % len(TIERS)],
                                   user_id=f"u-{i % 17}", channel=channel)
            records.append(trigger_record(cfg, trigger))
    for i in sorted(REPLAYED):
        for channel in SENDERS:
            records.append(trigger_record(cfg, make_trigger(
                f"{channel.lower()}-{i:03d}", tier=TIERS[(i + 1) % len(TIERS)],
                user_id=f"u-{i % 17}", channel=channel)))
    expected = {channel: {f"{channel.lower()}-{i:03d}" for i in range(PER_CHANNEL)}
                for channel in SENDERS}
    return records, expected


def group(cfg, channel):
    return f"{cfg.consumer_group}-{channel.lower()}-sender"


def start_sender(cfg, channel, out, err):
    """`nudgeflow sender --channels <channel>` with the test's topics and Redis prefix."""
    cmd = [sys.executable, "-m", "jobs.cli", "sender", *as_flags(cfg),
           "--channels", channel, "--group", group(cfg, channel), "--until-idle", "3",
           "--report-every", "0", "--dedupe-ttl", "600", "--starvation-limit", "0"]
    return subprocess.Popen(cmd, stdout=out, stderr=err, text=True)


def final_report(lines):
    """{tier or "all": (delivered, duplicates, expired, failed, bad, skipped, lag)} of the last
    report."""
    rows = {}
    for line in lines:
        parts = line.replace(",", "").split()
        if len(parts) == 9 and parts[0] in (*TIERS, "all"):
            delivered, _rate, *counters = parts[1:]
            rows[parts[0]] = (int(delivered), *(int(c) for c in counters))
    return rows


def test_one_sender_per_channel_each_delivers_its_own_triggers_once(isolated_cfg, tmp_path):
    cfg = isolated_cfg
    records, expected = backlog(cfg)
    produce_transactions(cfg, [(records[i:i + 100], True) for i in range(0, len(records), 100)])

    files, procs = {}, {}
    for channel in SENDERS:  # both run at once, sharing the topics and Redis
        files[channel] = (tmp_path / f"{channel}.out", tmp_path / f"{channel}.err")
        with open(files[channel][0], "w") as out, open(files[channel][1], "w") as err:
            procs[channel] = start_sender(cfg, channel, out, err)
    try:
        for proc in procs.values():
            proc.wait(timeout=180)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()

    replays = len(REPLAYED)
    for channel in SENDERS:
        out, err = (path.read_text() for path in files[channel])
        assert procs[channel].returncode == 0, out + err
        lines = out.splitlines()
        deliveries = [m.groups() for m in map(DELIVERY.match, lines) if m]
        delivered = [trigger_id for _, _, trigger_id in deliveries]
        assert {c for _, c, _ in deliveries} == {channel}, f"{channel} sender took another channel"
        assert len(delivered) == len(set(delivered)), f"{channel} sender delivered a trigger twice"
        assert set(delivered) == expected[channel], f"{channel} sender lost triggers"

        report = final_report(lines)
        others = len(records) - PER_CHANNEL - replays  # every record of another channel
        # (delivered, duplicates, expired, bad, skipped, lag)
        assert report["all"] == (PER_CHANNEL, replays, 0, 0, 0, others, 0), out
        assert [report[tier][-1] for tier in TIERS] == [0] * len(TIERS)  # no lag left
        assert "(stopped: idle)" in out

    # one key per delivery, under the sender's group and channel; nothing for PUSH
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        found = set(client.scan_iter(match=f"{cfg.redis_key_prefix}:sent:*", count=1000))
    finally:
        client.close()
    assert found == {keys.sent(cfg.redis_key_prefix, group(cfg, channel), channel, trigger_id)
                     for channel in SENDERS for trigger_id in expected[channel]}
