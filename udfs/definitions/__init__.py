"""What every kind of definition (segment, campaign, priority policy) shares.

The vocabulary read from the Avro contracts, durations, diagnostics (``DefinitionError``), the
YAML-with-line-numbers loader, the base compiler, the DefinitionUpdate envelope, the versioned
registry and the hub of all kinds (``Registries``), and reading definition files of every kind.
The grammar of each kind lives in its own package (``udfs.segments``, ``udfs.campaigns``).
"""
