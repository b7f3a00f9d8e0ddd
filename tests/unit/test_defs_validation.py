"""`nudgeflow defs validate` finds what used to pass or crash (issue 16, "Validation that finds
everything"): nested folders, control characters, durations past any timestamp, a campaign
that excludes its own trigger segment, ids shared across kinds. Exact messages."""

from pathlib import Path

from udfs.catalog.files import SEGMENT_CATALOG_DIR, validate_command, validate_files

CAMPAIGN = """kind: campaign
id: {id}
version: 1
description: A test campaign.
trigger: {{segment_enter: cart-abandoners}}
channels: [EMAIL]
template: t
priority: {{urgency: 0.5, expected_roi: 10, brand_significance: 0.5}}
"""


def _messages(paths):
    _, errors = validate_files(paths, known_segments=["cart-abandoners"])
    return [(Path(e.file).name, e.path, e.message, e.line) for e in errors]


def test_a_directory_is_walked_to_every_level(tmp_path: Path) -> None:
    nested = tmp_path / "team-a" / "carts"
    nested.mkdir(parents=True)
    (nested / "high-value-cart.yaml").write_text(
        (SEGMENT_CATALOG_DIR / "high-value-cart.yaml").read_text())
    (tmp_path / "team-b").mkdir()
    (tmp_path / "team-b" / "email.yml").write_text(CAMPAIGN.format(id="team-b-email"))
    (tmp_path / "notes.txt").write_text("not a definition")
    code, text = validate_command([tmp_path])
    assert code == 0, text
    assert text == ("ok: 1 segment(s), 1 campaign(s) in 2 file(s): high-value-cart v1, "
                    "team-b-email v1")


def test_a_control_character_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_text("id: broken\nversion: 1\ndescription: a\x00b\n")
    assert _messages([path]) == [(
        "nul.yaml", "", "not valid YAML: character U+0000, a control character; YAML allows "
        "only printable characters, tabs and line breaks: remove it", 3)]


def test_a_duration_past_any_timestamp_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "forever.yaml"
    path.write_text(CAMPAIGN.format(id="forever") + "expires_after: 999999999999d\n")
    assert _messages([path]) == [(
        "forever.yaml", "expires_after", "bad duration '999999999999d': at most 36500d "
        "(100 years); a time plus a longer one does not fit a timestamp", 9)]
    path.write_text(CAMPAIGN.format(id="forever") + "expires_after: 36500d\n")
    assert _messages([path]) == []


def test_a_campaign_that_excludes_its_own_trigger_segment_never_fires(tmp_path: Path) -> None:
    path = tmp_path / "self-excluded.yaml"
    path.write_text(CAMPAIGN.format(id="self-excluded")
                    + "eligibility: {exclude_segments: [cart-abandoners]}\n")
    assert _messages([path]) == [(
        "self-excluded.yaml", "eligibility.exclude_segments", "the campaign fires when a user "
        "enters 'cart-abandoners' but excludes that segment's members, so it can never fire; "
        "remove 'cart-abandoners' from exclude_segments", 9)]


def test_an_id_shared_across_kinds_is_an_error(tmp_path: Path) -> None:
    segment = tmp_path / "a-segment.yaml"
    segment.write_text((SEGMENT_CATALOG_DIR / "high-value-cart.yaml").read_text())
    campaign = tmp_path / "b-campaign.yaml"
    campaign.write_text(CAMPAIGN.format(id="high-value-cart"))
    [(name, field, message, _)] = _messages([segment, campaign])
    assert (name, field) == ("b-campaign.yaml", "id")
    assert message == (f"id 'high-value-cart' is a campaign here and a segment in {segment}: "
                       "every kind shares the control topic's keys (compacted: one definition "
                       "per id), so one would replace the other; rename one")
