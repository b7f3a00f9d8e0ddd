"""The decoded inputs kept between steps (udfs.clock.PendingItems): a waiting click is decoded
once, and the engine's records are the same as when every input is decoded from its bytes.

The differential test plays a seeded workload (clicks out of order, duplicates, metadata
updates) through the domain loop, which keeps the clock as bytes between steps as keyed state
does, once with the kept items and once without, and compares every record of every step.
"""

import dataclasses

import pytest

from jobs.bench import domain
from schemas.codec import Codec
from tests.as_python import rerun_as_python
from udfs import engine
from udfs.clock import CLICK_RANK, Pending, PendingItems, UserClock, decode_clock, encode_clock


@pytest.fixture(scope="module")
def inputs():
    return domain.build_inputs(3_000, 150, seed=5, metadata_updates=0.05)


def _counting_decodes(monkeypatch):
    counts: dict[str, int] = {}
    decode = Codec.decode

    def counted(self, raw, expect=None, **kw):
        counts[expect] = counts.get(expect, 0) + 1
        return decode(self, raw, expect=expect, **kw)

    monkeypatch.setattr(Codec, "decode", counted)
    return counts


def test_the_same_records_with_each_waiting_click_decoded_once(inputs, monkeypatch, request):
    if rerun_as_python(request):  # it counts calls of Codec.decode with a patch
        return
    rules = domain.shipped_rules(churn=False)
    schedule = domain.arrivals(inputs)  # worked out by decoding every click: not counted
    counts = _counting_decodes(monkeypatch)
    kept = domain.play(inputs, rules, keep=True, schedule=schedule)
    kept_decodes = dict(counts)
    counts.clear()
    again = domain.play(inputs, rules, keep=True, reuse_decoded=False, schedule=schedule)
    assert kept.emitted == again.emitted
    assert [s.features for s in kept.states.values()] == \
        [s.features for s in again.states.values()]
    assert any(e["changes"] for _, e in kept.emitted) and any(e["triggers"]
                                                              for _, e in kept.emitted)
    # every valid click is decoded at intake; without the kept items once more when applied
    clicks = inputs.clicks - kept.rejected
    assert kept_decodes["ClickEvent"] == clicks
    assert counts["ClickEvent"] > clicks * 1.9


def test_the_same_records_with_each_stored_clock_handed_back_instead_of_decoded(
        inputs, monkeypatch):
    """The kept clock objects (``PendingItems.take``) change no record; most steps use one."""
    import jobs.bench.domain as loop
    import udfs.clock as clocks

    rules = domain.shipped_rules(journeys=False)
    decoded = {"n": 0}

    def counted(raw, items=None):
        decoded["n"] += bool(raw)
        return decode_clock(raw, items)

    monkeypatch.setattr(clocks, "decode_clock", counted)
    monkeypatch.setattr(loop, "decode_clock", counted)
    kept = domain.play(inputs, rules, keep=True, watermark_every=50)
    kept_decodes, decoded["n"] = decoded["n"], 0
    again = domain.play(inputs, rules, keep=True, watermark_every=50, reuse_decoded=False)
    assert kept.emitted == again.emitted
    assert [s.clock for s in kept.states.values()] == [s.clock for s in again.states.values()]
    # without the kept clocks, every step of a user with a stored clock decodes it
    assert decoded["n"] > kept.steps * 0.8 and kept_decodes < decoded["n"] * 0.05


def test_a_kept_clock_is_handed_back_once_and_only_for_its_own_bytes():
    kept = PendingItems(max_users=10)
    clock = UserClock(clock_ms=5, pending=[_click("e1", "one")])
    raw = encode_clock(clock)
    kept.remember("ann", clock, raw)
    assert kept.take("ann", raw) is clock
    again = kept.take("ann", raw)  # taken: the next step's object is decoded
    assert again is not clock and again == clock and again.pending[0].item == "one"
    kept.remember("ann", clock, raw)
    other = encode_clock(UserClock(clock_ms=6))
    assert kept.take("ann", other) == UserClock(clock_ms=6)  # another instance's bytes
    kept.remember("ann", clock, raw)
    kept.remember("ann", clock)  # a step that stored no clock: the object is not kept
    assert kept.take("ann", raw) is not clock
    assert kept.take("bob", None) == UserClock()


def _click(key: str, item: object) -> Pending:
    return Pending(1_000, CLICK_RANK, key, b"payload-" + key.encode(), 5, item)


def test_decoded_items_go_back_on_their_own_entries_only():
    clock = UserClock(pending=[_click("e1", "one"), _click("e2", "two")])
    kept = PendingItems(max_users=10)
    kept.remember("ann", clock)
    raw = encode_clock(clock)
    back = decode_clock(raw, kept.for_user("ann"))
    assert [(p.key, p.item) for p in back.pending] == [("e1", "one"), ("e2", "two")]
    assert [p.item for p in decode_clock(raw, kept.for_user("bob")).pending] == [None, None]
    assert [p.item for p in decode_clock(raw).pending] == [None, None]  # after a restore


def test_applied_inputs_are_forgotten_and_the_memory_is_bounded():
    kept = PendingItems(max_users=2)
    clock = UserClock(pending=[_click("e1", "one"), _click("e2", "two")])
    kept.remember("ann", clock)
    clock.pending.pop(0)  # e1 applied
    kept.remember("ann", clock)
    assert kept.for_user("ann") == {(CLICK_RANK, "e2"): "two"}
    clock.pending.clear()
    kept.remember("ann", clock)
    assert kept.for_user("ann") is None and len(kept) == 0
    for user in ("a", "b", "c"):
        kept.remember(user, UserClock(pending=[_click("e", user)]))
    assert len(kept) <= 2 and kept.for_user("c") == {(CLICK_RANK, "e"): "c"}


def test_a_duplicate_arrival_does_not_replace_the_waiting_input():
    """The second arrival of a key (other contents) is a duplicate: the first's item stays."""
    rules = domain.shipped_rules(churn=False)
    first = {"event_id": "e1", "user_id": "ann", "event_type": "PAGE_VIEW",
             "event_time": 10_000, "source": "WEB"}
    state = engine.UserState()
    kept = PendingItems(max_users=10)
    arrival = engine.Arrival("ann", Pending(10_000, CLICK_RANK, "e1", b"x", 0,
                                            engine.Click(first)), watermark_ms=0)
    assert not engine.step(state, arrival, rules, 0).duplicate
    kept.remember("ann", state.clock)
    changed = engine.Click({**first, "event_type": "PURCHASE"})
    again = dataclasses.replace(arrival, pending=dataclasses.replace(arrival.pending,
                                                                      item=changed))
    assert engine.step(state, again, rules, 0).duplicate
    kept.remember("ann", state.clock)  # were it remembered after the duplicate step too
    assert kept.for_user("ann")[(CLICK_RANK, "e1")].event["event_type"] == "PAGE_VIEW"
