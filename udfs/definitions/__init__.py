"""What every kind of definition (segment, campaign, priority policy) shares.

The vocabulary read from the Avro contracts, durations, comparisons and event filters,
diagnostics (``DefinitionError``, did-you-mean), the YAML-with-line-numbers loader, the base
compiler, the DefinitionUpdate envelope (kinds, checksum, identity) and the generic versioned
registry. The grammar of each kind lives in its own package (``udfs.segments``,
``udfs.campaigns``); the hub of all kinds and reading definition files are ``udfs.catalog``.
"""
