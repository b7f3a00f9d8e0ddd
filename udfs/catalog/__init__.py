"""The catalog: definitions of every kind, as shipped files and as the set in force.

- ``udfs.catalog.files``: read, validate and load definition files of every kind (segments,
  campaigns, the priority policy); the shipped catalog (``segments/``, ``campaigns/``,
  ``priority-policy.yaml`` in this folder).
- ``udfs.catalog.registries``: ``Registries``, the definitions in force, one versioned registry
  per kind; what the engine keeps and applies DefinitionUpdates to.

It sits above ``udfs.definitions`` (what every kind shares) and the kinds themselves
(``udfs.segments``, ``udfs.campaigns``), so no package below it imports it.
"""
