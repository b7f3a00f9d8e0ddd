"""Prometheus alert and recording rules, and the list of metrics they may use.

``rules.yml`` (tested with ``promtool test rules rules_test.yml``) and the Grafana dashboard
``infra/grafana/nudgeflow.json`` query only names listed in ``metrics.py``.
"""
