"""The ``nudgeflow`` command.

Its parser and subcommands (``main``), definition publishing (``defs``), the live summary
(``monitor``) and what it hands the job and the stack from ``infra`` (``wiring``: the job's jars,
local-run settings, provisioning from a configuration).
"""
