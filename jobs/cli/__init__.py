"""The ``nudgeflow`` command.

Its parser and subcommands (``main``), definition publishing (``defs``) and the live summary
(``monitor``).
"""
