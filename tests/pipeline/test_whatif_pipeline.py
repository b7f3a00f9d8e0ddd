"""The what-if job (``jobs.whatif.run``) on a MiniCluster over records of a file (no Kafka): the
engine of the live job with the plan's definitions, its records collected, nothing stored."""

import base64

import pytest

from jobs.cli.whatif import with_candidates
from jobs.config import replace
from jobs.job import file_definitions
from jobs.whatif import WhatIfPlan, run
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from udfs.catalog.files import load_files

pytestmark = pytest.mark.pipeline

T0 = 1_800_000_000_000  # 2027-01-15 08:00 UTC: no quiet hours
MIN = 60_000

CANDIDATE = """\
id: carted-twice
version: 1
description: Two carts in a week.
condition:
  feature: {name: events_add_to_cart_7d, op: ">=", value: 2}
"""


def test_the_what_if_job_emits_what_the_engine_decides_and_stores_nothing(cfg, tmp_path):
    cfg = replace(cfg, churn_model="off")  # segments and campaigns under test, not the model
    codec = Codec.load()
    clicks = [(b"alice", click_bytes(codec, "a1", "alice", "ADD_TO_CART", T0, **CART), T0),
              (b"alice", click_bytes(codec, "a2", "alice", "ADD_TO_CART", T0 + MIN, **CART),
               T0 + MIN),
              # bob moves event time past alice's 30 minutes without a purchase
              (b"bob", click_bytes(codec, "b1", "bob", "PAGE_VIEW", T0 + 40 * MIN),
               T0 + 40 * MIN)]
    metadata = [(b"alice", metadata_bytes(codec, "alice", at=T0, email=True), T0)]
    (tmp_path / "carted-twice.yaml").write_text(CANDIDATE)
    candidates = load_files([tmp_path / "carted-twice.yaml"]).updates()
    plan = WhatIfPlan(cfg, with_candidates(file_definitions(cfg), candidates), {}, clicks,
                      metadata)
    out = tmp_path / "records.b64"
    written = run(plan, str(out))

    records = [codec.decode_named(base64.b64decode(line))
               for line in out.read_text().splitlines()]
    assert len(records) == written
    changes = {(r["user_id"], r["segment_id"], r["change"], r["event_time"])
               for name, r in records
               if name == "SegmentChange" and r["event_time"] <= T0 + 40 * MIN}
    assert ("alice", "carted-twice", "ENTER", T0 + MIN) in changes  # the candidate applies
    assert ("alice", "cart-abandoners", "ENTER", T0 + 31 * MIN) in changes
    triggers = [r for name, r in records if name == "TriggerEvent"]
    assert [(t["user_id"], t["campaign_id"], t["channel"]) for t in triggers
            if t["cause_event_time"] <= T0 + 40 * MIN] == [
        ("alice", "cart-abandonment-email", "EMAIL")]
