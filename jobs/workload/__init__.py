"""The seeded synthetic workload.

Users and click events (``workload``, pure) and writing them to Kafka (``generate``, behind
``nudgeflow generate``); a simulated audience answering the job's triggers (``responses``,
pure) and reading and writing those through Kafka (``respond``, behind ``nudgeflow respond``).
"""
