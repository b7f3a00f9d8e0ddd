"""The reference sender, ``nudgeflow sender``.

Delivers the trigger topics to a channel adapter, P0 first, deduplicated (``sender``).
"""
