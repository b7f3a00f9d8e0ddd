"""The benchmark, ``nudgeflow bench``.

The run (``bench``), its report, JSON, plot and README section (``report``) and the
pass-through job it measures the ceiling with (``ceiling_job``).
"""
