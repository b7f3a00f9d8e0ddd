"""The seeded synthetic workload.

Users and click events (``workload``, pure) and writing them to Kafka (``generate``, behind
``nudgeflow generate``).
"""
