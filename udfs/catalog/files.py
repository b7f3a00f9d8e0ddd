"""Definition files of every kind: read, validate, load; the shipped catalog.

Inputs: YAML files or directories of them (a directory expands to the ``*.yaml``/``*.yml``
files in it and in its subdirectories, sorted by path). A document with ``kind: campaign`` is
a campaign, ``kind: journey`` a journey, ``kind: priority`` the priority policy,
``kind: currency_rates`` the currency rate table, one without ``kind`` a segment (or a
``segments:`` list); any other ``kind`` is an error. Outputs: a
``DefinitionSet`` and every ``DefinitionError`` found (never raised for bad content by
``validate_files``), or the set alone (``load_files``, which raises ``InvalidDefinitions``),
and what ``nudgeflow defs validate`` prints. State: none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udfs.campaigns.compiler import CampaignCompiler
from udfs.campaigns.grammar import Campaign, PriorityPolicy
from udfs.campaigns.updates import campaign_to_update, policy_to_update
from udfs.currency.rates import CurrencyRates, compile_rates, rates_to_update
from udfs.definitions.diagnostics import (
    DefinitionError,
    InvalidDefinitions,
    format_errors,
    suggest,
)
from udfs.definitions.envelope import (
    CAMPAIGN_KIND,
    DELETE,
    JOURNEY_KIND,
    POLICY_KIND,
    RATES_KIND,
    ROI_KIND,
    SEGMENT_KIND,
)
from udfs.definitions.yaml_source import decode_utf8, read_yaml
from udfs.journeys.compiler import JourneyCompiler
from udfs.journeys.grammar import Journey
from udfs.journeys.updates import journey_to_update
from udfs.segments.compiler import validate_documents
from udfs.segments.conditions import Segment
from udfs.segments.updates import segment_to_update

_CATALOG = Path(__file__).resolve().parent
#: Where the shipped segment catalog lives (one YAML file per segment).
SEGMENT_CATALOG_DIR = _CATALOG / "segments"
#: Where the shipped campaigns live (one YAML file per campaign).
CAMPAIGN_CATALOG_DIR = _CATALOG / "campaigns"
#: Where the shipped journeys live (one YAML file per journey). Opt-in: the job's default
#: catalog (``load_catalog``, ``catalog_files``) leaves them out, since running them changes
#: what every deployment sends; ``defs validate udfs/catalog/`` checks them with the rest.
JOURNEY_CATALOG_DIR = _CATALOG / "journeys"
#: the priority policy shipped with the catalog (weights, tiers, caps, quiet hours)
POLICY_FILE = _CATALOG / "priority-policy.yaml"
#: the currency rate table shipped with the catalog (units per US dollar)
RATES_FILE = _CATALOG / "currency-rates.yaml"
#: the ``kind`` values a document may have (a segment document has no ``kind``)
DOCUMENT_KINDS = ("campaign", "journey", "priority", "currency_rates")
#: each DefinitionKind as messages name it
KIND_WORDS = {SEGMENT_KIND: "segment", CAMPAIGN_KIND: "campaign", JOURNEY_KIND: "journey",
              POLICY_KIND: "priority policy", RATES_KIND: "currency rate table",
              ROI_KIND: "measured ROI"}


@dataclass
class DefinitionSet:
    """Definitions of every kind, as read from files."""

    segments: list[Segment] = field(default_factory=list)
    campaigns: list[Campaign] = field(default_factory=list)
    journeys: list[Journey] = field(default_factory=list)
    policies: list[PriorityPolicy] = field(default_factory=list)
    rates: list[CurrencyRates] = field(default_factory=list)

    def updates(self, published_at_ms: int = 0, published_by: str | None = "file"
                ) -> list[dict[str, Any]]:
        """All of them as UPSERT DefinitionUpdates, in the order of ``all``."""
        return [
            *(segment_to_update(s, published_at_ms, published_by) for s in self.segments),
            *(campaign_to_update(c, published_at_ms, published_by) for c in self.campaigns),
            *(journey_to_update(j, published_at_ms, published_by) for j in self.journeys),
            *(policy_to_update(p, published_at_ms, published_by) for p in self.policies),
            *(rates_to_update(r, published_at_ms, published_by) for r in self.rates),
        ]

    def all(self) -> list[Any]:
        """Every definition: segments, campaigns, journeys, the policy, then the rate table."""
        return [*self.segments, *self.campaigns, *self.journeys, *self.policies, *self.rates]

    def kinds(self) -> list[tuple[str, Any]]:
        """Every definition with its DefinitionKind symbol, in the order of ``all``."""
        return [*((SEGMENT_KIND, d) for d in self.segments),
                *((CAMPAIGN_KIND, d) for d in self.campaigns),
                *((JOURNEY_KIND, d) for d in self.journeys),
                *((POLICY_KIND, d) for d in self.policies),
                *((RATES_KIND, d) for d in self.rates)]


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            # every level below too, in path order: teams keep catalogs in folders
            out.extend(sorted(p for p in path.rglob("*")
                              if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            out.append(path)
    return out


def _kind_of(data: Any) -> str:
    """The document's kind: a ``DOCUMENT_KINDS`` word, ``segment`` (no kind) or ``unknown``."""
    if not isinstance(data, dict) or "kind" not in data:
        return "segment"
    kind = data["kind"]
    return kind if kind in DOCUMENT_KINDS else "unknown"


def _unknown_kind(file: str, data: dict[str, Any], lines: dict[str, int]) -> DefinitionError:
    kind = data["kind"]
    hint = suggest(kind, DOCUMENT_KINDS) if isinstance(kind, str) else ""
    return DefinitionError(file, "kind", f"unknown kind {kind!r}: allowed: "
                           f"{', '.join(DOCUMENT_KINDS)}, or no kind for a segment{hint}",
                           lines.get("kind"))


def validate_files(paths: Iterable[str | Path], known_segments: Iterable[str] = (),
                   check_references: bool = True
                   ) -> tuple[DefinitionSet, list[DefinitionError]]:
    """Read and validate definition files of every kind (directories expand recursively).

    Never raises for bad content: unreadable files, YAML syntax errors, grammar errors and ids
    duplicated across files all come back as errors. Ids must be unique across all kinds, and
    every segment a campaign or journey names must be defined in these files or in
    ``known_segments`` (unless ``check_references`` is False: a job may get the segment at
    runtime).

    Args:
        paths: YAML files or directories of them.
        known_segments: Ids of segments defined elsewhere that campaigns and journeys may name.
        check_references: Whether to check the segments campaigns and journeys name.

    Returns:
        The valid definitions, and every error found.
    """
    found = DefinitionSet()
    errors: list[DefinitionError] = []
    segment_docs: list[tuple[str, Any]] = []
    segment_lines: dict[str, dict[str, int]] = {}
    first_seen: dict[str, str] = {}
    for path in _expand(paths):
        file = str(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            errors.append(DefinitionError(file, "", f"cannot read file: {exc.strerror or exc}; "
                                          "check the path and its permissions"))
            continue
        text, decode_errors = decode_utf8(raw, file)
        errors.extend(decode_errors)
        if text is None:
            continue
        data, lines, yaml_errors = read_yaml(text, file)
        errors.extend(yaml_errors)
        if data is None and yaml_errors:
            continue
        kind = _kind_of(data)
        if kind == "segment":
            segment_docs.append((file, data))
            segment_lines[file] = lines
            continue
        if kind == "unknown":
            errors.append(_unknown_kind(file, data, lines))
            continue
        if kind == "journey":
            journeys = JourneyCompiler(file, lines)
            journey = journeys.journey_document(data, "", file)
            if journey is not None:
                found.journeys.append(journey)
            errors.extend(journeys.errors)
            continue
        compiler = CampaignCompiler(file, lines)
        if kind == "campaign":
            campaign = compiler.campaign_document(data, "", file)
            if campaign is not None:
                found.campaigns.append(campaign)
        elif kind == "currency_rates":
            rates = compile_rates(compiler, data, "", file)
            if rates is not None:
                found.rates.append(rates)
        else:
            policy = compiler.policy_document(data, "", file)
            if policy is not None:
                found.policies.append(policy)
        errors.extend(compiler.errors)
    found.segments, segment_errors = validate_documents(segment_docs, segment_lines)
    errors.extend(segment_errors)
    first_kind: dict[str, str] = {}
    for kind, definition in found.kinds():
        if definition.id in first_seen and first_kind[definition.id] != kind:
            errors.append(DefinitionError(definition.source, "id", _shared_key(
                definition.id, kind, f"a {KIND_WORDS[first_kind[definition.id]]} in "
                f"{first_seen[definition.id]}")))
        elif definition.id in first_seen:
            errors.append(DefinitionError(definition.source, "id", f"duplicate id "
                          f"{definition.id!r}: already defined in {first_seen[definition.id]}; "
                          "ids must be unique across segments, campaigns, journeys and the "
                          "policy"))
        first_seen.setdefault(definition.id, definition.source)
        first_kind.setdefault(definition.id, kind)
    defined = {s.id for s in found.segments} | set(known_segments)
    naming: list[tuple[str, Campaign | Journey]] = [
        *(("campaign", c) for c in found.campaigns), *(("journey", j) for j in found.journeys)]
    for noun, definition in naming if check_references else ():
        for name in sorted(definition.referenced_segments() - defined):
            errors.append(DefinitionError(definition.source, "", f"{noun} {definition.id} names "
                          f"segment {name!r}, which is not defined{suggest(name, defined)}"))
    if len(found.policies) > 1:
        errors.append(DefinitionError(found.policies[1].source, "", "more than one priority "
                                      "policy given; there is one policy"))
    if len(found.rates) > 1:
        errors.append(DefinitionError(found.rates[1].source, "", "more than one currency rate "
                                      "table given; there is one table"))
    return found, errors


def _shared_key(definition_id: str, kind: str, other: str) -> str:
    return (f"id {definition_id!r} is a {KIND_WORDS[kind]} here and {other}: every kind shares "
            "the control topic's keys (compacted: one definition per id), so one would replace "
            "the other; rename one")


def applied_segments(shipped: Iterable[str], published: Mapping[str, Mapping[str, Any]]
                     ) -> set[str]:
    """The segment ids a running job applies: the shipped ones and the topic's, less deletions.

    Args:
        shipped: Ids of the segments the job loads at start (the shipped catalog).
        published: The latest DefinitionUpdate per id on the control topic
            (``jobs.cli.defs.published_updates``).
    """
    held = set(shipped)
    for definition_id, update in published.items():
        if update["action"] == DELETE:
            held.discard(definition_id)
        elif update["kind"] == SEGMENT_KIND:
            held.add(definition_id)
    return held


def check_against_published(found: DefinitionSet, published: Mapping[str, Mapping[str, Any]],
                            topic: str = "the control topic") -> list[DefinitionError]:
    """What publishing the files would break on the control topic (pure: the topic as data).

    A file's id held on the topic by a definition of another kind is an error (they share the
    compacted key space); so is a version at or below the topic's one unless it is the same
    version with the same content (``defs publish`` would refuse it).

    Args:
        found: The definitions read from the files (``validate_files``).
        published: The latest DefinitionUpdate per id on the control topic
            (``jobs.cli.defs.published_updates``).
        topic: The topic's name, for messages.

    Returns:
        One error per conflict, on the file's ``id`` or ``version``.
    """
    errors: list[DefinitionError] = []
    for (kind, definition), update in zip(found.kinds(), found.updates(), strict=True):
        held = published.get(definition.id)
        if held is None:
            continue
        if held["kind"] != kind and held["action"] != DELETE:
            errors.append(DefinitionError(definition.source, "id", _shared_key(
                definition.id, kind, f"a {KIND_WORDS.get(held['kind'], held['kind'])} "
                f"(v{held['version']}) on {topic}")))
        elif update["version"] < held["version"] or (
                update["version"] == held["version"] and update["checksum"] != held["checksum"]):
            errors.append(DefinitionError(definition.source, "version", f"v{update['version']} "
                          f"cannot be published: v{held['version']} is already on {topic} "
                          f"({held['action']}) with other content; set version to "
                          f"{held['version'] + 1} or higher"))
    return errors


def load_files(paths: Iterable[str | Path], known_segments: Iterable[str] = (),
               check_references: bool = True) -> DefinitionSet:
    """Like ``validate_files`` but raises when anything is wrong.

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    found, errors = validate_files(paths, known_segments, check_references)
    if errors:
        raise InvalidDefinitions(errors)
    return found


def load_catalog() -> DefinitionSet:
    """The shipped catalog: segments, campaigns, the priority policy and the currency rates.

    Not the shipped journeys (``JOURNEY_CATALOG_DIR``): they are opt-in.

    Raises:
        InvalidDefinitions: The catalog does not validate.
    """
    return load_files([SEGMENT_CATALOG_DIR, CAMPAIGN_CATALOG_DIR, POLICY_FILE, RATES_FILE])


def catalog_files(segments_dir: str = "", campaigns_dir: str = "") -> list[Path]:
    """The files a job loads at start: segments, campaigns (given or shipped), the policy, rates.

    A ``campaigns_dir`` holding a ``priority-policy.yaml`` (``currency-rates.yaml``) replaces the
    shipped policy (rate table). The shipped journeys are not among them (opt-in).
    """
    campaigns = Path(campaigns_dir) if campaigns_dir else CAMPAIGN_CATALOG_DIR
    files = [Path(segments_dir) if segments_dir else SEGMENT_CATALOG_DIR, campaigns]
    if not (campaigns / "priority-policy.yaml").exists():
        files.append(POLICY_FILE)
    if not (campaigns / "currency-rates.yaml").exists():
        files.append(RATES_FILE)
    return files


def validate_command(paths: Sequence[str | Path],
                     published: Mapping[str, Mapping[str, Any]] | None = None,
                     topic: str = "the control topic") -> tuple[int, str]:
    """What ``nudgeflow defs validate FILE...`` prints and its exit code (every kind).

    Campaigns and journeys may name the segments of the shipped catalog, and, when
    ``published`` is given, those the control topic holds (less those it deleted); the files'
    ids and versions are then checked against it too (``check_against_published``).

    Args:
        paths: Files or directories given on the command line.
        published: The latest DefinitionUpdate per id on the control topic
            (``--against-topic``), or None to check the files alone.
        topic: The topic's name, for messages.

    Returns:
        (0, a summary) when everything is valid, (1, the errors and a count) when not, (2, a
        hint) when no path is given.
    """
    if not paths:
        return 2, "nothing to validate: give definition YAML files or directories"
    files = _expand(paths)
    catalog = load_catalog()
    known: Iterable[str] = [s.id for s in catalog.segments]
    if published is not None:
        known = applied_segments(known, published)
    found, errors = validate_files(files, known)
    shipped = {d.id: (kind, d) for kind, d in catalog.kinds()}
    for kind, definition in found.kinds():
        # a shipped definition of another kind would share this id's key when both are live
        other = shipped.get(definition.id)
        if other is not None and other[0] != kind and \
                (published is None or published.get(definition.id, {}).get("action") != DELETE):
            errors.append(DefinitionError(definition.source, "id", _shared_key(
                definition.id, kind, f"a shipped {KIND_WORDS[other[0]]} in {other[1].source}")))
    if published is not None:
        errors.extend(check_against_published(found, published, topic))
    if errors:
        return 1, (f"{format_errors(errors)}\n{len(errors)} error(s) in "
                   f"{len({e.file for e in errors})} of {len(files)} file(s)")
    parts = [f"{len(found.segments)} segment(s)"]
    if found.campaigns:
        parts.append(f"{len(found.campaigns)} campaign(s)")
    if found.journeys:
        parts.append(f"{len(found.journeys)} journey(s)")
    if found.policies:
        parts.append("the priority policy")
    if found.rates:
        parts.append("the currency rate table")
    ids = ", ".join(f"{d.id} v{d.version}" for d in found.all())
    return 0, f"ok: {', '.join(parts)} in {len(files)} file(s): {ids}"
