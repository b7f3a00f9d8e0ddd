"""The campaign and priority-policy compiler: validate documents, build definitions.

Inputs: campaign documents (``kind: campaign``) and the priority policy (``kind: priority``),
as YAML files (``udfs.catalog.files``) or JSON bodies of DefinitionUpdate records
(``udfs.campaigns.updates``) load them. Outputs: ``Campaign`` and ``PriorityPolicy`` objects and
``DefinitionError`` items (file, path in the document, message, line). State: none.

The grammar is documented in ``udfs/campaigns/CAMPAIGNS.md``; keep the two in step. What a
campaign shares with a journey (trigger, channels, template, payload, priority, validity window,
quiet-hours and conflict modes, attribution and holdout) is checked by ``DeliveryCompiler``, the
base of both compilers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from udfs.attribution.attribution import MODELS, AttributionRule
from udfs.attribution.holdout import CONTROL_SALT, MAX_SHARE, ControlGroup
from udfs.attribution.roi import RoiFeedback
from udfs.campaigns.grammar import (
    ATTRIBUTION_KEYS,
    CAMPAIGN_KEYS,
    CHANNELS,
    CONTROL_GROUP_KEYS,
    DEFAULT_GOAL,
    FACTORS,
    ON_BACKFILL,
    ON_CONFLICT,
    PAYLOAD_EVENT_FIELDS,
    PAYLOAD_METADATA_FIELDS,
    PLACEHOLDER_RE,
    POLICY_ID,
    POLICY_KEYS,
    QUIET_HOURS_MODES,
    REQUIRED_CAMPAIGN_KEYS,
    REQUIRED_POLICY_KEYS,
    ROI_FEEDBACK_KEYS,
    TIERS,
    Campaign,
    CampaignTrigger,
    Cap,
    PriorityPolicy,
)
from udfs.definitions.compiler import Compiler
from udfs.definitions.diagnostics import describe, format_number, join_path, listing, suggest
from udfs.definitions.durations import format_duration
from udfs.definitions.event_filter import EventFilter

_CLOCK_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_PERCENT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")
#: the longest attribution window: a user's touches are kept in state this long
MAX_ATTRIBUTION_WINDOW_MS = 90 * 86_400_000
#: what may start a campaign (or a journey's instance): exactly one per trigger
TRIGGER_KINDS = ("segment_enter", "event", "churn_score")


class DeliveryCompiler(Compiler):
    """What campaigns and journeys share: triggers, channels, templates, payloads, priority.

    Also the validity window and the quiet-hours and conflict modes. ``CampaignCompiler`` and
    ``udfs.journeys.compiler.JourneyCompiler`` build on it, so a journey's entry and sends are
    checked exactly as a campaign's trigger and message.
    """

    def fraction(self, data: Any, path: str, what: str) -> float | None:
        """A number from 0 to 1; None after an error."""
        value = self.number(data, path, what)
        if value is not None and not 0 <= value <= 1:
            self.error(path, f"{what} must be between 0 and 1, got {value}")
            return None
        return value

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

    def trigger(self, data: Any, path: str) -> CampaignTrigger | None:
        """What makes a campaign fire or a journey start: exactly one of ``TRIGGER_KINDS``."""
        spec = self.mapping(data, path, "a trigger", TRIGGER_KINDS, ())
        if spec is None:
            return None
        if len(spec) != 1:
            self.error(path, f"a trigger needs exactly one of {', '.join(TRIGGER_KINDS)}, got "
                             f"{len(spec)}")
            return None
        kind, body = next(iter(spec.items()))
        where = join_path(path, str(kind))
        if kind == "segment_enter":
            if not isinstance(body, str) or not body:
                self.error(where, f"segment_enter needs a segment id, got {describe(body)}")
                return None
            return CampaignTrigger(segment_enter=body)
        if kind == "event":
            match = self.event_filter(body, where)
            return None if match is None else CampaignTrigger(event=match)
        if kind == "churn_score":
            churn = self.mapping(body, where, "churn_score", ("crosses_above",),
                                 ("crosses_above",))
            if churn is None or "crosses_above" not in churn:
                return None
            value = self.fraction(churn["crosses_above"], join_path(where, "crosses_above"),
                                  "crosses_above")
            return None if value is None else CampaignTrigger(churn_crosses=value)
        return None

    def channels(self, data: Any, path: str) -> tuple[str, ...]:
        """Channels in order of preference (empty after an error)."""
        items = data if isinstance(data, list) else None
        if not items:
            self.error(path, f"channels must be a non-empty list of {', '.join(CHANNELS)}, got "
                             f"{describe(data)}")
            return ()
        ok = True
        for i, item in enumerate(items):
            if item not in CHANNELS:
                hint = suggest(item, CHANNELS) if isinstance(item, str) else ""
                self.error(f"{path}[{i}]", f"unknown channel {item!r}: allowed: "
                                           f"{', '.join(CHANNELS)}{hint}")
                ok = False
        if ok and len(set(items)) != len(items):
            self.error(path, "a channel is listed twice")
            ok = False
        return tuple(items) if ok else ()

    def template(self, data: Any, path: str) -> str | None:
        """A message template id (non-empty text); None after an error."""
        if not (isinstance(data, str) and data.strip()):
            self.error(path, f"template must be a non-empty string, got {describe(data)}")
            return None
        return data

    def payload(self, data: Any, path: str) -> tuple[tuple[str, str], ...]:
        """Template variables: text with ``{event.x}``, ``{metadata.x}``, ``{feature.x}``."""
        if not isinstance(data, dict):
            self.error(path, f"payload must be a mapping of template variables, got "
                             f"{describe(data)}")
            return ()
        features, _ = self.features()
        out = []
        for name, text in data.items():
            where = join_path(path, str(name))
            if not isinstance(text, str | int | float) or isinstance(text, bool):
                self.error(where, f"a payload value is text (may hold {{event.x}}, "
                                  f"{{metadata.x}}, {{feature.x}}), got {describe(text)}")
                continue
            text = str(text)
            for source, attr in PLACEHOLDER_RE.findall(text):
                known = {"event": PAYLOAD_EVENT_FIELDS, "metadata": PAYLOAD_METADATA_FIELDS,
                         "feature": tuple(sorted(features))}.get(source)
                if known is None:
                    self.error(where, f"unknown placeholder source {source!r} in {text!r}: "
                                      "use event, metadata or feature")
                elif attr not in known:
                    self.error(where, f"unknown {source} field {attr!r} in {text!r}"
                                      f"{suggest(attr, known)}")
            out.append((str(name), text))
        return tuple(out)

    def priority(self, data: Any, path: str, audience: bool = True
                 ) -> tuple[float, float, float, str | None] | None:
        """The matrix inputs: (urgency, expected_roi, brand_significance, audience segment).

        Args:
            data: The ``priority`` mapping.
            path: Its document path.
            audience: Whether an ``audience`` segment may be named (a journey's may not).
        """
        keys = ("urgency", "expected_roi", "brand_significance", "audience")[:4 if audience else 3]
        spec = self.mapping(data, path, "priority", keys, keys[:3])
        if spec is None or any(k not in spec for k in keys[:3]):
            return None
        urgency = self.fraction(spec["urgency"], join_path(path, "urgency"), "urgency")
        roi = self.number(spec["expected_roi"], join_path(path, "expected_roi"), "expected_roi")
        if roi is not None and roi < 0:
            self.error(join_path(path, "expected_roi"), "expected_roi (USD per send) must be >= 0")
            roi = None
        brand = self.fraction(spec["brand_significance"], join_path(path, "brand_significance"),
                              "brand_significance")
        segment = spec.get("audience") if audience else None
        if segment is not None and not isinstance(segment, str):
            self.error(join_path(path, "audience"), f"audience must be a segment id, got "
                                                f"{describe(segment)}")
            return None
        if urgency is None or roi is None or brand is None:
            return None
        return (urgency, float(roi), brand, segment)

    def validity(self, doc: Mapping[str, Any], path: str) -> tuple[int | None, int | None]:
        """``valid_from`` and ``valid_until`` as epoch ms (None: not given, or an error)."""
        valid_from = self.instant(doc["valid_from"], join_path(path, "valid_from")) \
            if "valid_from" in doc else None
        valid_until = self.instant(doc["valid_until"], join_path(path, "valid_until")) \
            if "valid_until" in doc else None
        if valid_from is not None and valid_until is not None and valid_until <= valid_from:
            self.error(join_path(path, "valid_until"), "valid_until must be after valid_from")
        return valid_from, valid_until

    def delivery_modes(self, doc: Mapping[str, Any], path: str) -> tuple[bool, bool, bool]:
        """The delivery modes: (bypass quiet hours, defer on conflict, send on backfill).

        From ``quiet_hours``, ``on_conflict`` and ``on_backfill``.
        """
        quiet = doc.get("quiet_hours", "respect")
        if quiet not in QUIET_HOURS_MODES:
            self.error(join_path(path, "quiet_hours"), f"quiet_hours must be one of "
                       f"{', '.join(QUIET_HOURS_MODES)}, got {describe(quiet)} (bypass "
                       "applies only to P0 triggers)")
        on_conflict = doc.get("on_conflict", "defer")
        if on_conflict not in ON_CONFLICT:
            self.error(join_path(path, "on_conflict"), f"on_conflict must be one of "
                       f"{', '.join(ON_CONFLICT)}, got {describe(on_conflict)}")
        on_backfill = doc.get("on_backfill", "skip")
        if on_backfill not in ON_BACKFILL:
            self.error(join_path(path, "on_backfill"), f"on_backfill must be one of "
                       f"{', '.join(ON_BACKFILL)}, got {describe(on_backfill)} (what a trigger "
                       "caused by defs publish --backfill does)")
        return quiet == "bypass", on_conflict == "defer", on_backfill == "send"

    def percent(self, data: Any, path: str, what: str, maximum: float = 1.0) -> float | None:
        """A percentage as a fraction: ``10%``, or the number 10 (as a split's ``percent``).

        Args:
            data: As written.
            path: Its document path.
            what: Its name in messages.
            maximum: The largest fraction allowed (0.5: at most 50%).

        Returns:
            The fraction in [0, maximum]; None after an error.
        """
        value: float | None = None
        if isinstance(data, str) and (match := _PERCENT_RE.match(data)):
            value = float(match.group(1))
        elif isinstance(data, int | float) and not isinstance(data, bool) \
                and math.isfinite(data):
            value = float(data)
        top = format_number(maximum * 100)
        if value is None:
            hint = " (add the % sign)" if isinstance(data, str) and \
                _PERCENT_RE.match(f"{data}%") else ""
            self.error(path, f"{what} must be a percentage from 0% to {top}%, e.g. 10% (or the "
                             f"number 10), got {describe(data)}{hint}")
            return None
        if not 0 <= value <= maximum * 100:
            self.error(path, f"{what} must be from 0% to {top}%, got {format_number(value)}%")
            return None
        return value / 100

    def attribution(self, data: Any, path: str, goal: bool = True
                    ) -> tuple[AttributionRule, EventFilter | None] | None:
        """The ``attribution`` mapping: (rule, goal or None for the default); None after an error.

        Args:
            data: ``{window: 7d, model: last_touch, goal: PURCHASE}``, every key optional.
            path: Its document path.
            goal: Whether a ``goal`` may be named (a journey's attribution may not: the
                journey's own ``goal`` is its conversion).
        """
        keys = ATTRIBUTION_KEYS if goal else tuple(k for k in ATTRIBUTION_KEYS if k != "goal")
        if not goal and isinstance(data, dict) and "goal" in data:
            self.error(join_path(path, "goal"), "a journey's attribution has no goal: its "
                       "conversions are the journey's own goal (the top-level goal: {event: "
                       "...}, PURCHASE when absent); move it there")
            data = {k: v for k, v in data.items() if k != "goal"}
        spec = self.mapping(data, path, "attribution", keys, ())
        if spec is None:
            return None
        before = len(self.errors)
        window = AttributionRule().window_ms
        if "window" in spec:
            where = join_path(path, "window")
            window = self.duration(spec["window"], where) or window
            if window > MAX_ATTRIBUTION_WINDOW_MS:
                self.error(where, f"attribution window {spec['window']!r} is too long: at most "
                           f"{format_duration(MAX_ATTRIBUTION_WINDOW_MS)} (every user's touches "
                           "are kept in state for the window)")
        model = spec.get("model", AttributionRule().model)
        if model not in MODELS:
            shown = repr(model) if isinstance(model, str) else describe(model)
            hint = suggest(model, MODELS) if isinstance(model, str) else ""
            self.error(join_path(path, "model"), f"unknown attribution model {shown}: allowed: "
                       f"{listing(MODELS)} (last_touch: the latest trigger in the window takes "
                       f"the conversion; linear: equal shares){hint}")
        target = self.event_filter(spec["goal"], join_path(path, "goal")) \
            if goal and "goal" in spec else None
        if len(self.errors) > before:
            return None
        return AttributionRule(window, str(model)), target

    def holdout(self, doc: Mapping[str, Any], path: str) -> float:
        """The ``holdout`` share as a fraction (0 when absent or after an error)."""
        if "holdout" not in doc:
            return 0.0
        share = self.percent(doc["holdout"], join_path(path, "holdout"), "holdout", MAX_SHARE)
        return share or 0.0


class CampaignCompiler(DeliveryCompiler):
    """Validates campaign and policy documents; collects every error."""

    def whole(self, data: Any, path: str, what: str, minimum: int = 0) -> int | None:
        """A whole number >= ``minimum``; None after an error."""
        if isinstance(data, bool) or not isinstance(data, int) or data < minimum:
            self.error(path, f"{what} must be a whole number >= {minimum}, got {describe(data)}")
            return None
        return data

    def cap(self, data: Any, path: str) -> Cap | None:
        """A frequency cap (``per_day``, ``per_week``); None if it is not a mapping."""
        spec = self.mapping(data, path, "a cap", ("per_day", "per_week"), ())
        if spec is None:
            return None
        per_day = self.whole(spec["per_day"], join_path(path, "per_day"), "per_day", 1) \
            if "per_day" in spec else None
        per_week = self.whole(spec["per_week"], join_path(path, "per_week"), "per_week", 1) \
            if "per_week" in spec else None
        if per_day is not None and per_week is not None and per_week < per_day:
            self.error(path, f"per_week ({per_week}) is less than per_day ({per_day})")
        return Cap(per_day, per_week)

    def segment_ids(self, data: Any, path: str) -> tuple[str, ...]:
        """A list of segment ids (empty after an error)."""
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            self.error(path, f"expected a list of segment ids, got {describe(data)}")
            return ()
        return tuple(data)

    # campaigns

    def campaign_document(self, data: Any, path: str, source: str) -> Campaign | None:
        """One campaign document (a mapping); None after an error."""
        doc = self.mapping(data, path, "a campaign", CAMPAIGN_KEYS, REQUIRED_CAMPAIGN_KEYS)
        if doc is None:
            return None
        before = len(self.errors)
        self.identity(doc, path, "cart-abandonment-email")
        enabled = self.enabled(doc, path)
        trigger = self.trigger(doc["trigger"], join_path(path, "trigger")) \
            if "trigger" in doc else None
        channels = self.channels(doc.get("channels"), join_path(path, "channels")) \
            if "channels" in doc else ()
        template = self.template(doc["template"], join_path(path, "template")) \
            if "template" in doc else None
        payload = self.payload(doc.get("payload", {}), join_path(path, "payload"))
        valid_from, valid_until = self.validity(doc, path)
        expires_after = self.duration(doc["expires_after"], join_path(path, "expires_after")) \
            if "expires_after" in doc else None
        priority = self.priority(doc.get("priority"), join_path(path, "priority")) \
            if "priority" in doc else None
        eligibility = self.mapping(doc.get("eligibility", {}), join_path(path, "eligibility"),
                                   "eligibility", ("require_segments", "exclude_segments"), ())
        require: tuple[str, ...] = ()
        exclude: tuple[str, ...] = ()
        if eligibility:
            if "require_segments" in eligibility:
                require = self.segment_ids(eligibility["require_segments"],
                                           join_path(path, "eligibility.require_segments"))
            if "exclude_segments" in eligibility:
                exclude = self.segment_ids(eligibility["exclude_segments"],
                                           join_path(path, "eligibility.exclude_segments"))
        if trigger is not None and trigger.segment_enter in exclude:
            self.error(join_path(path, "eligibility.exclude_segments"),
                       f"the campaign fires when a user enters {trigger.segment_enter!r} but "
                       f"excludes that segment's members, so it can never fire; remove "
                       f"{trigger.segment_enter!r} from exclude_segments")
        frequency = self.mapping(doc.get("frequency", {}), join_path(path, "frequency"),
                                 "frequency", ("cap", "reeligible_after"), ())
        cap = Cap()
        reeligible = 0
        if frequency:
            if "cap" in frequency:
                cap = self.cap(frequency["cap"], join_path(path, "frequency.cap")) or Cap()
            if "reeligible_after" in frequency:
                reeligible = self.duration(frequency["reeligible_after"],
                                           join_path(path, "frequency.reeligible_after")) or 0
        bypass_quiet_hours, defer_on_conflict, send_on_backfill = self.delivery_modes(doc, path)
        attribution = self.attribution(doc["attribution"], join_path(path, "attribution")) \
            if "attribution" in doc else (AttributionRule(), None)
        holdout = self.holdout(doc, path)
        if trigger is not None and priority is not None and priority[3] is None:
            priority = (*priority[:3], trigger.segment_enter)
        if len(self.errors) > before or trigger is None or priority is None or not channels \
                or template is None or attribution is None:
            return None
        rule, goal = attribution
        return Campaign(
            id=str(doc["id"]), version=int(doc["version"]), description=str(doc["description"]),
            enabled=enabled, trigger=trigger, channels=channels, template=template,
            payload=payload, valid_from_ms=valid_from, valid_until_ms=valid_until,
            expires_after_ms=expires_after, urgency=priority[0], expected_roi=priority[1],
            brand_significance=priority[2], audience_segment=priority[3],
            require_segments=require, exclude_segments=exclude, cap=cap,
            reeligible_after_ms=reeligible, bypass_quiet_hours=bypass_quiet_hours,
            defer_on_conflict=defer_on_conflict, send_on_backfill=send_on_backfill,
            document=json.loads(json.dumps(doc)), source=source,
            attribution=rule, goal=goal or DEFAULT_GOAL, holdout=holdout,
        )

    # the priority policy

    def policy_document(self, data: Any, path: str, source: str) -> PriorityPolicy | None:
        """The priority policy document (a mapping); None after an error."""
        doc = self.mapping(data, path, "a priority policy", POLICY_KEYS, REQUIRED_POLICY_KEYS)
        if doc is None:
            return None
        before = len(self.errors)
        self.identity(doc, path, "cart-abandonment-email")
        if doc.get("id") != POLICY_ID:
            self.error(join_path(path, "id"), f"the priority policy's id must be {POLICY_ID!r} "
                                          "(there is one policy; publish a new version)")
        weights: dict[str, float] = {}
        spec = self.mapping(doc.get("weights"), join_path(path, "weights"), "weights", FACTORS,
                            FACTORS)
        if spec:
            for name in FACTORS:
                if name in spec:
                    value = self.number(spec[name], join_path(path, f"weights.{name}"), name)
                    if value is not None and value < 0:
                        self.error(join_path(path, f"weights.{name}"), "a weight must be >= 0")
                    elif value is not None:
                        weights[name] = float(value)
            if len(weights) == len(FACTORS) and sum(weights.values()) <= 0:
                self.error(join_path(path, "weights"), "at least one weight must be above 0")
        roi_scale = self.number(doc.get("roi_scale", 100), join_path(path, "roi_scale"),
                                "roi_scale")
        audience_scale = self.whole(doc.get("audience_scale", 100_000),
                                    join_path(path, "audience_scale"), "audience_scale", 2)
        tiers = self._tiers(doc.get("tiers"), join_path(path, "tiers"))
        window = self._optional_duration(doc, "decision_window", path)
        interval = self._optional_duration(doc, "min_interval", path)
        caps: dict[str, Cap] = {}
        caps_spec = self.mapping(doc.get("channel_caps"), join_path(path, "channel_caps"),
                                 "channel_caps", CHANNELS, ())
        for channel, body in (caps_spec or {}).items():
            if channel in CHANNELS:
                cap = self.cap(body, join_path(path, f"channel_caps.{channel}"))
                if cap is not None:
                    caps[channel] = cap
        quiet = self.mapping(doc.get("quiet_hours"), join_path(path, "quiet_hours"), "quiet_hours",
                             ("start", "end"), ("start", "end"))
        start = end = None
        if quiet and "start" in quiet and "end" in quiet:
            start = self._clock(quiet["start"], join_path(path, "quiet_hours.start"))
            end = self._clock(quiet["end"], join_path(path, "quiet_hours.end"))
        control = self.control_group(doc["control_group"], join_path(path, "control_group")) \
            if "control_group" in doc else None
        feedback = self.roi_feedback(doc["roi_feedback"], join_path(path, "roi_feedback")) \
            if "roi_feedback" in doc else None
        zone = doc.get("default_time_zone", "UTC")
        if not _known_zone(zone):
            self.error(join_path(path, "default_time_zone"), f"unknown time zone {zone!r}: use an "
                       "IANA name such as UTC or Europe/Berlin")
        if len(self.errors) > before or tiers is None or start is None or end is None \
                or roi_scale is None or audience_scale is None or roi_scale <= 0:
            if roi_scale is not None and roi_scale <= 0:
                self.error(join_path(path, "roi_scale"), "roi_scale must be above 0")
            return None
        return PriorityPolicy(
            id=str(doc["id"]), version=int(doc["version"]), description=str(doc["description"]),
            weights=weights, roi_scale=float(roi_scale), audience_scale=audience_scale,
            tiers=tiers, decision_window_ms=window, min_interval_ms=interval, channel_caps=caps,
            quiet_start=start, quiet_end=end, default_time_zone=str(zone),
            document=json.loads(json.dumps(doc)), source=source, control_group=control,
            roi_feedback=feedback,
        )

    def control_group(self, data: Any, path: str) -> ControlGroup | None:
        """The global control group ``{share: 5%, salt: ...}``; None after an error."""
        spec = self.mapping(data, path, "control_group", CONTROL_GROUP_KEYS, ("share",))
        if spec is None or "share" not in spec:
            return None
        share = self.percent(spec["share"], join_path(path, "share"), "control_group.share",
                             MAX_SHARE)
        salt = spec.get("salt", CONTROL_SALT)
        if not (isinstance(salt, str) and salt.strip()):
            self.error(join_path(path, "salt"), f"salt must be a non-empty string (a new salt "
                       f"draws a new control group), got {describe(salt)}")
            return None
        return None if share is None else ControlGroup(share, salt)

    def roi_feedback(self, data: Any, path: str) -> RoiFeedback | None:
        """ROI feedback ``{min_sends: 200, smoothing: 0.2, max_step: 25%, update_every: 50}``.

        None after an error.
        """
        spec = self.mapping(data, path, "roi_feedback", ROI_FEEDBACK_KEYS, ())
        if spec is None:
            return None
        before = len(self.errors)
        default = RoiFeedback()
        min_sends = self.whole(spec["min_sends"], join_path(path, "min_sends"), "min_sends", 1) \
            if "min_sends" in spec else default.min_sends
        smoothing = self.fraction(spec["smoothing"], join_path(path, "smoothing"), "smoothing") \
            if "smoothing" in spec else default.smoothing
        if smoothing == 0:
            self.error(join_path(path, "smoothing"), "smoothing must be above 0 (0 would never "
                       "move the ROI from the typed value: leave roi_feedback out instead)")
        max_step = self.percent(spec["max_step"], join_path(path, "max_step"), "max_step") \
            if "max_step" in spec else default.max_step
        if max_step == 0:
            self.error(join_path(path, "max_step"), "max_step must be above 0% (0% would never "
                       "move the ROI from the typed value: leave roi_feedback out instead)")
        update_every = self.whole(spec["update_every"], join_path(path, "update_every"),
                                  "update_every", 1) \
            if "update_every" in spec else default.update_every
        if len(self.errors) > before or min_sends is None or smoothing is None \
                or max_step is None or update_every is None:
            return None
        return RoiFeedback(min_sends, float(smoothing), max_step, update_every)

    def _optional_duration(self, doc: Mapping[str, Any], key: str, path: str) -> int:
        value = doc.get(key)
        if value is None or value in ("0", "0s", 0):
            return 0
        return self.duration(value, join_path(path, key)) or 0

    def _tiers(self, data: Any, path: str) -> tuple[float, float, float] | None:
        spec = self.mapping(data, path, "tiers", TIERS[:3], TIERS[:3])
        if spec is None or any(t not in spec for t in TIERS[:3]):
            return None
        values = [self.fraction(spec[t], join_path(path, t), f"the {t} threshold")
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


def parse_campaign(document: Any, file: str = "<document>") -> Campaign:
    """Validate and compile one campaign document.

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    compiler = CampaignCompiler(file)
    return compiler.result(compiler.campaign_document(document, "", file))


def parse_policy(document: Any, file: str = "<document>") -> PriorityPolicy:
    """Validate and compile the priority policy document.

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    compiler = CampaignCompiler(file)
    return compiler.result(compiler.policy_document(document, "", file))
