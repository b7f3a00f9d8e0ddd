"""The binary encoding of a user's feature state, as Flink keeps it in keyed state.

Inputs: a :class:`~udfs.features.state.UserFeatures` (:func:`encode_state`) or bytes written by
it (:func:`decode_state`). Outputs: one version byte (:data:`STATE_SCHEMA_VERSION`) followed by
the Avro record ``schemas/UserFeaturesState.avsc`` in Avro binary, schemaless; and the decoded
state. State: none. Existing savepoints hold these bytes: a change of layout is a new version
with a decoder of the old one (see :data:`STATE_SCHEMA_VERSION`).

Why the state is packed: fastavro costs about half a microsecond per decoded item, so a state of
a few hundred counters and a few dozen recent events as Avro arrays of records costs hundreds of
microseconds per event. The Avro record therefore has twenty flat fields, most of them
``bytes`` holding little-endian numeric arrays whose layout the field docs spell out; encoding
and decoding are a few ``array.frombytes``/``tobytes`` calls.
"""

from __future__ import annotations

import io
import json
import math
import sys
from array import array
from importlib.resources import files
from itertools import repeat
from typing import Any, Final

import fastavro

from udfs.features.spec import (
    DEFAULT_BOUNDS,
    EVENT_TYPES,
    MAX_CURRENCY_BYTES,
    MAX_ID_BYTES,
    SOURCES,
    FeatureBounds,
)
from udfs.features.state import BLOCK, N_DAYS, CartLine, CartOp, UserFeatures

__all__ = [
    "STATE_SCHEMA",
    "STATE_SCHEMA_NAME",
    "STATE_SCHEMA_VERSION",
    "decode_state",
    "encode_state",
    "max_state_bytes",
    "state_size_bytes",
]

# --- encoding -----------------------------------------------------------------------------------

_NAN: Final = math.nan
_LITTLE: Final = sys.byteorder == "little"
if array("i").itemsize != 4:  # pragma: no cover - every platform Flink runs on
    raise ImportError("udfs.features.codec needs a 4-byte C int for its packed counters")

#: Version of the encoded state, written as its first byte. Bump it when the layout or
#: EVENT_TYPES/SOURCES change, and keep a decoder of the old version in _DECODERS that returns
#: a current UserFeatures (the migration); the old schema goes to schemas/history/ as for every
#: .avsc (schemas/README.md, "How to change a schema"), and its record doc names the version.
STATE_SCHEMA_VERSION: Final = 1

#: Name of the state's record: its Avro schema is ``schemas/<STATE_SCHEMA_NAME>.avsc``.
STATE_SCHEMA_NAME: Final = "UserFeaturesState"


def _load_schema() -> dict[str, Any]:
    """The state's Avro schema, read from the ``schemas`` package as schemas/codec.py reads it."""
    text = files("schemas").joinpath(f"{STATE_SCHEMA_NAME}.avsc").read_text(encoding="utf-8")
    return dict(json.loads(text))


#: The Avro schema of the encoded state after the version byte (version 1).
STATE_SCHEMA: Final[dict[str, Any]] = _load_schema()
_PARSED: Final = fastavro.parse_schema(STATE_SCHEMA)
_VERSION_BYTE: Final = bytes((STATE_SCHEMA_VERSION,))


def _pack(values: array[Any]) -> bytes:
    if _LITTLE:
        return values.tobytes()
    swapped = array(values.typecode, values)  # pragma: no cover - big-endian hosts
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def _unpack(typecode: str, data: bytes | memoryview) -> array[Any]:
    values = array(typecode)
    values.frombytes(data)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        values.byteswap()
    return values


def _pack_ring(ring: array[int] | None) -> bytes:
    return _pack(ring) if ring is not None and any(ring) else b""


def _unpack_ring(typecode: str, data: bytes) -> array[int] | None:
    if not data:
        return None
    ring = _unpack(typecode, data)
    if len(ring) != N_DAYS:
        raise ValueError(f"malformed feature state: a day ring of {len(ring)} entries")
    return ring


def encode_state(state: UserFeatures) -> bytes:
    """Encode a state for Flink state: a version byte, then the Avro record (STATE_SCHEMA).

    The encoding is canonical: equal states give equal bytes, and so do the same events in any
    arrival order within the bounds documented on UserFeatures.

    Args:
        state: The user's features.

    Returns:
        The bytes to store.
    """
    return _write_record(_record(state))


def _record(state: UserFeatures) -> dict[str, Any]:
    """The state as the Avro record STATE_SCHEMA describes (packed arrays as bytes)."""
    type_mask, type_counts = _pack_blocks(state.type_counts)
    source_mask, source_counts = _pack_blocks(state.source_counts)
    cart, pending = state.cart, state.cart_pending
    products = sorted(cart)
    lines = [cart[p] for p in products]
    return {
        "first_event_ms": state.first_event_ms,
        "last_event_ms": state.last_event_ms,
        "last_purchase_ms": state.last_purchase_ms,
        "last_add_to_cart_ms": state.last_add_to_cart_ms,
        "orders_total": state.orders_total,
        "revenue_total_milli": state.revenue_total_milli,
        "type_mask": type_mask,
        "type_counts": type_counts,
        "source_mask": source_mask,
        "source_counts": source_counts,
        "revenue_days": _pack_ring(state.revenue_days),
        "session_keys": _pack(state.session_keys),
        "order_keys": _pack(state.order_keys),
        "seen_hashes": _pack(state.seen_hashes),
        "seen_slots": _pack(state.seen_slots),
        "recent": "\x00".join(state.recent),
        "cart_numbers": b"".join((
            _pack(array("i", [line.quantity for line in lines])),
            _pack(array("d", [_NAN if line.price is None else line.price for line in lines])),
            _pack(array("q", [line.updated_ms for line in lines])),
        )) if lines else b"",
        "cart_products": "\x00".join(products),
        "pending_numbers": b"".join((
            _pack(array("q", [op.event_time for op in pending])),
            _pack(array("i", [op.quantity or 0 for op in pending])),
            _pack(array("d", [_NAN if op.price is None else op.price for op in pending])),
            bytes([op.kind for op in pending]),
        )) if pending else b"",
        "pending_strings": "\x00".join(f"{op.event_id}\x00{op.product_id or ''}"
                                       for op in pending),
    }


def _fields(schema: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The record's (name, type) pairs; every type is long, bytes or string (checked)."""
    fields = tuple((f["name"], f["type"]) for f in schema["fields"])
    odd = [f"{name}: {kind}" for name, kind in fields if kind not in ("long", "bytes", "string")]
    if odd:  # pragma: no cover - a schema change that _write_record would have to learn
        raise ImportError(f"udfs.features.codec writes only long, bytes and string fields: "
                          f"{', '.join(odd)}")
    return fields


_FIELDS: Final = _fields(STATE_SCHEMA)


def _write_record(record: dict[str, Any]) -> bytes:
    """The version byte and ``record`` in Avro binary: what fastavro's writer gives, faster.

    A record of flat long, bytes and string fields is a zig-zag varint per long and a varint
    length before each bytes or string value (the Avro specification, "Binary Encoding").
    fastavro's schemaless writer, which walks the schema on every call, took ~26 µs per state
    of the domain benchmark; this takes ~17 (2026-12-03, docs/performance.md).
    ``tests/unit/test_features.py`` checks the bytes against fastavro's.
    """
    out = bytearray(_VERSION_BYTE)
    for name, kind in _FIELDS:
        value = record[name]
        if kind == "long":
            _write_long(out, value)
        else:
            if kind == "string":
                value = value.encode()
            _write_long(out, len(value))
            out += value
    return bytes(out)


def _write_long(out: bytearray, value: int) -> None:
    """Append ``value`` (a signed 64-bit int) to ``out`` as an Avro zig-zag varint."""
    if not -(1 << 63) <= value < 1 << 63:
        raise ValueError(f"feature state: {value} does not fit an Avro long")
    value = (value << 1) ^ (value >> 63)
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _pack_blocks(blocks: dict[int, array[int]]) -> tuple[int, bytes]:
    mask = 0
    packed = []
    for index in sorted(blocks):
        block = blocks[index]
        if any(block):
            mask |= 1 << index
            packed.append(_pack(block))
    return mask, b"".join(packed)


def decode_state(data: bytes) -> UserFeatures:
    """Decode bytes written by encode_state (of this version, or an older one it migrates).

    Args:
        data: The stored bytes.

    Returns:
        The state.

    Raises:
        ValueError: Empty input, an unknown version, or bytes that do not match the schema.
    """
    if not data:
        raise ValueError("empty feature state")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise ValueError(
            f"feature state version {data[0]} is unknown to this build (it reads versions "
            f"{sorted(_DECODERS)}); was it written by a newer nudgeflow?"
        )
    try:
        return decoder(data)
    except ValueError:
        raise
    except Exception as exc:  # fastavro raises EOFError, UnicodeDecodeError, ...
        raise ValueError(f"malformed feature state (version {data[0]}): {exc!r}") from exc


def _decode_v1(data: bytes) -> UserFeatures:
    buf = io.BytesIO(data)
    buf.seek(1)
    rec: Any = fastavro.schemaless_reader(buf, _PARSED, None)
    if buf.read(1):
        raise ValueError("malformed feature state: bytes after the record")
    state = UserFeatures(
        first_event_ms=rec["first_event_ms"],
        last_event_ms=rec["last_event_ms"],
        last_purchase_ms=rec["last_purchase_ms"],
        last_add_to_cart_ms=rec["last_add_to_cart_ms"],
        orders_total=rec["orders_total"],
        revenue_total_milli=rec["revenue_total_milli"],
        type_counts=_unpack_blocks(rec["type_mask"], rec["type_counts"], BLOCK,
                                   len(EVENT_TYPES)),
        source_counts=_unpack_blocks(rec["source_mask"], rec["source_counts"], N_DAYS,
                                     len(SOURCES)),
        revenue_days=_unpack_ring("q", rec["revenue_days"]),
        session_keys=_unpack("q", rec["session_keys"]),
        order_keys=_unpack("q", rec["order_keys"]),
        seen_hashes=_unpack("q", rec["seen_hashes"]),
        seen_slots=_unpack("i", rec["seen_slots"]),
        recent=rec["recent"].split("\x00") if rec["recent"] else [],
        cart=_unpack_cart(rec["cart_numbers"], rec["cart_products"]),
        cart_pending=_unpack_pending(rec["pending_numbers"], rec["pending_strings"]),
    )
    if len(state.seen_hashes) != len(state.seen_slots):
        raise ValueError("malformed feature state: seen_hashes and seen_slots differ in length")
    return state


def _unpack_blocks(mask: int, data: bytes, size: int, limit: int) -> dict[int, array[int]]:
    indexes = [i for i in range(limit) if mask >> i & 1]
    step = 4 * size
    if mask >> limit or len(data) != step * len(indexes):
        raise ValueError(f"malformed feature state: mask {mask:#x} does not match "
                         f"{len(data)} bytes of counters")
    counters = _unpack("i", data)
    return {index: counters[k * size:(k + 1) * size] for k, index in enumerate(indexes)}


def _unpack_cart(numbers: bytes, products: str) -> dict[str, CartLine]:
    n, rest = divmod(len(numbers), 20)
    names = products.split("\x00") if n else []
    if rest or len(names) != n:
        raise ValueError("malformed feature state: cart columns do not match")
    view = memoryview(numbers)
    prices = [None if p != p else p for p in _unpack("d", view[4 * n:12 * n])]
    lines = map(tuple.__new__, repeat(CartLine),
                zip(_unpack("i", view[:4 * n]), prices, _unpack("q", view[12 * n:20 * n]),
                    strict=True))
    return dict(zip(names, lines, strict=True))


def _unpack_pending(numbers: bytes, strings: str) -> list[CartOp]:
    n, rest = divmod(len(numbers), 21)
    parts = strings.split("\x00") if n else []
    if rest or len(parts) != 2 * n:
        raise ValueError("malformed feature state: pending cart columns do not match")
    view = memoryview(numbers)
    times = _unpack("q", view[:8 * n])
    quantities = _unpack("i", view[8 * n:12 * n])
    prices = _unpack("d", view[12 * n:20 * n])
    kinds = numbers[20 * n:21 * n]
    return [
        CartOp(t, event_id, kind, product_id or None, q or None, None if p != p else p)
        for t, event_id, kind, product_id, q, p in zip(
            times, parts[0::2], kinds, parts[1::2], quantities, prices, strict=True)
    ]


#: Decoders by version byte; an old version's decoder returns a current UserFeatures.
_DECODERS: Final = {1: _decode_v1}


def state_size_bytes(state: UserFeatures) -> int:
    """Size of the encoded state in bytes (what Flink stores for the user)."""
    return len(encode_state(state))


#: Longest recent-events row: 15 digits, 8 separators, 3 ids, type and source names, a price
#: repr (at most 24 characters), an int32 quantity (11), a currency, and the NUL joining rows.
_MAX_ROW_BYTES: Final = (15 + 8 + 3 * MAX_ID_BYTES + max(map(len, EVENT_TYPES))
                         + max(map(len, SOURCES)) + 24 + 11 + MAX_CURRENCY_BYTES + 1)


def max_state_bytes(bounds: FeatureBounds = DEFAULT_BOUNDS) -> int:
    """An upper bound of ``state_size_bytes`` for any state kept within ``bounds``.

    Args:
        bounds: The bounds the state was updated with.

    Returns:
        Bytes: the version byte, Avro varints and length prefixes, and every packed section at
        its cap (identifiers at MAX_ID_BYTES).
    """
    fixed = 1 + 8 * 10 + 12 * 3  # version; 8 longs <= 10 bytes; 12 length prefixes <= 3 bytes
    rings = 4 * (BLOCK * len(EVENT_TYPES) + N_DAYS * len(SOURCES)) + 8 * N_DAYS
    keys = 8 * N_DAYS * (bounds.sessions_per_day + bounds.orders_per_day)
    seen = 12 * bounds.dedup_ids
    recent = bounds.recent_events * _MAX_ROW_BYTES
    cart = bounds.cart_lines * (20 + MAX_ID_BYTES + 1)
    pending = bounds.cart_pending * (21 + 2 * MAX_ID_BYTES + 2)
    return fixed + rings + keys + seen + recent + cart + pending
