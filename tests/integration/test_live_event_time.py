"""Live event time on the real stack (issue 12): the user-metadata backlog holds event time back
while the job starts; after that a profile update does not hold back everyone's clicks.

With plain idleness on the metadata input, a fresh update (updated_at at or after the watermark)
turned that input active again and held the watermark at its updated_at until the topic had been
quiet for ``idleness-ms`` once more: every user's clicks waited for it. The quiet release is off
here, so only the watermark can apply a click, and ``idleness-ms`` is long, so a stall shows as a
delay of about that long.
"""

import re
import subprocess
import sys
import threading
import time

import pytest
from kafka import KafkaProducer

from infra import deploy
from jobs.config import as_flags, replace
from schemas.codec import Codec
from tests.builders import CART, DAY_MS, click_bytes, metadata_bytes
from tests.integration.kafka_io import TopicReader, produce_raw

pytestmark = pytest.mark.integration

IDLENESS_MS = 20_000
BOUND_MS = 500
TICK_S = 0.2


@pytest.fixture
def live_cfg(isolated_cfg):
    return replace(isolated_cfg, idleness_ms=IDLENESS_MS, max_out_of_orderness_ms=BOUND_MS,
                   quiet_release_ms=0)


def _start(cfg):
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--no-watch", *as_flags(cfg),
           "--checkpoint-interval-ms", "1000", "--parallelism", "2",
           "--idleness-ms", str(cfg.idleness_ms),
           "--max-out-of-orderness-ms", str(cfg.max_out_of_orderness_ms),
           "--quiet-release-ms", "0", "--starting-offsets", "earliest"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"job ([0-9a-f]{32}) submitted", proc.stdout).group(1)
    deploy.wait_for_state(cfg.flink_rest_url, job_id, {"RUNNING"}, 120)
    return job_id


def _tick(cfg, codec, stop):
    """Live traffic: a page view on every clicks partition every TICK_S (event time now)."""
    producer = KafkaProducer(**cfg.python_client_kwargs(), acks=1, linger_ms=5)
    try:
        partitions = sorted(producer.partitions_for(cfg.clicks_topic))
        n = 0
        while not stop.wait(TICK_S):
            now = int(time.time() * 1000)
            for p in partitions:
                user = f"{cfg.consumer_group}-tick-{p}"
                producer.send(cfg.clicks_topic, key=user.encode(), partition=p,
                              value=click_bytes(codec, f"{user}-{n}", user, "PAGE_VIEW", now))
            n += 1
    finally:
        producer.close()


def _entered(user):
    def check(records):
        return any(name == "SegmentChange" and r["user_id"] == user and
                   r["segment_id"] == "high-value-cart" and r["change"] == "ENTER"
                   for _, name, r in records)
    return check


def test_a_profile_update_does_not_hold_back_other_users_clicks(live_cfg):
    cfg, codec = live_cfg, Codec.load()
    run = cfg.consumer_group
    warm, profile, buyer = (f"{run}-{n}" for n in ("warm", "profile", "buyer"))
    now = int(time.time() * 1000)
    # the topic's backlog: an update a day old, read while the job starts (metadata_bytes
    # gives updated_at a day before ``at``)
    produce_raw(cfg, cfg.user_metadata_topic, [
        (profile.encode(), metadata_bytes(codec, profile, at=now))])
    job_id = _start(cfg)
    changes = TopicReader(cfg, cfg.segment_changes_topic, codec)
    stop = threading.Event()
    ticker = threading.Thread(target=_tick, args=(cfg, codec, stop), daemon=True)
    ticker.start()
    try:
        # 1. the job is up and the backlog has been quiet for idleness-ms: the watermark moves
        #    with the clicks alone (a cart worth $150 enters high-value-cart once it is passed)
        produce_raw(cfg, cfg.clicks_topic, [(warm.encode(), click_bytes(
            codec, f"{warm}-1", warm, "ADD_TO_CART", int(time.time() * 1000), **CART))])
        changes.wait_for(_entered(warm), timeout_s=180, what="the warm-up cart's ENTER")

        # 2. a fresh profile update, read by the job; then another user's cart
        produce_raw(cfg, cfg.user_metadata_topic, [(profile.encode(), metadata_bytes(
            codec, profile, at=int(time.time() * 1000) + DAY_MS))])
        time.sleep(2)
        produce_raw(cfg, cfg.clicks_topic, [(buyer.encode(), click_bytes(
            codec, f"{buyer}-1", buyer, "ADD_TO_CART", int(time.time() * 1000), **CART))])
        # applied once the clicks' watermark passes it (about BOUND_MS); held by the update
        # it would wait until the metadata topic had been quiet for IDLENESS_MS
        changes.wait_for(_entered(buyer), timeout_s=IDLENESS_MS / 2000,
                         what="the buyer's ENTER within half the idleness time")

    finally:
        stop.set()
        ticker.join()
        changes.close()
        deploy.cancel(cfg.flink_rest_url, job_id)
