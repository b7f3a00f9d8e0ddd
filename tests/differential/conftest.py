"""Fixtures of the differential tier: the job's jars and a configuration per parallelism.

Sizes: a reduced workload by default (CI); ``NUDGEFLOW_DIFFERENTIAL=full`` runs the issue's
size (2,000 users, 40,000 clicks over 11 days).
"""

import os

import pytest

from jobs.config import load_config, replace

FULL = os.environ.get("NUDGEFLOW_DIFFERENTIAL") == "full"
USERS, EVENTS, DAYS = (2_000, 40_000, 11) if FULL else (2_000, 12_000, 11)


@pytest.fixture(scope="session")
def jar_urls():
    from infra.jars import jar_urls

    return ";".join(jar_urls("flink"))


@pytest.fixture(scope="session")
def make_cfg(jar_urls):
    def make(parallelism, **overrides):
        # checkpoints off: the collection sources finish at once; churn scoring off (its
        # determinism is the model's; the triggers and segments are what is compared);
        # idleness is wall-clock: on a busy machine a 10 s stall would let a split's watermark
        # jump ahead, and the bounded sources end with their own final watermark anyway; a
        # 1 s out-of-orderness bound (the reordered-input profile's, not the 20 ms default) so
        # that the shuffled runs reorder clicks up to a second apart, a user's own among them
        return replace(load_config(env={}), parallelism=parallelism, checkpoint_interval_ms=0,
                       max_out_of_orderness_ms=1_000,
                       delivery_guarantee="at-least-once", jars=jar_urls, churn_model="off",
                       idleness_ms=3_600_000, quiet_release_ms=0, **overrides)
    return make
