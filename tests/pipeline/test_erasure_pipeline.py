"""Erasure on a MiniCluster (parallelism 2): a user-metadata tombstone through the whole graph
(decoded into an ``erase`` row on the metadata path, keyed by user, applied by the engine,
the stores asked to delete the user); a tombstone without a key is dead-lettered.

The tombstone and the clicks come from two sources. The tombstones are held back a few seconds
of processing time (a slow map before the decoder) while profiles ahead of them move the
metadata input's event time past erin's click, so her click is applied first and the erasure
has segments to EXIT; a second click of hers is held back longer, so it reaches the engine
after the erasure and is dropped. What is checked otherwise holds in any order: she leaves
every segment she entered with reason ``user erased``, and nothing that could only happen after
the erasure (a timer's segment change, a deferred trigger decided, the state's expiry) happens
to her, while carl, with the same click and no tombstone, goes on to all of it."""

import json
import time

import pytest
from pyflink.common import Row, Types

from jobs.config import replace
from jobs.connectors import click_watermarks
from jobs.job import build, file_definitions
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.pipeline.fakes import FileWriterFactory, as_bytes
from udfs.flink.descriptors import SOURCE_RECORD_ROW

pytestmark = pytest.mark.pipeline

T0 = 1_800_000_000_000
MIN = 60_000
#: how long the tombstones are held back (the watermark moves every 200 ms)
HOLD_S = 5


def _hold_tombstones(row):
    if row[5] is None:
        time.sleep(HOLD_S)
    return row


def _hold_late_click(row):
    if row[4] == b"late":
        time.sleep(2 * HOLD_S)
    return row


def _run(env, cfg, click_rows, metadata_rows, written, hold_late_click=False):
    """The job over the two collections, tombstones held back; every record out, decoded."""
    clicks = env.from_collection(click_rows, type_info=SOURCE_RECORD_ROW)
    if hold_late_click:
        clicks = clicks.map(_hold_late_click, output_type=SOURCE_RECORD_ROW).disable_chaining()
    outputs = build(
        clicks.assign_timestamps_and_watermarks(click_watermarks(cfg)),
        env.from_collection(metadata_rows, type_info=SOURCE_RECORD_ROW)
        # a task of its own: chained, its sleep would also stop the periodic watermarks
        .map(_hold_tombstones, output_type=SOURCE_RECORD_ROW).disable_chaining(),
        env.from_collection([Row("definitions", 0, 0, T0, b"d", b"", None)],
                            type_info=SOURCE_RECORD_ROW),
        cfg, file_definitions(cfg), None, store=FileWriterFactory(str(written)))
    # the values only: the keyless tombstone's dead letter has a null key, which
    # execute_and_collect cannot hand back as bytes
    values = outputs.all().map(lambda row: row[2],
                               output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
    codec = Codec.load()
    with values.execute_and_collect() as results:
        return [codec.decode_named(as_bytes(value)) for value in results]


def test_a_tombstone_erases_the_user_and_a_keyless_one_is_dead_lettered(env, cfg, tmp_path):
    cfg = replace(cfg, churn_model="off")
    codec = Codec.load()
    clicks = [
        click_bytes(codec, "erin-1", "erin", "ADD_TO_CART", T0, **CART),
        click_bytes(codec, "carl-1", "carl", "ADD_TO_CART", T0, **CART),
        # mo moves event time a little, in both lanes of the collection (it is spread
        # round-robin): the carts may be applied while the job runs
        click_bytes(codec, "mo-1", "mo", "PAGE_VIEW", T0 + 2 * MIN),
        click_bytes(codec, "mo-2", "mo", "PAGE_VIEW", T0 + 2 * MIN),
    ]
    click_rows = [Row("clicks", i % 2, i, T0 + 3 * MIN, b"k", value, None)
                  for i, value in enumerate(clicks)]
    # erin's second cart, the last record: it reaches the engine after her erasure
    click_rows.append(Row("clicks", 0, 4, T0 + 3 * MIN, b"late", click_bytes(
        codec, "erin-2", "erin", "ADD_TO_CART", T0 + 90_000, **{**CART, "product_id": "p2"}), None))
    # a profile ahead of each tombstone (the collection is spread round-robin over two
    # decoders) moves metadata event time to T0 + 30 s, past erin's click, while the tombstones
    # are held; it then stays below T0 + 1 min until the input ends, so every timer of erin's
    # (a deferred trigger at T0 + 1 min, the abandonment at T0 + 30 min) comes after her erasure
    profiles = [metadata_bytes(codec, user, at=T0 + 30_000 + 86_400_000) for user in ("mo", "al")]
    metadata_rows = [Row("user-metadata", 0, 0, T0 + MIN, b"mo", profiles[0], None),
                     Row("user-metadata", 1, 0, T0 + MIN, b"al", profiles[1], None),
                     Row("user-metadata", 0, 1, T0 + MIN, b"erin", None, None),
                     Row("user-metadata", 1, 1, T0 + MIN, None, None, None)]
    written = tmp_path / "written.jsonl"
    rows = _run(env, cfg, click_rows, metadata_rows, written, hold_late_click=True)

    def of(user, name):
        return [r for n, r in rows if n == name and r.get("user_id") == user]

    erin = of("erin", "SegmentChange")
    entered = [c["segment_id"] for c in erin if c["change"] == "ENTER"]
    exits = [c for c in erin if c["change"] == "EXIT"]
    assert entered.count("high-value-cart") == 1, (
        f"erin's first click was not applied before her erasure (held {HOLD_S} s), or her "
        f"second one after it was: {erin}")
    assert sorted(c["segment_id"] for c in exits) == sorted(entered)
    assert "cart-abandoners" not in entered  # its timer came after the erasure
    for change in exits:
        assert change["reason"] == "user erased" and change["event_time"] <= T0 + MIN
    # a deferred candidate of hers (no metadata yet) is never decided afterwards
    assert [d["outcome"] for d in of("erin", "TriggerDecision")
            if d["outcome"] != "DEFERRED"] == []
    assert of("erin", "TriggerEvent") == []

    # carl, the same click without a tombstone, goes on: abandons, is decided, expires
    carl = of("carl", "SegmentChange")
    assert ("cart-abandoners", "ENTER") in [(c["segment_id"], c["change"]) for c in carl]
    assert all(c["reason"] != "user erased" for c in carl)
    assert any(d["outcome"] != "DEFERRED" for d in of("carl", "TriggerDecision"))

    # the stores were asked to delete erin once, in every shipped segment
    [erased] = [json.loads(line) for line in
                (tmp_path / "written.jsonl.erased").read_text().splitlines()]
    assert erased["user_id"] == "erin"
    assert {"high-value-cart", "cart-abandoners", "inactive-30d"} <= set(erased["segments"])
    # and every EXIT emitted was written first
    written_ids = {json.loads(line)["change_id"] for line in written.read_text().splitlines()}
    assert {c["change_id"] for c in exits} <= written_ids

    letters = [r for n, r in rows if n == "DeadLetter" and r["source_topic"] == "user-metadata"]
    assert [(r["reason_code"], r["problems"][0]["code"]) for r in letters] == [
        ("INVALID_FIELD", "KEY_MISSING")]
    assert "no user to erase" in letters[0]["reason"]


@pytest.mark.parametrize("input_order", ["java", "engine"])
def test_inputs_waiting_for_the_watermark_at_an_erasure_are_dropped_with_it(
        env, cfg, tmp_path, input_order):
    """eve's click and profile, later than the watermark, still wait when her tombstone comes.

    They wait in the Java operator (``input_order: java``) or in the engine's clock
    (``engine``); either way the erasure drops them: nothing of eve is applied, and her profile
    does not come back afterwards as a re-registration (it would make her a new sign-up).
    The tombstone is held back while the watermark cannot pass her inputs (its own metadata
    lane holds the watermark where it is until it has passed).
    """
    cfg = replace(cfg, churn_model="off", input_order=input_order)
    codec = Codec.load()
    clicks = [click_bytes(codec, "mo-1", "mo", "PAGE_VIEW", T0),
              click_bytes(codec, "mo-2", "mo", "PAGE_VIEW", T0),
              click_bytes(codec, "eve-1", "eve", "ADD_TO_CART", T0 + 10 * MIN, **CART)]
    click_rows = [Row("clicks", i % 2, i, T0 + 11 * MIN, b"k", value, None)
                  for i, value in enumerate(clicks)]
    profile = metadata_bytes(codec, "eve", at=T0 + 10 * MIN + 86_400_000, signup_time=T0)
    metadata_rows = [Row("user-metadata", 0, 0, T0 + 11 * MIN, b"eve", profile, None),
                     Row("user-metadata", 1, 0, T0 + 11 * MIN, b"eve", None, None)]
    rows = _run(env, cfg, click_rows, metadata_rows, tmp_path / "written.jsonl")

    eve = [(n, r) for n, r in rows if r.get("user_id") == "eve"]
    assert eve == [], f"eve's waiting inputs were applied after or before her erasure: {eve}"
    mo = [r for n, r in rows if n == "SegmentChange" and r.get("user_id") == "mo"]
    assert mo, "mo's clicks were not applied: the job did not run the inputs through"
    [erased] = [json.loads(line) for line in
                (tmp_path / "written.jsonl.erased").read_text().splitlines()]
    assert erased["user_id"] == "eve"
