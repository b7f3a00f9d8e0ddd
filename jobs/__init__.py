"""nudgeflow's Flink job and the command-line apps around it.

The job: ``job`` (the graph and its entry point), ``env`` (the execution environment),
``connectors`` (Kafka sources and sinks), ``config`` (the configuration) and ``names`` (operator
uids). They import no ``infra`` and no ``models``: whatever comes from the machine (jar URLs,
the churn model, local settings) reaches the job through its configuration and arguments.
The command-line apps, which may use ``infra``: ``cli`` (the ``nudgeflow`` command), ``sender``
(the reference sender), ``bench`` (the benchmark) and ``workload`` (the synthetic workload).
"""
