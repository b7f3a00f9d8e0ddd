"""The benchmark, ``nudgeflow bench``.

The run (``bench``), its report, JSON, plot and the results section of docs/performance.md
(``report``), and the pass-through job it measures the ceiling with (``ceiling_job``).
"""
