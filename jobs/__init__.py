"""nudgeflow's job entry points, configuration, connector factories and command line."""
