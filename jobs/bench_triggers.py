"""Ingestion-to-trigger latency of the job on the local stack, at a fixed offered rate.

``python -m jobs.bench_triggers [--rate R] [--seconds S] [--delivery-guarantee ...]`` starts the
job in an embedded MiniCluster on fresh topics, then sends clicks at ``R`` events/s for ``S``
seconds: one in ten is an add-to-cart over $100 by a user with SMS consent (each fires the
high-value-cart-sms campaign once, P1), the rest page views. A consumer reads the P1 topic
(read committed under exactly-once) and measures, per trigger, the time from the causing click's
Kafka append time (``ingest_time``) to the moment the trigger is visible to it. It prints
p50/p95/p99/max. The full harness (``nudgeflow bench``) is a later issue.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from infra.paths import StackPaths
from infra.servers.flink import local_run_env
from jobs.bench_engine import fresh_config
from jobs.config import as_flags
from schemas.codec import Codec

_ZONES = ("UTC", "Europe/Berlin", "Asia/Kolkata", "Asia/Tokyo", "Australia/Sydney",
          "America/Los_Angeles", "America/New_York", "America/Sao_Paulo", "Pacific/Honolulu")


def daytime_zone(*instants_ms: int) -> str:
    """A time zone in which every instant is between 10:00 and 18:00 local (no quiet hours).

    Raises:
        ValueError: no zone of the list fits all the instants.
    """
    for name in _ZONES:
        zone = ZoneInfo(name)
        if all(10 <= datetime.fromtimestamp(t / 1000, tz=zone).hour < 18 for t in instants_ms):
            return name
    raise ValueError(f"no daytime zone for the instants {instants_ms}")


def _click(codec: Codec, event_id: str, user: str, event_type: str, t: int,
           **extra: object) -> bytes:
    return codec.encode("ClickEvent", {
        "event_id": event_id, "user_id": user, "event_type": event_type, "event_time": t,
        "source": "WEB", "session_id": f"{user}-s", "properties": {}, **extra})


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def measure(rate: int, seconds: int, guarantee: str, checkpoint_ms: int,
            job_flags: tuple[str, ...] = ()) -> dict[str, float]:
    """Latency figures (ms) of the triggers caused during the run.

    ``job_flags`` are more ``jobs.job`` flags (e.g. ``--bundle-time-ms 5``).
    """
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    tag, cfg = fresh_config()
    codec = Codec.load()
    now = int(time.time() * 1000)
    zone = daytime_zone(now)
    buyers = [f"{tag}-b{i}" for i in range(rate * seconds // 10 + 10)]
    producer = KafkaProducer(**cfg.python_client_kwargs(), acks=1, linger_ms=2)
    for user in buyers:
        producer.send(cfg.user_metadata_topic, key=user.encode(), value=codec.encode(
            "UserMetadata", {"user_id": user, "country": "DE", "time_zone": zone, "plan": "FREE",
                             "signup_time": now - 90 * 86_400_000, "lifetime_value": 50.0,
                             "opt_ins": {"email": False, "sms": True, "push": False,
                                         "in_app": False, "paid_social": False},
                             "updated_at": now - 86_400_000}))
    producer.flush()
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs.job", "--local", "--starting-offsets", "earliest",
         "--delivery-guarantee", guarantee, "--checkpoint-interval-ms", str(checkpoint_ms),
         *as_flags(cfg), *job_flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
         env=local_run_env(StackPaths.from_env()))
    topic = cfg.trigger_topic("P1")
    consumer = KafkaConsumer(**cfg.python_client_kwargs(), group_id=None,
                             isolation_level="read_committed", fetch_max_wait_ms=10)
    consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
    latencies: list[float] = []

    def read(until: float) -> None:
        while time.monotonic() < until:
            for batch in consumer.poll(timeout_ms=50).values():
                seen = time.time() * 1000
                for message in batch:
                    trigger = codec.decode(message.value, expect="TriggerEvent")
                    latencies.append(seen - trigger["ingest_time"])

    try:
        # warm up: the job is up once a first trigger arrives
        warm = buyers.pop()
        deadline = time.monotonic() + 180
        while not latencies:
            if job.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the job did not start (or produced no trigger)")
            t = int(time.time() * 1000)
            producer.send(cfg.clicks_topic, key=warm.encode(), value=_click(
                codec, f"warm-{t}", warm, "ADD_TO_CART", t, product_id="p", price=150.0,
                quantity=1, currency="USD"))
            producer.flush()
            read(time.monotonic() + 2)
        latencies.clear()
        sender = threading.Thread(target=_send, args=(producer, cfg.clicks_topic, codec, buyers,
                                                      rate, seconds, tag))
        sender.start()
        read(time.monotonic() + seconds + max(5, 3 * checkpoint_ms / 1000))
        sender.join()
    finally:
        job.terminate()
        job.wait(60)
        consumer.close()
        producer.close()
    if not latencies:
        raise RuntimeError("no trigger arrived during the run")
    return {"triggers": len(latencies), "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95), "p99": percentile(latencies, 0.99),
            "max": max(latencies), "mean": statistics.fmean(latencies)}


def _send(producer, topic: str, codec: Codec, buyers: list[str], rate: int, seconds: int,
          tag: str) -> None:
    start = time.monotonic()
    for n in range(rate * seconds):
        due = start + n / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        t = int(time.time() * 1000)
        if n % 10 == 0 and buyers:
            user = buyers.pop()
            value = _click(codec, f"{tag}-{n}", user, "ADD_TO_CART", t, product_id="p",
                           price=150.0, quantity=1, currency="USD")
        else:
            user = f"{tag}-v{n % 500}"
            value = _click(codec, f"{tag}-{n}", user, "PAGE_VIEW", t)
        producer.send(topic, key=user.encode(), value=value)
    producer.flush()


def main() -> None:
    """Run one measurement and print it."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=200, help="offered clicks per second")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--delivery-guarantee", default="exactly-once",
                        choices=["at-least-once", "exactly-once"])
    parser.add_argument("--checkpoint-interval-ms", type=int, default=1000)
    parser.add_argument("--bundle-time-ms", type=int, default=100,
                        help="python.fn-execution.bundle.time of the job")
    parser.add_argument("--buffer-timeout-ms", type=int, default=100,
                        help="execution.buffer-timeout of the job")
    args = parser.parse_args()
    figures = measure(args.rate, args.seconds, args.delivery_guarantee,
                      args.checkpoint_interval_ms,
                      ("--bundle-time-ms", str(args.bundle_time_ms),
                       "--buffer-timeout-ms", str(args.buffer_timeout_ms)))
    print(f"ingest -> trigger visible ({args.delivery_guarantee}, checkpoints every "
          f"{args.checkpoint_interval_ms} ms, bundle time {args.bundle_time_ms} ms, buffer "
          f"timeout {args.buffer_timeout_ms} ms, {args.rate} clicks/s for {args.seconds} s): "
          f"{figures['triggers']:.0f} triggers, p50 {figures['p50']:.0f} ms, "
          f"p95 {figures['p95']:.0f} ms, p99 {figures['p99']:.0f} ms, "
          f"max {figures['max']:.0f} ms")


if __name__ == "__main__":
    main()
