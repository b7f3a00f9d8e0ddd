"""What runs inside the job's operators.

Pure domain modules (no ``pyflink`` import; unit-tested without a JVM) and ``udfs.functions``,
the thin PyFlink adapters that load state, call them, store state and emit.
"""
