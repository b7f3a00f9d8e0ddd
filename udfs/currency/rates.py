"""The currency rate table: a definition kind, and how a click's money becomes US dollars.

Inputs: a ``kind: currency_rates`` YAML document (``udfs/catalog/currency-rates.yaml``) or its
DefinitionUpdate (kind ``CURRENCY_RATES``) from the control topic. Outputs: ``CurrencyRates``
(validated, versioned like every kind), ``RatesRegistry`` (the table in force) and
``to_reference`` (a click with its price in USD, the original kept). State: the registry's,
kept by the engine in Flink broadcast state. Semantics in udfs/features/FEATURES.md (Money).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from udfs.definitions.compiler import Compiler
from udfs.definitions.diagnostics import describe
from udfs.definitions.envelope import RATES_KIND, definition_to_update, update_document
from udfs.definitions.versioning import VersionedRegistry

#: the reference currency: every money feature and event value is in it
REFERENCE_CURRENCY: Final = "USD"
#: the one rate table's id
RATES_ID: Final = "currency-rates"
RATES_KEYS: Final = ("kind", "id", "version", "description", "per_usd")
REQUIRED_RATES_KEYS: Final = ("kind", "id", "version", "description", "per_usd")


@dataclass(frozen=True)
class CurrencyRates:
    """Units of each currency per US dollar (EUR 0.92: one dollar buys 0.92 euros).

    Attributes:
        id, version, description: as every definition.
        per_usd: ISO 4217 code -> units per USD (USD is 1).
        document: the document as written; ``source``: its file or definition.
    """

    id: str
    version: int
    description: str
    per_usd: Mapping[str, float]
    document: Any = field(repr=False, compare=False, default=None)
    source: str = field(repr=False, compare=False, default="")
    enabled: bool = True


def _code_ok(code: Any) -> bool:
    return isinstance(code, str) and len(code) == 3 and code.isascii() and code.isupper()


def compile_rates(compiler: Compiler, data: Any, path: str, source: str
                  ) -> CurrencyRates | None:
    """Validate a rate table document; None after an error (recorded on ``compiler``)."""
    doc = compiler.mapping(data, path, "a currency rate table", RATES_KEYS,
                           REQUIRED_RATES_KEYS)
    if doc is None:
        return None
    before = len(compiler.errors)
    compiler.identity(doc, path, RATES_ID)
    if "id" in doc and doc.get("id") != RATES_ID:
        compiler.error(f"{path}.id" if path else "id", f"the rate table's id must be "
                       f"{RATES_ID!r} (there is one table; publish a new version)")
    rates_path = f"{path}.per_usd" if path else "per_usd"
    table = doc.get("per_usd")
    rates: dict[str, float] = {}
    if not isinstance(table, dict) or not table:
        compiler.error(rates_path, "per_usd must be a non-empty mapping of ISO 4217 codes to "
                       f"units per US dollar, e.g. {{EUR: 0.92}}; got {describe(table)}")
    else:
        for code, value in table.items():
            where = f"{rates_path}.{code}"
            if not _code_ok(code):
                compiler.error(where, f"bad currency code {code!r}: use a three-letter "
                               "upper-case ISO 4217 code such as EUR")
                continue
            number = compiler.number(value, where, f"the rate of {code}")
            if number is None:
                continue
            if not (math.isfinite(number) and number > 0):
                compiler.error(where, f"the rate of {code} must be above 0 (units of {code} per "
                               f"US dollar), got {value!r}")
            else:
                rates[code] = float(number)
        if REFERENCE_CURRENCY in rates and rates[REFERENCE_CURRENCY] != 1.0:
            compiler.error(f"{rates_path}.USD", "the rate of USD must be 1 (the reference "
                           "currency)")
    if len(compiler.errors) > before:
        return None
    rates.setdefault(REFERENCE_CURRENCY, 1.0)
    return CurrencyRates(str(doc["id"]), int(doc["version"]), str(doc["description"]), rates,
                         json.loads(json.dumps(doc)), source)


def rates_to_update(rates: CurrencyRates, published_at_ms: int,
                    published_by: str | None = None) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate publishing the rate table."""
    return definition_to_update(rates, RATES_KIND, published_at_ms, published_by)


def update_to_rates(update: Mapping[str, Any]) -> CurrencyRates:
    """The rate table an UPSERT DefinitionUpdate carries, validated.

    Raises:
        InvalidDefinitions: bad envelope or body; the file of each error names the definition.
    """
    file, document = update_document(update, RATES_KIND)
    compiler = Compiler(file)
    return compiler.result(compile_rates(compiler, document, "", file), update)


class RatesRegistry(VersionedRegistry[CurrencyRates]):
    """The rate table in force (one id, ``RATES_ID``), versioned like every kind."""

    kind = RATES_KIND
    noun = "currency rate table"

    def parse_update(self, update: Mapping[str, Any]) -> CurrencyRates:
        """The table an UPSERT update carries (``update_to_rates``)."""
        return update_to_rates(update)

    def rates(self) -> Mapping[str, float] | None:
        """Units per USD by currency code, or None when no table is defined."""
        table = self.get(RATES_ID)
        return table.per_usd if isinstance(table, CurrencyRates) else None


def to_reference(event: dict[str, Any], per_usd: Mapping[str, float] | None
                 ) -> tuple[dict[str, Any], str | None]:
    """The click with its unit price in USD, and the currency that could not be converted.

    A click without a price is returned as is. A click with a price gets ``price`` in USD and
    ``currency`` USD; the original is kept as ``original_price`` and ``original_currency``
    (not schema fields, like ``ingest_time``). A missing currency is read as USD. A currency
    the table does not know (or no table at all) cannot be converted: the price is removed (the
    click counts, its money does not) and the currency is returned so the caller can count it.
    """
    price = event.get("price")
    if price is None:
        return event, None
    currency = event.get("currency") or REFERENCE_CURRENCY
    if currency == REFERENCE_CURRENCY:
        return event, None
    rate = per_usd.get(currency) if per_usd is not None else None
    out = dict(event)
    out["original_price"], out["original_currency"] = price, currency
    if rate is None:
        out["price"] = None
        return out, currency
    out["price"], out["currency"] = price / rate, REFERENCE_CURRENCY
    return out, None
