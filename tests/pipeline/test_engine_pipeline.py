"""The per-user engine on a MiniCluster (parallelism 2): decode, event time, metadata join,
file definitions and a bad control-topic definition, timers, membership changes, writes to the
stores before emission, dead letters."""

import json
from collections import defaultdict

import pytest
from pyflink.common import Row

from jobs.config import replace
from jobs.connectors import click_watermarks
from jobs.job import build, file_definitions
from schemas.codec import Codec
from tests.builders import CART, DAY_MS, click_bytes, metadata_bytes
from tests.pipeline.fakes import FileWriterFactory, as_bytes
from udfs.flink.descriptors import SOURCE_RECORD_ROW

pytestmark = pytest.mark.pipeline

T0 = 1_800_000_000_000
MIN = 60_000


def _rows(topic, payloads, timestamp):
    return [Row(topic, i % 2, i, timestamp, b"k", p, None) for i, p in enumerate(payloads)]




def test_engine_emits_changes_writes_them_first_and_dead_letters(env, cfg, tmp_path):
    # segment logic under test: churn scoring (tested in test_churn_pipeline) is off
    cfg = replace(cfg, churn_model="off")
    codec = Codec.load()
    clicks = [
        click_bytes(codec, "a1", "alice", "ADD_TO_CART", T0, **CART),  # abandons
        click_bytes(codec, "b1", "bob", "ADD_TO_CART", T0 + 1000, **CART),
        click_bytes(codec, "b2", "bob", "PURCHASE", T0 + 10 * MIN, order_id="o1", **CART),
        click_bytes(codec, "a1", "alice", "ADD_TO_CART", T0, **CART),  # duplicate
        b"not avro",
        # carol moves event time past alice's 30-minute window
        click_bytes(codec, "c1", "carol", "PAGE_VIEW", T0 + 40 * MIN),
    ]
    # alice signed up two days before T0: a new sign-up
    metadata = [metadata_bytes(codec, "alice", "Europe/Berlin", at=T0,
                               signup_time=T0 - 2 * DAY_MS, email=True, in_app=True)]
    bad_definition = codec.encode("DefinitionUpdate", {
        "definition_id": "broken", "kind": "SEGMENT", "action": "UPSERT", "version": 1,
        "body": "{not json", "checksum": "0" * 64, "published_at": T0, "published_by": None})

    written = tmp_path / "written.jsonl"
    outputs = build(
        env.from_collection(_rows("clicks", clicks, T0 + 41 * MIN), type_info=SOURCE_RECORD_ROW)
        .assign_timestamps_and_watermarks(click_watermarks(cfg)),
        env.from_collection(_rows("user-metadata", metadata, T0), type_info=SOURCE_RECORD_ROW),
        env.from_collection(_rows("definitions", [bad_definition], T0),
                            type_info=SOURCE_RECORD_ROW),
        cfg, file_definitions(cfg), None, store=FileWriterFactory(str(written)))
    with outputs.all().execute_and_collect() as results:
        rows = [(topic, as_bytes(key), codec.decode_named(as_bytes(value)))
                for topic, key, value, _ in results]

    changes = [record for topic, _, (name, record) in rows if name == "SegmentChange"]
    # the end of the bounded input fires every pending timer (up to state expiry); look at the
    # hour the script covers
    early = sorted((c["user_id"], c["segment_id"], c["change"], c["event_time"])
                   for c in changes if c["event_time"] <= T0 + 60 * MIN)
    # alice's metadata (updated a day before T0) and her first click come from two sources, in
    # either order; metadata takes effect at its updated_at, so she enters new-signups then
    # (it was whichever was processed first: issue 12, bug 2)
    signup_enter = next(c for c in early if c[1] == "new-signups-7d")
    assert signup_enter[3] == T0 - 86_400_000
    # the collection source spreads records round-robin over two decoders, so bob's two events
    # may reach the engine in either order; they are applied in event-time order, so he enters
    # and leaves high-value-cart either way (reversed, the pair used to vanish: issue 12, bug 3)
    bob = [c for c in early if c[0] == "bob"]
    assert bob == [("bob", "high-value-cart", "ENTER", T0 + 1000),
                   ("bob", "high-value-cart", "EXIT", T0 + 10 * MIN)]
    assert [c for c in early if c[0] != "bob"] == sorted([
        ("alice", "high-value-cart", "ENTER", T0),
        signup_enter,
        ("alice", "cart-abandoners", "ENTER", T0 + 30 * MIN),
    ])
    # every emitted change was written to the stores first, once
    written_ids = [json.loads(line)["change_id"] for line in written.read_text().splitlines()]
    assert sorted(written_ids) == sorted(c["change_id"] for c in changes)
    # and every user who entered a segment has left it by state expiry at the end of input
    balance = defaultdict(int)
    for c in changes:
        balance[(c["user_id"], c["segment_id"])] += 1 if c["change"] == "ENTER" else -1
    assert set(balance.values()) == {0}

    letters = {record["reason_code"]: record for _, _, (name, record) in rows
               if name == "DeadLetter"}
    # (late events need the watermark to move between records: see the integration tests)
    assert set(letters) == {"INVALID_AVRO", "INVALID_DEFINITION"}
    assert letters["INVALID_AVRO"]["raw"] == b"not avro"
    assert "broken" in letters["INVALID_DEFINITION"]["reason"]


def test_every_exchange_on_a_clicks_way_to_its_trigger_flushes_at_the_trigger_path_timeout(
        env, cfg):
    """The trigger path's buffer timeout (``trigger_path_buffer_timeout_ms``) is set on the
    operators that feed each exchange a click and its trigger cross, and on no other: the
    input order feeds the engine over an exchange too (the engine has a second input, the
    definitions, so it is never chained); a missed one held clicks ~50 ms at the median."""
    from jobs import names

    cfg = replace(cfg, churn_model="off", trigger_path_buffer_timeout_ms=7,
                  buffer_timeout_ms=100)
    build(env.from_collection([], type_info=SOURCE_RECORD_ROW)
          .assign_timestamps_and_watermarks(click_watermarks(cfg)),
          env.from_collection([], type_info=SOURCE_RECORD_ROW),
          env.from_collection([], type_info=SOURCE_RECORD_ROW),
          cfg, file_definitions(cfg), None, store=FileWriterFactory("/dev/null")).all()
    graph = env._generate_stream_graph(clear_transformations=False)  # noqa: SLF001
    nodes = list(graph.getStreamNodes().toArray())
    timeouts = {node.getOperatorName(): node.getBufferTimeout() for node in nodes}
    on_path = {names.CLICK_INPUT_NAME, names.KEY_BY_USER_NAME, names.INPUT_ORDER_NAME,
               names.ROUTE_TRIGGERS_UID}
    assert {name: timeouts.get(name) for name in on_path} == dict.fromkeys(on_path, 7)
    assert {t for name, t in timeouts.items() if name not in on_path} <= {-1, 100}
    engine = next(n for n in nodes if n.getOperatorName() == names.USER_ENGINE_NAME)
    assert engine.getInEdges().size() == 2  # keyed inputs and the definitions: not chainable


def test_click_watermarks_come_at_every_tick_live_and_paced_while_catching_up(env):
    """The clicks source's watermarks (io.nudgeflow.flink.ClickWatermarks): bounded
    out-of-orderness at every tick while the newest append time is recent; while it is more
    than the catch-up lag behind the wall clock, at most one per catch-up interval, each one a
    watermark the unpaced generator would have emitted at that tick."""
    from pyflink.java_gateway import get_gateway

    generator = getattr(get_gateway().jvm.io.nudgeflow.flink, "ClickWatermarks$Generator")
    none, now = generator.NONE, T0 + 3_600_000
    live = generator(20, 1000, 200)
    assert live.periodic(now) == none  # nothing read yet
    live.record(T0, now - 2)
    assert live.periodic(now) == T0 - 21
    live.record(T0 + 5, now + 8)
    live.record(T0 + 1, now + 9)  # an older click moves nothing back
    assert [live.periodic(now + 10), live.periodic(now + 20)] == [T0 - 16] * 2  # every tick
    live.record(-(2**63), now + 25)  # rejected by the assigner: moves nothing
    assert live.periodic(now + 30) == T0 - 16 and not live.catchingUp(now + 30)

    paced = generator(20, 1000, 200)
    unpaced = generator(20, 1000, 0)
    emitted, every = [], []
    for tick in range(60):  # a backlog appended an hour ago: 10 ms ticks, 30 s of event time each
        at = now + 10 * tick
        for g in (paced, unpaced):
            g.record(T0 + 30_000 * tick, T0 + tick)
        emitted.append(paced.periodic(at))
        every.append(unpaced.periodic(at))
    assert paced.catchingUp(now) and unpaced.catchingUp(now)
    shown = [w for w in emitted if w != none]
    assert [i for i, w in enumerate(emitted) if w != none] == [0, 20, 40]  # one per 200 ms
    assert shown == [every[0], every[20], every[40]]  # the same watermarks, fewer
    assert none not in every  # unpaced (interval 0): every tick
    paced.record(T0 + 30_000 * 60, now + 595)  # live again: the next tick emits at once
    assert not paced.catchingUp(now + 600) and paced.periodic(now + 600) == T0 + 1_799_979
    unknown = generator(20, 1000, 200)
    unknown.record(T0, -1)  # no append time: read as live
    assert unknown.periodic(now) == T0 - 21 and unknown.periodic(now + 10) == T0 - 21


def test_metadata_holds_event_time_until_it_has_caught_up_then_never(env):
    """The metadata input's watermarks (io.nudgeflow.flink.ChangelogWatermarks): its records'
    event time while its backlog is read; idle for good once quiet, whatever comes after."""
    from pyflink.java_gateway import get_gateway

    generator = getattr(get_gateway().jvm.io.nudgeflow.flink, "ChangelogWatermarks$Generator")
    none, idle = generator.NONE, generator.IDLE
    g = generator(1000, None)
    assert g.periodic(10) == none  # nothing read yet: holds event time back
    g.record(T0, 100)
    g.record(T0 - 5000, 200)  # an older update does not move it back
    assert g.periodic(300) == T0 - 1
    g.record(T0 + 10, 900)
    assert g.periodic(1899) == T0 + 9  # 999 ms quiet: still reading
    assert g.periodic(1900) == idle and g.caughtUp()  # quiet 1000 ms: caught up, idle
    g.record(T0 + 60_000, 2000)  # a fresh update afterwards holds nothing
    assert [g.periodic(t) for t in (2001, 5000, 10_000)] == [none] * 3
    # an empty topic: quiet from the first check (the task running), not from the generator's
    # creation, which precedes the Python decode's start-up in the chain (seconds when loaded)
    quiet = generator(1000, None)
    assert quiet.periodic(5000) == none
    assert quiet.periodic(5999) == none and quiet.periodic(6000) == idle
    late = generator(1000, None)  # a record before the first check starts the quiet time too
    late.record(T0, 7000)
    assert late.periodic(7999) == T0 - 1 and late.periodic(8000) == idle

