"""Segments as data: the segment grammar and compiler, the condition tree and its evaluation.

``compiler`` validates segment documents and compiles them, ``conditions`` holds the compiled
condition tree, ``Segment`` and ``evaluate``, ``updates`` the segment <-> DefinitionUpdate
conversions and ``SegmentRegistry``. The grammar, time semantics and change policy are in
``SEGMENTS.md`` next to this file.
"""
