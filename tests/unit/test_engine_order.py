"""The engine step is event-time exact (pure, milliseconds): a seeded workload played in
event-time order, shuffled within the out-of-orderness bound, and with duplicates, through a
stand-in for the Flink adapter (watermarks, one timer per user; tests/differential/sim.py),
gives the same segment changes per (user, segment), the same triggers and the same decisions."""

import pytest

from jobs.workload.workload import USD_RATES
from tests.differential import compare
from tests.differential.reference import SEGMENTS, reference_changes
from tests.differential.replay import shuffled, workload
from tests.differential.sim import Simulator
from udfs.catalog.files import catalog_files, load_files
from udfs.catalog.registries import Registries
from udfs.engine import Rules

DAY = 86_400_000
BOUND = 5_000


@pytest.fixture(scope="module")
def rules():
    updates = load_files(catalog_files(), check_references=False).updates(0, "file")
    return Rules(Registries.from_updates(updates), 90 * DAY)


def test_four_shipped_segments_match_an_independent_reference(rules, small):
    """cart-abandoners, new-signups-7d, inactive-30d and high-value-cart (in USD), to the
    change and its time, against tests/differential/reference.py."""
    sim = play(rules, small.clicks, small.metadata)
    got = {}
    for c in sorted(sim.changes, key=lambda c: c["event_time"]):
        if c["segment_id"] in SEGMENTS:
            got.setdefault((c["user_id"], c["segment_id"]), []).append(
                (c["change"], c["event_time"]))
    expected = reference_changes(small.clicks, small.metadata, USD_RATES)
    assert {k[1] for k in expected} == set(SEGMENTS)
    assert got == expected, compare.first_difference(got, expected)


@pytest.fixture(scope="module")
def small():
    return workload(users=40, events=800, days=10, seed=3)


def play(rules, clicks, metadata):
    sim = Simulator(rules, BOUND)
    for record in metadata:
        sim.metadata(record)
    for click in clicks:
        sim.click(click)
    sim.finish()
    assert sim.dead == []  # nothing is behind the watermark in these orders
    return sim


def outputs(sim):
    return (compare.changes_by_key(sim.changes), compare.triggers(sim.triggers),
            compare.decisions(sim.decisions))


@pytest.mark.parametrize("seed", [1, 2])
def test_shuffled_within_the_bound_with_duplicates_gives_the_same_output(rules, small, seed):
    ordered = outputs(play(rules, small.clicks, small.metadata))
    assert ordered[0] and ordered[1] and ordered[2]  # the workload exercises all three
    shuffled_run = outputs(play(rules, shuffled(small.clicks, BOUND, 0.05, seed),
                                small.metadata))
    assert shuffled_run[0] == ordered[0], compare.first_difference(shuffled_run[0], ordered[0])
    assert shuffled_run[1] == ordered[1]
    assert shuffled_run[2] == ordered[2]


def test_metadata_arriving_after_the_clicks_gives_the_same_output(rules, small):
    """As-of: metadata takes effect at its updated_at, not when it arrives."""
    ordered = outputs(play(rules, small.clicks, small.metadata))
    sim = Simulator(rules, BOUND)
    # every user's metadata arrives with their first click, the watermark already past it
    first_seen = set()
    by_user = {m["user_id"]: m for m in small.metadata}
    for click in small.clicks:
        user = click["user_id"]
        sim.click(click)
        if user not in first_seen and user in by_user:
            first_seen.add(user)
            sim.metadata(by_user[user])
    sim.finish()
    late = outputs(sim)
    # the metadata arrived after its time had passed for the user: applied at the user's clock,
    # the one documented case where arrival order matters; a user who signed up recently
    # enters new-signups-7d then at the clock instead of at updated_at
    assert late[0] != ordered[0]
    signup = {k: v for k, v in ordered[0].items() if k[1] == "new-signups-7d"}
    assert signup and all(v[0][1] == by_user[k[0]]["updated_at"] for k, v in signup.items())


def test_an_in_order_replay_runs_every_check_at_its_time(rules, small):
    """cart-abandoners ENTER exactly 30 minutes after the add, never at a later event."""
    sim = play(rules, small.clicks, small.metadata)
    adds = {}
    for click in small.clicks:
        if click["event_type"] == "ADD_TO_CART":
            adds.setdefault(click["user_id"], []).append(click["event_time"])
    enters = [c for c in sim.changes
              if c["segment_id"] == "cart-abandoners" and c["change"] == "ENTER"]
    assert enters
    for c in enters:
        assert c["event_time"] - 30 * 60_000 in adds[c["user_id"]]
        assert c["cause_event_id"] is None  # a time-driven change


def test_a_user_restored_from_before_the_clock_gets_their_due_times(rules):
    """A savepoint of the build before the clock: features and membership, no clock state."""
    from tests.builders import CART, click
    from udfs import engine
    from udfs.clock import CLICK_RANK, Pending

    t0 = 1_800_000_000_000
    old = engine.UserState()
    engine.step(old, engine.Click(click("a1", "ann", "ADD_TO_CART", t0, **CART)), rules, 0)
    features, membership = old.features, dict(old.membership)

    def load(state):
        state.features, state.membership = features, dict(membership)

    restored = engine.UserState(load=load)  # the clock state is empty
    later = Pending(t0 + 3_600_000, CLICK_RANK, "a2", b"", t0 + 3_600_000,
                    engine.Click(click("a2", "ann", "PAGE_VIEW", t0 + 3_600_000)))
    out = engine.step(restored, engine.Arrival("ann", later, t0 + 3_600_000), rules, 0)
    # the abandonment 30 minutes after the add is found at its time, before the later click
    assert [(c["segment_id"], c["change"], c["event_time"]) for c in out.changes] == [
        ("cart-abandoners", "ENTER", t0 + 30 * 60_000)]
    assert restored.clock.clock_ms == t0 + 3_600_000 and restored.clock.timer_ms is not None

    # a timer the old build registered fires with an empty clock: evaluated at its time
    again = engine.UserState(load=load)
    out = engine.step(again, engine.Timer("ann", t0 + 30 * 60_000), rules, 0)
    assert [(c["segment_id"], c["change"]) for c in out.changes] == [
        ("cart-abandoners", "ENTER")]


def test_an_unknown_clock_version_is_refused_with_a_clear_message():
    from udfs.clock import UserClock, decode_clock, encode_clock

    raw = encode_clock(UserClock(clock_ms=5))
    assert decode_clock(raw).clock_ms == 5
    with pytest.raises(ValueError, match="user clock state has version 9; this build reads "
                                         "versions 1 and 2"):
        decode_clock(b"\x09" + raw[1:])


def test_a_clock_of_the_previous_version_restores_its_pending_inputs_without_a_trace():
    """Version 1 (savepoints of builds before the trace context) still reads; version 2 keeps
    each pending click's traceparent."""
    import struct

    from udfs.clock import CLICK_RANK, Pending, UserClock, decode_clock, encode_clock

    header = struct.pack("<Bqqqqqqqi", 1, 5, -(2**63), -(2**63), -(2**63), -(2**63), 7, 42, 1)
    entry = struct.pack("<qBqHI", 9, CLICK_RANK, 3, 2, 4) + b"e1" + b"abcd"
    old = decode_clock(header + entry)
    assert (old.clock_ms, old.timer_ms, old.defs_fp) == (5, 7, 42)
    assert old.pending == [Pending(9, CLICK_RANK, "e1", b"abcd", 3)]
    assert old.pending[0].trace == ""
    traced = Pending(9, CLICK_RANK, "e1", b"abcd", 3,
                     trace="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    again = decode_clock(encode_clock(UserClock(clock_ms=5, pending=[traced])))
    assert again.pending[0].trace == traced.trace
    assert encode_clock(old)[0] == 2  # written back in the current version


def test_idle_rechecks_read_nothing_until_a_definition_changes(tmp_path):
    """The daily recheck of an idle user is a near no-op while the definitions are unchanged;
    after a change it evaluates, and the user enters a new segment at that day boundary."""
    from tests.builders import click
    from udfs import engine

    updates = load_files(catalog_files(), check_references=False).updates(0, "file")
    registries = Registries.from_updates(updates)
    rules = Rules(registries, 90 * DAY)
    t0 = 1_800_000_000_000
    loads = []

    def state_with_counted_loads(base):
        def load(state):
            loads.append(1)
            state.features, state.metadata, state.membership = base
        return engine.UserState(clock=base_clock[0], load=load)

    user = engine.UserState()
    engine.step(user, engine.Click(click("v1", "vic", "PAGE_VIEW", t0)), rules, 0)
    base = (user.features, user.metadata, dict(user.membership))
    base_clock = [user.clock]
    # a week of event time passes: only idle rechecks (and the window edges of the view)
    out = engine.step(state_with_counted_loads(base), engine.Timer("vic", t0 + 7 * DAY),
                      rules, 0)
    assert out.rechecks_skipped >= 5 and out.changes == []
    loads_before = len(loads)
    (tmp_path / "quiet.yaml").write_text(
        "id: quiet-3d\nversion: 1\ndescription: No event for 3 days.\n"
        "condition:\n  inactive: {for: 3d}\n")
    for update in load_files([tmp_path / "quiet.yaml"]).updates(0, "file"):
        registries.apply(update)
    out = engine.step(state_with_counted_loads(base), engine.Timer("vic", t0 + 9 * DAY),
                      rules, 0)
    enter = [c for c in out.changes if c["segment_id"] == "quiet-3d"]
    assert [c["change"] for c in enter] == ["ENTER"]
    assert enter[0]["event_time"] % DAY == 0  # at the first recheck after the change
    assert len(loads) > loads_before
