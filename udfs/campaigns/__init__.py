"""Campaign triggers: campaigns and the priority policy as data, and per-user arbitration.

``grammar`` holds the definition types and the words of the grammar, ``compiler`` validates
campaign and policy documents, ``updates`` converts them to and from DefinitionUpdates and holds
their registries, ``priority`` is the priority matrix, ``local_time`` the time-zone rules
(quiet hours, cap windows) and ``arbitration`` decides, per user, what is sent, deferred or
suppressed (with the campaign state and its codec). The rules are in ``CAMPAIGNS.md`` next to
this file.
"""
