"""Money in one currency: the rate table (``kind: currency_rates``) and click normalisation."""
