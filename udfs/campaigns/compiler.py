"""Campaign and priority-policy definitions as data: parse, validate, version.

Inputs: YAML documents (files at job start, ``nudgeflow defs validate|publish``) and JSON
bodies of DefinitionUpdate records of kind CAMPAIGN or PRIORITY_WEIGHTS (the control topic at
runtime). Outputs: ``Campaign`` and ``PriorityPolicy`` objects and ``DefinitionError`` items
(file, path in the document, message, line). State: none here; ``CampaignRegistry`` and
``PolicyRegistry`` hold the current definitions by id, versioned exactly like segments (see
``udfs.segments.SegmentRegistry``), and are what the engine rebuilds from broadcast state.

The grammar is documented in ``udfs/CAMPAIGNS.md``; keep the two in step. Files may hold any
kind: a document with ``kind: campaign`` or ``kind: priority`` is one of these, anything else a
segment (``validate_files`` here reads all three).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from udfs import segments as seg
from udfs.segments import DefinitionError, InvalidDefinitions, _Compiler, _describe, _join

CATALOG_DIR = Path(__file__).resolve().parent / "catalog" / "campaigns"
#: the priority policy shipped with the catalog (weights, tiers, caps, quiet hours)
POLICY_FILE = CATALOG_DIR.parent / "priority-policy.yaml"

CAMPAIGN_KIND = "CAMPAIGN"
POLICY_KIND = "PRIORITY_WEIGHTS"
#: the id of the priority policy in force (one policy; a new version replaces it)
POLICY_ID = "priority-policy"

CHANNELS = ("EMAIL", "SMS", "PUSH", "IN_APP", "PAID_SOCIAL")
TIERS = ("P0", "P1", "P2", "P3")
#: ClickEvent fields a payload template may read as {event.<field>}
PAYLOAD_EVENT_FIELDS = ("event_id", "event_type", "product_id", "category", "price", "quantity",
                        "currency", "order_id", "page_url", "search_query", "source")
PAYLOAD_METADATA_FIELDS = ("country", "time_zone", "plan", "lifetime_value")
ON_CONFLICT = ("defer", "suppress")
QUIET_HOURS_MODES = ("respect", "bypass")
FACTORS = ("urgency", "expected_roi", "audience", "brand_significance")

CAMPAIGN_KEYS = ("kind", "id", "version", "description", "enabled", "trigger", "channels",
                 "template", "payload", "valid_from", "valid_until", "expires_after",
                 "priority", "eligibility", "frequency", "quiet_hours", "on_conflict")
_REQUIRED_CAMPAIGN_KEYS = ("kind", "id", "version", "description", "trigger", "channels",
                           "template", "priority")
POLICY_KEYS = ("kind", "id", "version", "description", "weights", "roi_scale",
               "audience_scale", "tiers", "decision_window", "min_interval", "channel_caps",
               "quiet_hours", "default_time_zone")
_REQUIRED_POLICY_KEYS = ("kind", "id", "version", "description", "weights", "tiers",
                         "channel_caps", "quiet_hours")
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\.([a-z_]+)\}")
_CLOCK_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


# --- the definitions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cap:
    """At most ``per_day`` and ``per_week`` sends (None: unlimited), in the user's time zone."""

    per_day: int | None = None
    per_week: int | None = None


@dataclass(frozen=True)
class CampaignTrigger:
    """What makes a campaign fire: exactly one of the three is set.

    Attributes:
        segment_enter: The user ENTERs this segment.
        event: A click matching this filter (type and ``where`` tests, as in segments).
        churn_crosses: The churn score moves from below this value to at least it.
    """

    segment_enter: str | None = None
    event: seg.EventFilter | None = None
    churn_crosses: float | None = None

    def describe(self) -> str:
        """One line for explanations."""
        if self.segment_enter is not None:
            return f"entered segment {self.segment_enter}"
        if self.event is not None:
            return f"event {self.event.label}"
        return f"churn score crossed {self.churn_crosses}"


@dataclass(frozen=True)
class Campaign:
    """A validated campaign definition.

    Attributes:
        id: Unique id across all definitions; the DefinitionUpdate ``definition_id``.
        version: Strictly increasing per id.
        description: For people.
        enabled: A disabled campaign fires nothing; its deferred triggers are suppressed.
        trigger: What makes it fire.
        channels: Channels in order of preference; the first the user opted in to (and whose
            cap allows) is used.
        template: The message template id the sender renders.
        payload: Template variables: literal text with ``{event.x}``, ``{metadata.x}`` and
            ``{feature.x}`` placeholders, filled in from the causing event and the user.
        valid_from_ms, valid_until_ms: The cause's event time must fall in [from, until).
        expires_after_ms: A trigger is worthless this long after its cause (``expires_at``).
        urgency, expected_roi, brand_significance: Matrix inputs (0..1, USD per send, 0..1).
        audience_segment: The segment whose live size is the audience factor (default: the
            trigger's segment), or None (factor 0).
        require_segments, exclude_segments: Membership the user must have / must not have.
        cap: This campaign's own frequency cap per user.
        reeligible_after_ms: After a trigger, the same campaign is suppressed this long.
        bypass_quiet_hours: Sent during quiet hours when its tier is P0.
        defer_on_conflict: Losing an arbitration defers it (True) or suppresses it.
        document: The document as written (published as the DefinitionUpdate body).
        source: Where it came from.
    """

    id: str
    version: int
    description: str
    enabled: bool
    trigger: CampaignTrigger
    channels: tuple[str, ...]
    template: str
    payload: tuple[tuple[str, str], ...]
    valid_from_ms: int | None
    valid_until_ms: int | None
    expires_after_ms: int | None
    urgency: float
    expected_roi: float
    brand_significance: float
    audience_segment: str | None
    require_segments: tuple[str, ...] = ()
    exclude_segments: tuple[str, ...] = ()
    cap: Cap = Cap()
    reeligible_after_ms: int = 0
    bypass_quiet_hours: bool = False
    defer_on_conflict: bool = True
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)
    source: str = field(default="", compare=False)

    def referenced_segments(self) -> set[str]:
        """Every segment id this campaign names."""
        names = {*self.require_segments, *self.exclude_segments}
        for name in (self.trigger.segment_enter, self.audience_segment):
            if name is not None:
                names.add(name)
        return names


@dataclass(frozen=True)
class PriorityPolicy:
    """Weights of the prioritisation matrix, tier thresholds and the per-user contact rules.

    Attributes:
        weights: Factor name (``FACTORS``) -> weight; the score is the weighted sum of factors
            in [0, 1] divided by the sum of the weights, so it is in [0, 1] too.
        roi_scale: Expected ROI (USD per send) at which the ROI factor reaches 1.
        audience_scale: Segment size at which the audience factor reaches 1 (log scale).
        tiers: Minimum score of P0, P1 and P2 (descending); anything lower is P3.
        decision_window_ms: Candidates of one user compete for this long in event time before
            the best is sent (0: decide at once, lowest latency). P0 never waits.
        min_interval_ms: At least this long between two triggers to one user.
        channel_caps: Per channel, the user's cap across all campaigns.
        quiet_start, quiet_end: Quiet hours as minutes after local midnight; the window wraps
            midnight when start > end. Equal values mean no quiet hours.
        default_time_zone: Used for users without metadata or with an unknown zone.
    """

    id: str
    version: int
    description: str
    weights: Mapping[str, float]
    roi_scale: float
    audience_scale: int
    tiers: tuple[float, float, float]
    decision_window_ms: int
    min_interval_ms: int
    channel_caps: Mapping[str, Cap]
    quiet_start: int
    quiet_end: int
    default_time_zone: str
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)
    source: str = field(default="", compare=False)


# --- compilation -------------------------------------------------------------------------------


class _CampaignCompiler(_Compiler):
    """Validates campaign and policy documents; collects every error."""

    def _identity(self, doc: Mapping[str, Any], path: str) -> bool:
        before = len(self.errors)
        def_id = doc.get("id")
        if "id" in doc and not (isinstance(def_id, str) and seg._ID_RE.match(def_id)
                                and len(def_id) <= seg._ID_MAX_LEN):
            self.error(_join(path, "id"), f"bad id {def_id!r}: use kebab-case or snake_case "
                       "(lower-case letters, digits, '-' or '_', starting with a letter), e.g. "
                       "cart-abandonment-email")
        version = doc.get("version")
        if "version" in doc and (isinstance(version, bool) or not isinstance(version, int)
                                 or not 1 <= version <= seg._MAX_VERSION):
            self.error(_join(path, "version"), f"bad version {version!r}: expected a whole "
                       f"number from 1 to {seg._MAX_VERSION}; raise it on every change")
        description = doc.get("description")
        if "description" in doc and not (isinstance(description, str) and description.strip()):
            self.error(_join(path, "description"), "description must be a non-empty string, "
                       f"got {_describe(description)}")
        return len(self.errors) == before

    def fraction(self, data: Any, path: str, what: str) -> float | None:
        value = self.number(data, path, what)
        if value is not None and not 0 <= value <= 1:
            self.error(path, f"{what} must be between 0 and 1, got {value}")
            return None
        return value

    def whole(self, data: Any, path: str, what: str, minimum: int = 0) -> int | None:
        if isinstance(data, bool) or not isinstance(data, int) or data < minimum:
            self.error(path, f"{what} must be a whole number >= {minimum}, got {_describe(data)}")
            return None
        return data

    def instant(self, data: Any, path: str) -> int | None:
        """An ISO-8601 instant with a UTC offset, as epoch ms."""
        if isinstance(data, str):
            try:
                parsed = datetime.fromisoformat(data.replace("Z", "+00:00"))
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return int(parsed.timestamp() * 1000)
        self.error(path, f"bad instant {data!r}: expected ISO-8601 with a UTC offset, e.g. "
                         "2026-11-27T00:00:00Z or 2026-11-27T09:00:00+01:00")
        return None

    def cap(self, data: Any, path: str) -> Cap | None:
        spec = self.mapping(data, path, "a cap", ("per_day", "per_week"), ())
        if spec is None:
            return None
        per_day = self.whole(spec["per_day"], _join(path, "per_day"), "per_day", 1) \
            if "per_day" in spec else None
        per_week = self.whole(spec["per_week"], _join(path, "per_week"), "per_week", 1) \
            if "per_week" in spec else None
        if per_day is not None and per_week is not None and per_week < per_day:
            self.error(path, f"per_week ({per_week}) is less than per_day ({per_day})")
        return Cap(per_day, per_week)

    def segment_ids(self, data: Any, path: str) -> tuple[str, ...]:
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            self.error(path, f"expected a list of segment ids, got {_describe(data)}")
            return ()
        return tuple(data)

    # campaigns

    def campaign_document(self, data: Any, path: str, source: str) -> Campaign | None:
        doc = self.mapping(data, path, "a campaign", CAMPAIGN_KEYS, _REQUIRED_CAMPAIGN_KEYS)
        if doc is None:
            return None
        before = len(self.errors)
        self._identity(doc, path)
        enabled = doc.get("enabled", True)
        if not isinstance(enabled, bool):
            self.error(_join(path, "enabled"), f"enabled must be true or false, got "
                       f"{_describe(enabled)}")
        trigger = self._trigger(doc["trigger"], _join(path, "trigger")) \
            if "trigger" in doc else None
        channels = self._channels(doc.get("channels"), _join(path, "channels")) \
            if "channels" in doc else ()
        template = doc.get("template")
        if "template" in doc and not (isinstance(template, str) and template.strip()):
            self.error(_join(path, "template"), f"template must be a non-empty string, got "
                       f"{_describe(template)}")
        payload = self._payload(doc.get("payload", {}), _join(path, "payload"))
        valid_from = self.instant(doc["valid_from"], _join(path, "valid_from")) \
            if "valid_from" in doc else None
        valid_until = self.instant(doc["valid_until"], _join(path, "valid_until")) \
            if "valid_until" in doc else None
        if valid_from is not None and valid_until is not None and valid_until <= valid_from:
            self.error(_join(path, "valid_until"), "valid_until must be after valid_from")
        expires_after = self.duration(doc["expires_after"], _join(path, "expires_after")) \
            if "expires_after" in doc else None
        priority = self._priority(doc.get("priority"), _join(path, "priority")) \
            if "priority" in doc else None
        eligibility = self.mapping(doc.get("eligibility", {}), _join(path, "eligibility"),
                                   "eligibility", ("require_segments", "exclude_segments"), ())
        require: tuple[str, ...] = ()
        exclude: tuple[str, ...] = ()
        if eligibility:
            if "require_segments" in eligibility:
                require = self.segment_ids(eligibility["require_segments"],
                                           _join(path, "eligibility.require_segments"))
            if "exclude_segments" in eligibility:
                exclude = self.segment_ids(eligibility["exclude_segments"],
                                           _join(path, "eligibility.exclude_segments"))
        frequency = self.mapping(doc.get("frequency", {}), _join(path, "frequency"),
                                 "frequency", ("cap", "reeligible_after"), ())
        cap = Cap()
        reeligible = 0
        if frequency:
            if "cap" in frequency:
                cap = self.cap(frequency["cap"], _join(path, "frequency.cap")) or Cap()
            if "reeligible_after" in frequency:
                reeligible = self.duration(frequency["reeligible_after"],
                                           _join(path, "frequency.reeligible_after")) or 0
        quiet = doc.get("quiet_hours", "respect")
        if quiet not in QUIET_HOURS_MODES:
            self.error(_join(path, "quiet_hours"), f"quiet_hours must be one of "
                       f"{', '.join(QUIET_HOURS_MODES)}, got {_describe(quiet)} (bypass "
                       "applies only to P0 triggers)")
        on_conflict = doc.get("on_conflict", "defer")
        if on_conflict not in ON_CONFLICT:
            self.error(_join(path, "on_conflict"), f"on_conflict must be one of "
                       f"{', '.join(ON_CONFLICT)}, got {_describe(on_conflict)}")
        if trigger is not None and priority is not None and priority[3] is None:
            priority = (*priority[:3], trigger.segment_enter)
        if len(self.errors) > before or trigger is None or priority is None or not channels:
            return None
        return Campaign(
            id=str(doc["id"]), version=int(doc["version"]), description=str(doc["description"]),
            enabled=bool(enabled), trigger=trigger, channels=channels, template=str(template),
            payload=payload, valid_from_ms=valid_from, valid_until_ms=valid_until,
            expires_after_ms=expires_after, urgency=priority[0], expected_roi=priority[1],
            brand_significance=priority[2], audience_segment=priority[3],
            require_segments=require, exclude_segments=exclude, cap=cap,
            reeligible_after_ms=reeligible, bypass_quiet_hours=quiet == "bypass",
            defer_on_conflict=on_conflict == "defer",
            document=json.loads(json.dumps(doc)), source=source,
        )

    def _trigger(self, data: Any, path: str) -> CampaignTrigger | None:
        kinds = ("segment_enter", "event", "churn_score")
        spec = self.mapping(data, path, "a trigger", kinds, ())
        if spec is None:
            return None
        if len(spec) != 1:
            self.error(path, f"a trigger needs exactly one of {', '.join(kinds)}, got "
                             f"{len(spec)}")
            return None
        kind, body = next(iter(spec.items()))
        where = _join(path, str(kind))
        if kind == "segment_enter":
            if not isinstance(body, str) or not body:
                self.error(where, f"segment_enter needs a segment id, got {_describe(body)}")
                return None
            return CampaignTrigger(segment_enter=body)
        if kind == "event":
            match = self._event_filter(body, where)
            return None if match is None else CampaignTrigger(event=match)
        if kind == "churn_score":
            churn = self.mapping(body, where, "churn_score", ("crosses_above",),
                                 ("crosses_above",))
            if churn is None or "crosses_above" not in churn:
                return None
            value = self.fraction(churn["crosses_above"], _join(where, "crosses_above"),
                                  "crosses_above")
            return None if value is None else CampaignTrigger(churn_crosses=value)
        return None

    def _channels(self, data: Any, path: str) -> tuple[str, ...]:
        items = data if isinstance(data, list) else None
        if not items:
            self.error(path, f"channels must be a non-empty list of {', '.join(CHANNELS)}, got "
                             f"{_describe(data)}")
            return ()
        ok = True
        for i, item in enumerate(items):
            if item not in CHANNELS:
                hint = seg._suggest(item, CHANNELS) if isinstance(item, str) else ""
                self.error(f"{path}[{i}]", f"unknown channel {item!r}: allowed: "
                                           f"{', '.join(CHANNELS)}{hint}")
                ok = False
        if ok and len(set(items)) != len(items):
            self.error(path, "a channel is listed twice")
            ok = False
        return tuple(items) if ok else ()

    def _payload(self, data: Any, path: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(data, dict):
            self.error(path, f"payload must be a mapping of template variables, got "
                             f"{_describe(data)}")
            return ()
        features, _ = self.features()
        out = []
        for name, text in data.items():
            where = _join(path, str(name))
            if not isinstance(text, str | int | float) or isinstance(text, bool):
                self.error(where, f"a payload value is text (may hold {{event.x}}, "
                                  f"{{metadata.x}}, {{feature.x}}), got {_describe(text)}")
                continue
            text = str(text)
            for source, attr in _PLACEHOLDER_RE.findall(text):
                known = {"event": PAYLOAD_EVENT_FIELDS, "metadata": PAYLOAD_METADATA_FIELDS,
                         "feature": tuple(sorted(features))}.get(source)
                if known is None:
                    self.error(where, f"unknown placeholder source {source!r} in {text!r}: "
                                      "use event, metadata or feature")
                elif attr not in known:
                    self.error(where, f"unknown {source} field {attr!r} in {text!r}"
                                      f"{seg._suggest(attr, known)}")
            out.append((str(name), text))
        return tuple(out)

    def _priority(self, data: Any, path: str
                  ) -> tuple[float, float, float, str | None] | None:
        keys = ("urgency", "expected_roi", "brand_significance", "audience")
        spec = self.mapping(data, path, "priority", keys, keys[:3])
        if spec is None or any(k not in spec for k in keys[:3]):
            return None
        urgency = self.fraction(spec["urgency"], _join(path, "urgency"), "urgency")
        roi = self.number(spec["expected_roi"], _join(path, "expected_roi"), "expected_roi")
        if roi is not None and roi < 0:
            self.error(_join(path, "expected_roi"), "expected_roi (USD per send) must be >= 0")
            roi = None
        brand = self.fraction(spec["brand_significance"], _join(path, "brand_significance"),
                              "brand_significance")
        audience = spec.get("audience")
        if audience is not None and not isinstance(audience, str):
            self.error(_join(path, "audience"), f"audience must be a segment id, got "
                                                f"{_describe(audience)}")
            return None
        if urgency is None or roi is None or brand is None:
            return None
        return (urgency, float(roi), brand, audience)

    # the priority policy

    def policy_document(self, data: Any, path: str, source: str) -> PriorityPolicy | None:
        doc = self.mapping(data, path, "a priority policy", POLICY_KEYS, _REQUIRED_POLICY_KEYS)
        if doc is None:
            return None
        before = len(self.errors)
        self._identity(doc, path)
        if doc.get("id") != POLICY_ID:
            self.error(_join(path, "id"), f"the priority policy's id must be {POLICY_ID!r} "
                                          "(there is one policy; publish a new version)")
        weights: dict[str, float] = {}
        spec = self.mapping(doc.get("weights"), _join(path, "weights"), "weights", FACTORS,
                            FACTORS)
        if spec:
            for name in FACTORS:
                if name in spec:
                    value = self.number(spec[name], _join(path, f"weights.{name}"), name)
                    if value is not None and value < 0:
                        self.error(_join(path, f"weights.{name}"), "a weight must be >= 0")
                    elif value is not None:
                        weights[name] = float(value)
            if len(weights) == len(FACTORS) and sum(weights.values()) <= 0:
                self.error(_join(path, "weights"), "at least one weight must be above 0")
        roi_scale = self.number(doc.get("roi_scale", 100), _join(path, "roi_scale"),
                                "roi_scale")
        audience_scale = self.whole(doc.get("audience_scale", 100_000),
                                    _join(path, "audience_scale"), "audience_scale", 2)
        tiers = self._tiers(doc.get("tiers"), _join(path, "tiers"))
        window = self._optional_duration(doc, "decision_window", path)
        interval = self._optional_duration(doc, "min_interval", path)
        caps: dict[str, Cap] = {}
        caps_spec = self.mapping(doc.get("channel_caps"), _join(path, "channel_caps"),
                                 "channel_caps", CHANNELS, ())
        for channel, body in (caps_spec or {}).items():
            if channel in CHANNELS:
                cap = self.cap(body, _join(path, f"channel_caps.{channel}"))
                if cap is not None:
                    caps[channel] = cap
        quiet = self.mapping(doc.get("quiet_hours"), _join(path, "quiet_hours"), "quiet_hours",
                             ("start", "end"), ("start", "end"))
        start = end = None
        if quiet and "start" in quiet and "end" in quiet:
            start = self._clock(quiet["start"], _join(path, "quiet_hours.start"))
            end = self._clock(quiet["end"], _join(path, "quiet_hours.end"))
        zone = doc.get("default_time_zone", "UTC")
        if not _known_zone(zone):
            self.error(_join(path, "default_time_zone"), f"unknown time zone {zone!r}: use an "
                       "IANA name such as UTC or Europe/Berlin")
        if len(self.errors) > before or tiers is None or start is None or end is None \
                or roi_scale is None or audience_scale is None or roi_scale <= 0:
            if roi_scale is not None and roi_scale <= 0:
                self.error(_join(path, "roi_scale"), "roi_scale must be above 0")
            return None
        return PriorityPolicy(
            id=str(doc["id"]), version=int(doc["version"]), description=str(doc["description"]),
            weights=weights, roi_scale=float(roi_scale), audience_scale=audience_scale,
            tiers=tiers, decision_window_ms=window, min_interval_ms=interval, channel_caps=caps,
            quiet_start=start, quiet_end=end, default_time_zone=str(zone),
            document=json.loads(json.dumps(doc)), source=source,
        )

    def _optional_duration(self, doc: Mapping[str, Any], key: str, path: str) -> int:
        value = doc.get(key)
        if value is None or value in ("0", "0s", 0):
            return 0
        return self.duration(value, _join(path, key)) or 0

    def _tiers(self, data: Any, path: str) -> tuple[float, float, float] | None:
        spec = self.mapping(data, path, "tiers", TIERS[:3], TIERS[:3])
        if spec is None or any(t not in spec for t in TIERS[:3]):
            return None
        values = [self.fraction(spec[t], _join(path, t), f"the {t} threshold")
                  for t in TIERS[:3]]
        if any(v is None for v in values):
            return None
        p0, p1, p2 = (float(v) for v in values if v is not None)
        if not p0 > p1 > p2:
            self.error(path, f"thresholds must descend: P0 ({p0}) > P1 ({p1}) > P2 ({p2})")
            return None
        return (p0, p1, p2)

    def _clock(self, data: Any, path: str) -> int | None:
        match = _CLOCK_RE.match(data) if isinstance(data, str) else None
        if match is None:
            self.error(path, f"bad time of day {data!r}: expected HH:MM, e.g. \"21:00\"")
            return None
        return int(match.group(1)) * 60 + int(match.group(2))


def _known_zone(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# --- parsing entry points ----------------------------------------------------------------------


def _compile(document: Any, file: str, build: str,
             update: Mapping[str, Any] | None = None) -> Any:
    """Validate and compile one document with ``_CampaignCompiler.<build>``.

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    compiler = _CampaignCompiler(file)
    definition = getattr(compiler, build)(document, "", file)
    if definition is not None and update is not None:
        seg.check_identity(compiler, definition, update)
    if compiler.errors or definition is None:
        raise InvalidDefinitions(compiler.errors or [DefinitionError(file, "", "invalid")])
    return definition


def parse_campaign(document: Any, file: str = "<document>") -> Campaign:
    """Validate and compile one campaign document.

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    return _compile(document, file, "campaign_document")


def parse_policy(document: Any, file: str = "<document>") -> PriorityPolicy:
    """Validate and compile the priority policy document.

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    return _compile(document, file, "policy_document")


def campaign_to_update(campaign: Campaign, published_at_ms: int,
                       published_by: str | None = None) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate publishing a campaign."""
    return seg.definition_to_update(campaign, CAMPAIGN_KIND, published_at_ms, published_by)


def policy_to_update(policy: PriorityPolicy, published_at_ms: int,
                     published_by: str | None = None) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate publishing the priority policy."""
    return seg.definition_to_update(policy, POLICY_KIND, published_at_ms, published_by)


def _from_update(update: Mapping[str, Any], kind: str, build: str) -> Any:
    file, document = seg.update_document(update, kind)
    return _compile(document, file, build, update)


def update_to_campaign(update: Mapping[str, Any]) -> Campaign:
    """The campaign an UPSERT DefinitionUpdate carries, validated.

    Raises:
        DefinitionError: bad envelope or body; the file of each error names the definition.
    """
    return _from_update(update, CAMPAIGN_KIND, "campaign_document")


def update_to_policy(update: Mapping[str, Any]) -> PriorityPolicy:
    """The priority policy an UPSERT DefinitionUpdate carries, validated.

    Raises:
        DefinitionError: bad envelope or body; the file of each error names the definition.
    """
    return _from_update(update, POLICY_KIND, "policy_document")


class CampaignRegistry(seg.SegmentRegistry):
    """The current campaigns by id, versioned like segments (``segments()`` = campaigns)."""

    kind = CAMPAIGN_KIND
    noun = "campaign"

    @staticmethod
    def _from_update(update: Mapping[str, Any]) -> Any:
        return update_to_campaign(update)


class PolicyRegistry(seg.SegmentRegistry):
    """The priority policy in force (one id, ``POLICY_ID``), versioned like segments."""

    kind = POLICY_KIND
    noun = "priority policy"

    @staticmethod
    def _from_update(update: Mapping[str, Any]) -> Any:
        return update_to_policy(update)

    def policy(self) -> PriorityPolicy | None:
        """The policy in force, or None (no campaign is sent without one)."""
        policy = self.get(POLICY_ID)
        return policy if isinstance(policy, PriorityPolicy) else None


# --- files of every kind -----------------------------------------------------------------------


@dataclass
class DefinitionSet:
    """Definitions of every kind, as read from files."""

    segments: list[seg.Segment] = field(default_factory=list)
    campaigns: list[Campaign] = field(default_factory=list)
    policies: list[PriorityPolicy] = field(default_factory=list)

    def updates(self, published_at_ms: int = 0, published_by: str | None = "file"
                ) -> list[dict[str, Any]]:
        """All of them as UPSERT DefinitionUpdates (segments, campaigns, then the policy)."""
        return [
            *(seg.segment_to_update(s, published_at_ms, published_by) for s in self.segments),
            *(campaign_to_update(c, published_at_ms, published_by) for c in self.campaigns),
            *(policy_to_update(p, published_at_ms, published_by) for p in self.policies),
        ]

    def all(self) -> list[Any]:
        """Every definition: segments, campaigns, then the policy."""
        return [*self.segments, *self.campaigns, *self.policies]


def _kind_of(data: Any) -> str:
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if kind in ("campaign", "priority") else "segment"


def validate_files(paths: Iterable[str | Path], known_segments: Iterable[str] = (),
                   check_references: bool = True
                   ) -> tuple[DefinitionSet, list[DefinitionError]]:
    """Read and validate definition files of every kind (directories expand to *.yaml).

    A document with ``kind: campaign`` is a campaign, ``kind: priority`` the priority policy,
    anything else a segment (or a ``segments:`` list). Ids must be unique across all kinds, and
    every segment a campaign names must be defined in these files or in ``known_segments``
    (unless ``check_references`` is False: a job may get the segment at runtime).

    Returns:
        The valid definitions, and every error found (never raises for bad content).
    """
    found = DefinitionSet()
    errors: list[DefinitionError] = []
    segment_docs: list[tuple[str, Any]] = []
    segment_lines: dict[str, dict[str, int]] = {}
    first_seen: dict[str, str] = {}
    for path in seg._expand(paths):
        file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(DefinitionError(file, "", f"cannot read file: {exc}"))
            continue
        data, lines, yaml_errors = seg._read_yaml(text, file)
        errors.extend(yaml_errors)
        if data is None and yaml_errors:
            continue
        kind = _kind_of(data)
        if kind == "segment":
            segment_docs.append((file, data))
            segment_lines[file] = lines
            continue
        compiler = _CampaignCompiler(file, lines)
        if kind == "campaign":
            campaign = compiler.campaign_document(data, "", file)
            if campaign is not None:
                found.campaigns.append(campaign)
        else:
            policy = compiler.policy_document(data, "", file)
            if policy is not None:
                found.policies.append(policy)
        errors.extend(compiler.errors)
    found.segments, segment_errors = seg.validate_documents(segment_docs, segment_lines)
    errors.extend(segment_errors)
    for definition in found.all():
        if definition.id in first_seen:
            errors.append(DefinitionError(definition.source, "id", f"duplicate id "
                          f"{definition.id!r}: already defined in {first_seen[definition.id]}; "
                          "ids must be unique across segments, campaigns and the policy"))
        first_seen.setdefault(definition.id, definition.source)
    defined = {s.id for s in found.segments} | set(known_segments)
    for campaign in found.campaigns if check_references else ():
        for name in sorted(campaign.referenced_segments() - defined):
            errors.append(DefinitionError(campaign.source, "", f"campaign {campaign.id} names "
                          f"segment {name!r}, which is not defined{seg._suggest(name, defined)}"))
    if len(found.policies) > 1:
        errors.append(DefinitionError(found.policies[1].source, "", "more than one priority "
                                      "policy given; there is one policy"))
    return found, errors


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
    """The shipped catalog: segments, campaigns and the priority policy.

    Raises:
        InvalidDefinitions: The catalog does not validate.
    """
    return load_files([seg.CATALOG_DIR, CATALOG_DIR, POLICY_FILE])


def catalog_files(segments_dir: str = "", campaigns_dir: str = "") -> list[Path]:
    """The files a job loads at start: segments, campaigns (given or shipped), the policy.

    A ``campaigns_dir`` holding a ``priority-policy.yaml`` replaces the shipped policy.
    """
    campaigns = Path(campaigns_dir) if campaigns_dir else CATALOG_DIR
    policy = campaigns / "priority-policy.yaml"
    files = [Path(segments_dir) if segments_dir else seg.CATALOG_DIR, campaigns]
    if not policy.exists():
        files.append(POLICY_FILE)
    return files


def validate_command(paths: Sequence[str | Path]) -> tuple[int, str]:
    """What ``nudgeflow defs validate FILE...`` prints and its exit code (every kind)."""
    if not paths:
        return 2, "nothing to validate: give definition YAML files or directories"
    files = seg._expand(paths)
    known = [s.id for s in seg.load_catalog()]
    found, errors = validate_files(files, known)
    if errors:
        return 1, (f"{seg.format_errors(errors)}\n{len(errors)} error(s) in "
                   f"{len({e.file for e in errors})} of {len(files)} file(s)")
    parts = [f"{len(found.segments)} segment(s)", f"{len(found.campaigns)} campaign(s)"]
    if found.policies:
        parts.append("the priority policy")
    ids = ", ".join(f"{d.id} v{d.version}" for d in found.all())
    return 0, f"ok: {', '.join(parts)} in {len(files)} file(s): {ids}"


class Registries:
    """The definitions in force, one registry per kind; what the engine keeps and applies.

    ``apply`` routes a DefinitionUpdate to the registry of its kind; a kind nudgeflow does not
    run yet (JOURNEY) is IGNORED.
    """

    def __init__(self) -> None:
        self.segments = seg.SegmentRegistry()
        self.campaigns = CampaignRegistry()
        self.policies = PolicyRegistry()
        self._derived: tuple[bool, Mapping[str, int]] | None = None

    @classmethod
    def from_updates(cls, updates: Iterable[Mapping[str, Any]]) -> Registries:
        """Registries with the updates applied in order (bad ones are skipped)."""
        registries = cls()
        for update in updates:
            registries.apply(update)
        return registries

    def apply(self, update: Mapping[str, Any]) -> seg.RegistryChange:
        """Apply one update to the registry of its kind (see ``SegmentRegistry.apply``)."""
        registry = {seg.SEGMENT_KIND: self.segments, CAMPAIGN_KIND: self.campaigns,
                    POLICY_KIND: self.policies}.get(str(update.get("kind")), self.segments)
        change = registry.apply(update)
        if change.changed:
            self._derived = None
        return change

    def updates(self) -> list[dict[str, Any]]:
        """Every accepted update (tombstones included), by kind then id."""
        return [*self.segments.updates(), *self.campaigns.updates(), *self.policies.updates()]

    def campaign_map(self) -> Mapping[str, Campaign]:
        """The campaigns in force by id."""
        return self.campaigns.by_id()  # type: ignore[return-value]

    def uses_churn(self) -> bool:
        """Whether a campaign fires on a churn-score crossing (its state is then read per step)."""
        return self._derive()[0]

    def segment_versions(self) -> Mapping[str, int]:
        """The version of every segment in force, by id."""
        return self._derive()[1]

    def _derive(self) -> tuple[bool, Mapping[str, int]]:
        # read per engine step, changed only by a definition update: computed once per change
        if self._derived is None:
            self._derived = (
                any(c.trigger.churn_crosses is not None for c in self.campaign_map().values()),
                MappingProxyType({s.id: s.version for s in self.segments.segments()}),
            )
        return self._derived
