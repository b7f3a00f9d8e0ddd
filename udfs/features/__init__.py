"""Behavioural features of one user: spec, state and update, vector and view, state encoding.

Submodules (import names from them; this package re-exports nothing): ``spec`` (event types,
sources, horizons, FEATURE_SPEC, bounds), ``state`` (UserFeatures and ``update``), ``vector``
(``vector``, ``vector_list``, FeatureView), ``view`` (the UserView contract segments read, and
RecentEvent), ``codec`` (``encode_state``/``decode_state`` for Flink keyed state, with the Avro
schema ``schemas/UserFeaturesState.avsc``). FEATURES.md here is the written spec.
"""
