"""Behavioural features of one user (the former udfs/features.py, now udfs/features/state.py).

Temporary for this one commit, so that the move stays a plain rename in history: re-exports
udfs.features.state. The next commit splits it into spec, state, vector and codec modules and
empties this file.
"""

from udfs.features.state import *  # noqa: F403
from udfs.features.state import _TYPE_INDEX  # noqa: F401
