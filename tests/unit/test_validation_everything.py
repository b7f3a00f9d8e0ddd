"""`nudgeflow defs validate` finds everything (issue 16): unreadable files, every duration field of
every kind, ids shared across kinds, references checked against the control topic, and the JSON
Schema of the grammar. Exact messages; `test_defs_validation.py` holds the first cases."""

from pathlib import Path

import pytest
import yaml

from udfs.catalog.files import (
    CAMPAIGN_CATALOG_DIR,
    JOURNEY_CATALOG_DIR,
    POLICY_FILE,
    SEGMENT_CATALOG_DIR,
    validate_command,
    validate_files,
)


def _errors(paths):
    _, errors = validate_files(paths, known_segments=["cart-abandoners"])
    return [(Path(e.file).name, e.path, e.message, e.line) for e in errors]


# (d) files that are not UTF-8 or not YAML: a clean error with the line, never a traceback


def test_bytes_that_are_not_utf8_are_an_error_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"id: a\nversion: 1\ndescription: caf\xe9\n")
    assert _errors([path]) == [(
        "latin1.yaml", "", "not UTF-8: byte 0xE9 cannot be decoded (invalid continuation byte); "
        "save the file as UTF-8", 3)]


def test_a_binary_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "image.yaml"
    path.write_bytes(b"\x00\x01\x02\x03")
    assert _errors([path]) == [(
        "image.yaml", "", "not valid YAML: character U+0000, a control character; YAML allows "
        "only printable characters, tabs and line breaks: remove it", 1)]


def test_text_that_is_not_yaml_is_an_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: a\nversion: [1\n")
    assert _errors([path]) == [(
        "broken.yaml", "", "not valid YAML: expected ',' or ']', but got '<stream end>'", 3)]


def test_an_alias_inside_itself_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "endless.yaml"
    path.write_text("id: a\ncondition: &loop\n  all: [*loop]\n")
    assert _errors([path]) == [(
        "endless.yaml", "condition.all[0]", "not valid YAML for a definition: an alias refers "
        "to a value that contains it, so the document never ends: write the value out", 2)]


def test_nested_aliases_that_expand_past_any_size_are_an_error(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert _errors([path]) == [(
        "laughs.yaml", "", "the document holds more than 100000 values (aliases counted at "
        "every use); definitions are small: write out fewer aliases", None)]


def test_nesting_too_deep_to_read_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("id: " + "[" * 2000 + "]" * 2000 + "\n")
    assert _errors([path]) == [(
        "deep.yaml", "", "not valid YAML for a definition: nested too deeply (hundreds of "
        "levels); definitions nest a few levels: flatten it", None)]


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    assert _errors([tmp_path / "gone.yaml"]) == [(
        "gone.yaml", "", "cannot read file: No such file or directory; check the path and its "
        "permissions", None)]


def test_every_bad_file_is_reported_in_one_pass(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "latin1.yaml").write_bytes(b"id: caf\xe9\n")
    (tmp_path / "a" / "b").mkdir()
    (tmp_path / "a" / "b" / "nul.yml").write_bytes(b"id: a\x00\n")
    (tmp_path / "broken.yaml").write_text("id: [\n")
    (tmp_path / "campaign.yaml").write_text("kind: campaign\nid: Bad\n")
    code, text = validate_command([tmp_path])
    assert code == 1
    assert [line.split(": ", 1)[0] for line in text.splitlines()] == [
        f"{tmp_path}/a/b/nul.yml", f"{tmp_path}/a/latin1.yaml", f"{tmp_path}/broken.yaml",
        *[f"{tmp_path}/campaign.yaml"] * 6, f"{tmp_path}/campaign.yaml:id",
        "10 error(s) in 4 of 4 file(s)"]


# (c) every duration field of every kind is bounded: a time plus it must fit an Avro long

TOO_LONG = "400000000d"
SEGMENT = {"id": "s", "version": 1, "description": "d"}
#: (file to start from, document path of a duration field, the condition of a segment)
DURATION_FIELDS = [
    (None, "condition.event.within", {"event": {"type": "PURCHASE", "within": TOO_LONG}}),
    (None, "condition.absence.within", {"absence": {
        "after": "ADD_TO_CART", "missing": "PURCHASE", "within": TOO_LONG}}),
    (None, "condition.absence.expires_after", {"absence": {
        "after": "ADD_TO_CART", "missing": "PURCHASE", "within": "1h",
        "expires_after": TOO_LONG}}),
    (None, "condition.inactive.for", {"inactive": {"for": TOO_LONG}}),
    (None, "condition.feature.value", {"feature": {
        "name": "seconds_since_last_purchase", "op": ">", "value": TOO_LONG}}),
    (None, "condition.metadata.value", {"metadata": {
        "field": "signup_time", "op": "within_last", "value": TOO_LONG}}),
    (CAMPAIGN_CATALOG_DIR / "cart-abandonment-email.yaml", "expires_after", None),
    (CAMPAIGN_CATALOG_DIR / "cart-abandonment-email.yaml", "frequency.reeligible_after", None),
    (CAMPAIGN_CATALOG_DIR / "cart-abandonment-email.yaml", "attribution.window", None),
    (POLICY_FILE, "decision_window", None),
    (POLICY_FILE, "min_interval", None),
    (JOURNEY_CATALOG_DIR / "welcome-drip.yaml", "expires_after", None),
    (JOURNEY_CATALOG_DIR / "welcome-drip.yaml", "nodes[0].entry.reentry.after", None),
    (JOURNEY_CATALOG_DIR / "welcome-drip.yaml", "nodes[2].wait.for", None),
    (JOURNEY_CATALOG_DIR / "cart-abandonment-chain.yaml", "nodes[1].send.expires_after", None),
    (JOURNEY_CATALOG_DIR / "cart-abandonment-chain.yaml", "nodes[2].wait.timeout", None),
]


def _set(doc, path, value):
    """Set a dotted document path (``a.b[2].c``), creating mappings on the way."""
    keys = path.replace("[", ".[").split(".")
    for key in keys[:-1]:
        doc = doc[int(key[1:-1])] if key.startswith("[") else doc.setdefault(key, {})
    doc[keys[-1]] = value


@pytest.mark.parametrize(("source", "path", "condition"), DURATION_FIELDS,
                         ids=[f"{s.stem if s else 'segment'}:{p}" for s, p, _ in DURATION_FIELDS])
def test_every_duration_field_is_bounded(tmp_path: Path, source, path, condition) -> None:
    if source is None:
        doc = {**SEGMENT, "condition": condition}
    else:
        doc = yaml.safe_load(source.read_text())
        if path.endswith("reentry.after"):
            doc["nodes"][0]["entry"]["reentry"] = {}
        _set(doc, path, TOO_LONG)
    file = tmp_path / "long.yaml"
    file.write_text(yaml.safe_dump(doc))
    _, errors = validate_files([file], known_segments=[s.stem for s in
                                                       SEGMENT_CATALOG_DIR.glob("*.yaml")])
    assert [(e.path, e.message) for e in errors] == [(path, (
        "bad duration '400000000d': at most 36500d (100 years); a time plus a longer one does "
        "not fit a timestamp"))]


# (b) ids shared across kinds, with the shipped catalog too

CAMPAIGN = """kind: campaign
id: {id}
version: {version}
description: A test campaign.
trigger: {{segment_enter: {segment}}}
channels: [EMAIL]
template: t
priority: {{urgency: 0.5, expected_roi: 10, brand_significance: 0.5}}
"""


def test_an_id_shared_with_a_shipped_definition_of_another_kind_is_an_error(
        tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(id="cart-abandoners", version=1, segment="inactive-30d"))
    code, text = validate_command([path])
    assert code == 1
    assert text == (
        f"{path}:id: id 'cart-abandoners' is a campaign here and a shipped segment in "
        f"{SEGMENT_CATALOG_DIR / 'cart-abandoners.yaml'}: every kind shares the control topic's "
        "keys (compacted: one definition per id), so one would replace the other; rename one\n"
        "1 error(s) in 1 of 1 file(s)")


# references and ids against the control topic (--against-topic), the topic given as data

def _published(*updates):
    return {u["definition_id"]: u for u in updates}


def _segment_update(segment_id: str, version: int = 1):
    from udfs.segments.compiler import parse_segment
    from udfs.segments.updates import segment_to_update

    segment = parse_segment({"id": segment_id, "version": version, "description": "d",
                             "condition": {"inactive": {"for": "7d"}}})
    return segment_to_update(segment, 0, "test")


def test_a_campaign_may_name_a_segment_published_on_the_topic(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(id="vip-email", version=1, segment="vips"))
    code, text = validate_command([path])
    assert code == 1 and "campaign vip-email names segment 'vips', which is not defined" in text
    code, text = validate_command([path], _published(_segment_update("vips")))
    assert (code, text) == (0, "ok: 0 segment(s), 1 campaign(s) in 1 file(s): vip-email v1")


def test_a_segment_deleted_on_the_topic_cannot_be_named(tmp_path: Path) -> None:
    from udfs.definitions.envelope import delete_update

    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(id="lapsed-email", version=1, segment="lapsed-purchasers"))
    assert validate_command([path])[0] == 0
    code, text = validate_command([path], _published(delete_update("lapsed-purchasers", 2, 0)))
    assert (code, text) == (1, (
        f"{path}: campaign lapsed-email names segment 'lapsed-purchasers', which is not "
        "defined\n1 error(s) in 1 of 1 file(s)"))


def test_an_id_held_by_another_kind_on_the_topic_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(id="vips", version=1, segment="cart-abandoners"))
    code, text = validate_command([path], _published(_segment_update("vips", 3)),
                                  "nudgeflow.definitions")
    assert (code, text) == (1, (
        f"{path}:id: id 'vips' is a campaign here and a segment (v3) on nudgeflow.definitions: "
        "every kind shares the control topic's keys (compacted: one definition per id), so one "
        "would replace the other; rename one\n1 error(s) in 1 of 1 file(s)"))


def test_a_version_the_topic_already_holds_with_other_content_is_an_error(
        tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("id: vips\nversion: 2\ndescription: d\ncondition: {inactive: {for: 30d}}\n")
    code, text = validate_command([path], _published(_segment_update("vips", 2)))
    assert (code, text) == (1, (
        f"{path}:version: v2 cannot be published: v2 is already on the control topic (UPSERT) "
        "with other content; set version to 3 or higher\n1 error(s) in 1 of 1 file(s)"))
    path.write_text("id: vips\nversion: 2\ndescription: d\ncondition: {inactive: {for: 7d}}\n")
    assert validate_command([path], _published(_segment_update("vips", 2)))[0] == 0


# the JSON Schema of the grammar, generated from the compilers' key lists

def test_the_schema_takes_its_keys_from_the_grammar() -> None:
    from udfs.campaigns.grammar import CAMPAIGN_KEYS, CHANNELS, REQUIRED_CAMPAIGN_KEYS
    from udfs.catalog.schema import definition_schema
    from udfs.journeys.grammar import JOURNEY_KEYS

    defs = definition_schema()["$defs"]
    assert list(defs["campaign"]["properties"]) == list(CAMPAIGN_KEYS)
    assert defs["campaign"]["required"] == list(REQUIRED_CAMPAIGN_KEYS)
    assert list(defs["journey"]["properties"]) == list(JOURNEY_KEYS)
    assert defs["channels"]["items"] == {"enum": list(CHANNELS)}
    assert set(defs) >= {"segment", "campaign", "journey", "priority", "currency_rates"}


def _schema_errors(document):
    """Where a document breaks the schema: jsonschema when installed, else a key check."""
    from udfs.catalog.schema import definition_schema

    schema = definition_schema()
    try:
        import jsonschema
    except ImportError:  # a tiny structural check: the top-level keys of the kind
        kind = document.get("kind", "segment")
        allowed = schema["$defs"][kind]["properties"]
        return sorted(set(document) - set(allowed))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(e.message for e in validator.iter_errors(document))


CATALOG_FILES = sorted(Path(SEGMENT_CATALOG_DIR).parent.rglob("*.yaml"))


@pytest.mark.parametrize("path", CATALOG_FILES, ids=[p.stem for p in CATALOG_FILES])
def test_every_shipped_file_matches_the_schema(path: Path) -> None:
    assert _schema_errors(yaml.safe_load(path.read_text())) == []


def test_the_schema_refuses_an_unknown_key_and_a_missing_one() -> None:
    doc = yaml.safe_load((CAMPAIGN_CATALOG_DIR / "cart-abandonment-email.yaml").read_text())
    doc["chanels"] = doc.pop("channels")
    assert _schema_errors(doc) == [
        "'channels' is a required property",
        "Additional properties are not allowed ('chanels' was unexpected)"]


def test_defs_schema_prints_the_schema(capsys) -> None:
    import json

    from jobs.cli.main import main
    from udfs.catalog.schema import definition_schema

    assert main(["defs", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == definition_schema()
