"""Money in one currency: the rate table as a definition kind, and clicks converted to USD."""

import pytest

from tests.builders import click
from udfs.catalog.files import RATES_FILE, load_catalog, validate_files
from udfs.catalog.registries import Registries
from udfs.currency.rates import rates_to_update, to_reference
from udfs.definitions.versioning import ChangeOutcome
from udfs.engine import Click, Rules, UserState, step
from udfs.features.vector import FeatureView

DAY = 86_400_000
T = 1_800_000_000_000


def test_the_shipped_table_loads_and_agrees_with_the_generator():
    from jobs.workload.workload import USD_RATES

    rates = load_catalog().rates
    assert len(rates) == 1 and dict(rates[0].per_usd) == USD_RATES


def test_a_bad_table_is_reported_with_file_path_and_line(tmp_path):
    bad = tmp_path / "rates.yaml"
    bad.write_text("kind: currency_rates\nid: currency-rates\nversion: 1\n"
                   "description: x\nper_usd:\n  USD: 2\n  eur: 0.9\n  JPY: -1\n")
    _, errors = validate_files([bad])
    messages = sorted(f"{e.path}: {e.message} (line {e.line})" for e in errors)
    assert messages == [
        "per_usd.JPY: the rate of JPY must be above 0 (units of JPY per US dollar), got -1 "
        "(line 8)",
        "per_usd.USD: the rate of USD must be 1 (the reference currency) (line 6)",
        "per_usd.eur: bad currency code 'eur': use a three-letter upper-case ISO 4217 code "
        "such as EUR (line 7)",
    ]
    assert all(e.file == str(bad) for e in errors)


def test_a_new_table_version_is_published_like_any_definition():
    table = load_catalog().rates[0]
    registries = Registries.from_updates([rates_to_update(table, 0, "file")])
    assert registries.rates.rates()["JPY"] == 150.0
    doc = {**table.document, "version": 2, "per_usd": {**table.document["per_usd"], "JPY": 100}}
    newer = rates_to_update(type(table)(table.id, 2, table.description, {"JPY": 100.0}, doc), 1)
    before = registries.fingerprint()
    assert registries.apply(newer).outcome is ChangeOutcome.REPLACED
    assert registries.rates.rates()["JPY"] == 100.0
    assert registries.fingerprint() != before


def test_prices_are_converted_and_the_original_is_kept():
    rates = {"USD": 1.0, "JPY": 150.0}
    event, unknown = to_reference(click("e", "u", "ADD_TO_CART", T, price=15000.0,
                                        currency="JPY", product_id="p"), rates)
    assert (event["price"], event["currency"], unknown) == (100.0, "USD", None)
    assert (event["original_price"], event["original_currency"]) == (15000.0, "JPY")
    same, unknown = to_reference(click("e", "u", "PAGE_VIEW", T), rates)
    assert unknown is None and "original_price" not in same
    lost, unknown = to_reference(click("e", "u", "ADD_TO_CART", T, price=5.0, currency="XAU",
                                       product_id="p"), rates)
    assert unknown == "XAU" and lost["price"] is None and lost["original_price"] == 5.0


@pytest.fixture(scope="module")
def rules():
    return Rules(Registries.from_updates(load_catalog().updates(0, "file")), 90 * DAY)


def test_a_yen_cart_of_12449_is_not_a_high_value_cart(rules):
    """Issue 12's bug 4: 12,449 JPY is about 83 USD."""
    state = UserState()
    out = step(state, Click(click("e1", "u", "ADD_TO_CART", T, product_id="p", price=12449.0,
                                  currency="JPY", quantity=1)), rules, 0)
    assert "high-value-cart" not in state.membership and out.unconverted == []
    assert FeatureView(state.features, None, T).feature("cart_value") == pytest.approx(82.99, 0.01)
    out = step(state, Click(click("e2", "u", "ADD_TO_CART", T + 1, product_id="q", price=20.0,
                                  currency="EUR", quantity=1)), rules, 0)
    assert [c["segment_id"] for c in out.changes if c["change"] == "ENTER"] == [
        "high-value-cart"]  # 82.99 + 21.74 USD


def test_an_unknown_currency_counts_the_click_not_its_money(rules):
    state = UserState()
    out = step(state, Click(click("e1", "u", "ADD_TO_CART", T, product_id="p", price=500.0,
                                  currency="XAU", quantity=1)), rules, 0)
    assert out.unconverted == ["XAU"]
    view = FeatureView(state.features, None, T)
    assert view.feature("cart_items") == 1 and view.feature("cart_value") == 0


def test_the_rates_file_is_in_the_catalog():
    assert RATES_FILE.exists()
