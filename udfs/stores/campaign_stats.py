"""The per-campaign statistics in Redis: written by the job, read by ``nudgeflow report``.

One hash, ``<prefix>:campaign-stats`` (``udfs.stores.keys.campaign_stats``): campaign or
journey id -> its ``udfs.attribution.stats`` document as JSON. The job writes a unit's whole
document at most once a second (``udfs.flink.campaign_stats``; an overwrite, so a repeated
write after a restore leaves the same value); the totals live in the operator's keyed state,
and Redis only serves them.
"""

from __future__ import annotations

import json
from typing import Any

from udfs.attribution.stats import UnitStats, from_doc, to_doc
from udfs.stores import connections, keys


class RedisStatsStore:
    """Writes and reads the per-campaign statistics hash."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def connect(cls, redis_url: str, prefix: str, ssl_ca_file: str = "") -> RedisStatsStore:
        """A store on a new client (call from the operator's ``open()``)."""
        return cls(connections.redis_client(redis_url, ssl_ca_file, socket_timeout=5,
                                            socket_connect_timeout=5), prefix)

    def write(self, stats: UnitStats) -> None:
        """Replace one unit's document."""
        self.client.hset(keys.campaign_stats(self.prefix), stats.unit,
                         json.dumps(to_doc(stats), separators=(",", ":")))

    def read_all(self) -> dict[str, UnitStats]:
        """Every unit's statistics, by unit id (empty when none were written)."""
        raw = self.client.hgetall(keys.campaign_stats(self.prefix))
        out = {}
        for unit, value in raw.items():
            stats = from_doc(json.loads(value))
            out[unit.decode() if isinstance(unit, bytes) else unit] = stats
        return out

    def close(self) -> None:
        """Release the client's connections."""
        self.client.close()


class StatsStoreFactory:
    """Creates the statistics operator's store in ``open()`` (picklable: it travels in the job)."""

    def __init__(self, redis_url: str, prefix: str, ssl_ca_file: str = "") -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.ssl_ca_file = ssl_ca_file

    def __call__(self) -> RedisStatsStore:
        """A connected store."""
        return RedisStatsStore.connect(self.redis_url, self.prefix, self.ssl_ca_file)
