"""Backfill requests on a MiniCluster (parallelism 2): the backfill-requests source through the
decoder and the keyed engine. A request whose key is not its user is dead-lettered by the
decoder; one made for a definition the engine does not apply is dead-lettered by the engine
with what is missing; one for a user the engine knows nothing of changes nothing."""

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


def request(codec, user, definitions, backfill_id="bf-1"):
    return codec.encode("BackfillRequest", {"backfill_id": backfill_id, "user_id": user,
                                            "requested_at": T0, "definitions": definitions})


def test_bad_and_stale_requests_are_dead_lettered_with_their_reason(env, cfg, tmp_path):
    cfg = replace(cfg, churn_model="off")
    codec = Codec.load()
    clicks = [click_bytes(codec, "ann-1", "ann", "ADD_TO_CART", T0, **CART),
              click_bytes(codec, "mo-1", "mo", "PAGE_VIEW", T0 + 2 * MIN)]
    click_rows = [Row("clicks", i % 2, i, T0, b"k", value, None) for i, value in enumerate(clicks)]
    backfill_rows = [
        Row("backfill-requests", 0, 0, T0, b"ann", request(codec, "ann", {"nope": 1}), None),
        Row("backfill-requests", 1, 0, T0, b"bob", request(codec, "ann", {}), None),
        Row("backfill-requests", 0, 1, T0, b"nobody", request(codec, "nobody", {}), None),
    ]
    outputs = build(
        env.from_collection(click_rows, type_info=SOURCE_RECORD_ROW)
        .assign_timestamps_and_watermarks(click_watermarks(cfg)),
        env.from_collection([Row("user-metadata", 0, 0, T0, b"mo",
                                 metadata_bytes(codec, "mo", at=T0 + 86_400_000), None)],
                            type_info=SOURCE_RECORD_ROW),
        env.from_collection([Row("definitions", 0, 0, T0, b"d", b"", None)],
                            type_info=SOURCE_RECORD_ROW),
        cfg, file_definitions(cfg), None, store=FileWriterFactory(str(tmp_path / "w.jsonl")),
        backfills=env.from_collection(backfill_rows, type_info=SOURCE_RECORD_ROW))
    values = outputs.all().map(lambda row: row[2],
                               output_type=Types.PRIMITIVE_ARRAY(Types.BYTE()))
    with values.execute_and_collect() as results:
        rows = [codec.decode_named(as_bytes(value)) for value in results]

    letters = sorted((r["reason_code"], r["problems"][0]["code"], r["reason"])
                     for n, r in rows if n == "DeadLetter"
                     and r["source_topic"] == cfg.backfill_topic)
    assert letters == [
        ("INVALID_FIELD", "KEY_MISMATCH",
         "backfill request 'bf-1': the record key 'bob' is not its user_id 'ann'; key each "
         "request by the user it names"),
        ("OTHER", "DEFINITIONS_NOT_IN_FORCE",
         "backfill request 'bf-1' for user 'ann' reached the engine before these definitions "
         "were in force: nope v1; run the backfill again once the job applies them "
         "(`nudgeflow defs list`): users already evaluated are skipped"),
    ]
    # nothing of nobody's; ann's cart is hers through her click, not through a backfill
    assert [r for n, r in rows if r.get("user_id") == "nobody"] == []
    assert [r for n, r in rows if n == "SegmentChange" and "backfill" in r["reason"]] == []
