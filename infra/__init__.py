"""Everything that starts, provisions or deploys the real parts nudgeflow runs on.

Kafka, Cassandra, Redis and a Flink session cluster are started on loopback by
``nudgeflow stack``; their jars are resolved from Maven Central (see ``infra/jars/*/pom.xml``).
"""
