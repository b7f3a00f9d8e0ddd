"""What-if without a stack: the report's arithmetic, its renderings, the history checks and
their messages, the candidate overlay and the store that writes nothing."""

import json
import pickle
import random
import re

import fastavro
import pytest

from jobs.cli import whatif
from jobs.cli.whatif import History, WhatIfError, file_history, parse_time, with_candidates
from jobs.cli.whatif_report import Comparison, Window, plot, render_text, summarize, to_json
from schemas.codec import Codec
from tests.builders import click
from udfs.catalog.files import SEGMENT_CATALOG_DIR, load_files
from udfs.stores.membership import DiscardingStore

T0 = 1_800_000_000_000
H = 3_600_000


def change(user, segment, kind, t):
    return ("SegmentChange", {"change_id": f"{user}-{segment}-{t}", "user_id": user,
                              "segment_id": segment, "change": kind, "event_time": t})


def trigger(user, campaign, t, channel="PUSH", tier="P1", rivals=()):
    return ("TriggerEvent", {
        "trigger_id": f"{user}-{campaign}-{t}", "user_id": user, "campaign_id": campaign,
        "channel": channel, "tier": tier, "cause_event_time": t,
        "explanation": {"reason": f"{campaign} won", "rivals": [{"campaign_id": r}
                                                              for r in rivals]}})


def decision(user, campaign, t, outcome="SUPPRESSED", reason="LOST_ARBITRATION"):
    return ("TriggerDecision", {"user_id": user, "campaign_id": campaign, "outcome": outcome,
                                "reason_code": reason, "decided_at": t})


RECORDS = [
    change("a", "seg", "ENTER", T0 - H),  # before the window: counts in the size only
    change("b", "seg", "ENTER", T0 + H),
    change("a", "seg", "EXIT", T0 + 2 * H),
    change("c", "seg", "ENTER", T0 + 20 * H),  # after the window (end-of-input timers)
    trigger("b", "new", T0 + H, rivals=["old"]),
    trigger("b", "old", T0 + 3 * H, channel="EMAIL", tier="P2"),
    trigger("a", "new", T0 - H),  # before the window
    decision("b", "old", T0 + H),
    decision("a", "old", T0 + 2 * H, "DEFERRED", "QUIET_HOURS"),
    ("DeadLetter", {"reason_code": "INVALID_AVRO"}),
]
WINDOW = Window(T0, T0 + 10 * H)


def test_summarize_counts_the_window_and_sizes_from_the_whole_history():
    side = summarize(RECORDS, WINDOW, sample_campaigns=["new"])
    assert dict(side.enters) == {"seg": 1} and dict(side.exits) == {"seg": 1}
    assert side.sizes["seg"][0] == 1 and side.sizes["seg"][-1] == 1  # a before, b in, a out
    assert max(side.sizes["seg"]) == 2
    assert dict(side.triggers) == {("new", "PUSH", "P1"): 1, ("old", "EMAIL", "P2"): 1}
    assert dict(side.losses) == {("old", "new"): 1}
    assert dict(side.decisions) == {("old", "SUPPRESSED", "LOST_ARBITRATION"): 1,
                                    ("old", "DEFERRED", "QUIET_HOURS"): 1}
    assert [s["trigger_id"] for s in side.samples] == [f"b-new-{T0 + H}"]
    assert dict(side.dead_letters) == {"INVALID_AVRO": 1}


def test_summarize_does_not_depend_on_record_order():
    expected = summarize(RECORDS, WINDOW, ["new", "old"])
    for seed in range(5):
        shuffled = RECORDS[:]
        random.Random(seed).shuffle(shuffled)
        assert summarize(shuffled, WINDOW, ["new", "old"]) == expected


def test_renderings_show_both_sides_and_who_lost_to_a_candidate(tmp_path):
    live = summarize([r for r in RECORDS if r[1].get("campaign_id") != "new"], WINDOW)
    cand = summarize(RECORDS, WINDOW, ["new"])
    comparison = Comparison(WINDOW, live, cand, ("new",), "10 clicks in a test")
    assert comparison.lost_to_candidates() == [("old", "new", 1, 0)]
    text = render_text(comparison)
    for section in ("segments (ENTER/EXIT", "triggers by campaign, channel and tier",
                    "suppressed and deferred, by reason",
                    "campaigns that lose the arbitration to a candidate",
                    "sample triggers of the candidates"):
        assert section in text
    assert re.search(r"^new +PUSH +P1 +0 +1 +\+1$", text, re.MULTILINE), text
    document = json.loads(json.dumps(to_json(comparison)))
    assert document["candidate"]["triggers"]["by_campaign"] == {"new": 1, "old": 1}
    assert document["live"]["triggers"]["by_campaign"] == {"old": 1}
    assert document["lost_to_candidates"] == [["old", "new", 1, 0]]
    assert document["candidate"]["segments"]["seg"]["size_at_end"] == 1
    png = tmp_path / "w.png"
    plot(comparison, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-30T12:00:00Z", 1_796_040_000_000),
    ("2026-11-30T13:00:00+01:00", 1_796_040_000_000),
    ("2026-11-30T12:00", 1_796_040_000_000),
    ("2026-11-30", 1_795_996_800_000),
    ("1796040000000", 1_796_040_000_000),
])
def test_parse_time(text, expected):
    assert parse_time(text, "--from") == expected


def test_parse_time_says_what_it_takes():
    with pytest.raises(WhatIfError) as caught:
        parse_time("yesterday", "--to")
    assert str(caught.value) == (
        "--to 'yesterday': not a time; give an ISO 8601 time such as 2026-11-30T12:00:00Z, a "
        "date such as 2026-11-30 (midnight UTC), or epoch milliseconds")


def test_a_window_outside_the_history_is_refused_with_the_range_it_has():
    history = History(T0, T0 + 10 * H, 100, "the topic clicks")
    assert history.window(T0 + H, None) == Window(T0 + H, T0 + 10 * H)
    with pytest.raises(WhatIfError) as early:
        history.window(T0 - 1000, None)
    assert str(early.value) == (
        "--from 2027-01-15T07:59:59Z is before the history starts: the topic clicks begins at "
        "2027-01-15T08:00:00Z; give --from 2027-01-15T08:00:00Z or later, or replay a file that "
        "goes further back (--clicks-file)")
    with pytest.raises(WhatIfError) as late:
        history.window(T0, T0 + 11 * H)
    assert str(late.value) == (
        "--to 2027-01-15T19:00:00Z is after the history ends: the topic clicks ends at "
        "2027-01-15T18:00:00Z; give --to 2027-01-15T18:00:00Z or earlier (or leave it out)")
    with pytest.raises(WhatIfError, match=r"^--to 2027-01-15T09:00:00Z is before --from "
                                          r"2027-01-15T10:00:00Z$"):
        history.window(T0 + 2 * H, T0 + H)


def test_clicks_from_json_lines_and_avro_files(tmp_path):
    codec = Codec.load()
    clicks = [click("e1", "u1", "PAGE_VIEW", T0), click("e2", "u2", "PAGE_VIEW", T0 + H)]
    lines = tmp_path / "clicks.jsonl"
    lines.write_text("\n".join(json.dumps(c) for c in clicks) + "\n\n")
    history = file_history(lines, codec)
    assert (history.first_ms, history.last_ms, history.clicks) == (T0, T0 + H, 2)
    assert history.click_records[0] == (b"u1", codec.encode("ClickEvent", clicks[0]), T0)
    container = tmp_path / "clicks.avro"
    with container.open("wb") as out:
        fastavro.writer(out, codec.versions("ClickEvent")[-1][2], clicks)
    assert file_history(container, codec).click_records == history.click_records


@pytest.mark.parametrize(("content", "message"), [
    (b'{"event_id": 1}\n', "{path}:line 1: not a valid ClickEvent: "),
    (b"\n\n{oops\n", "{path}:3: not JSON (Expecting property name enclosed in double quotes at "
                     "column 2); the file must hold one ClickEvent JSON object per line, or be an "
                     "Avro container file"),
    (b"[1, 2]\n", "{path}:1: a JSON list, not a ClickEvent object"),
    (b"ab\x00\xff\xfe", "{path}: not UTF-8 text (invalid start byte at byte 3) and not an Avro "
                        "container file"),
    (b"", "--clicks-file {path} holds no ClickEvent: nothing to replay"),
])
def test_a_bad_clicks_file_is_refused_with_where_and_why(tmp_path, content, message):
    path = tmp_path / "clicks.jsonl"
    path.write_bytes(content)
    with pytest.raises(WhatIfError) as caught:
        file_history(path, Codec.load())
    assert str(caught.value).startswith(message.format(path=path))


def test_a_missing_clicks_file_is_named():
    with pytest.raises(WhatIfError, match=r"^--clicks-file /no/such\.jsonl: No such file"):
        file_history(whatif.Path("/no/such.jsonl"), Codec.load())


def test_a_candidate_replaces_the_live_definition_of_its_id(tmp_path):
    source = (SEGMENT_CATALOG_DIR / "frequent-browsers.yaml").read_text()
    (tmp_path / "live.yaml").write_text(source.replace("version: 1", "version: 3"))
    (tmp_path / "changed.yaml").write_text(source.replace("description: ", "description: New. "))
    (tmp_path / "new.yaml").write_text(source.replace("id: frequent-browsers", "id: brand-new"))
    live = load_files([tmp_path / "live.yaml"]).updates()
    candidates = load_files([tmp_path / "changed.yaml", tmp_path / "new.yaml"]).updates()
    applied = {u["definition_id"]: u for u in with_candidates(live, candidates)}
    # version 1 in the file, above the live 3 once applied: it replaces the live one
    assert applied["frequent-browsers"]["version"] == 4
    assert "New. " in applied["frequent-browsers"]["body"]
    assert applied["brand-new"]["version"] == 1


def test_the_discarding_store_writes_nothing_and_reports_the_sizes_it_was_given():
    factory = pickle.loads(pickle.dumps(DiscardingStore((("seg", 12),))))
    writer = factory()
    assert writer.write_many([{"change_id": "x"}]) == []
    assert writer.erase_user("u", ["seg"]) == []
    assert writer.segment_sizes() == {"seg": 12}
    writer.record_definition("seg", "v1")
    writer.close()
