"""A local run's JVM may write to its stderr without limit (``jobs.env.drain_gateway_stderr``).

PyFlink starts the MiniCluster's JVM with its stderr on a pipe it never reads; once 64 KiB sit
in that pipe, the next write blocks, and the job with it. The JVM here is the real one PyFlink
launches, in a fresh interpreter (a gateway is one per process: one started earlier by another
test would not show the launcher's behaviour)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LINE = "stderr-line-" + "x" * 1000
LINES = 512  # ~0.5 MiB: eight times what a pipe holds

SCRIPT = f"""
import sys, time
from jobs.config import load_config, replace
from jobs.env import create_env
from pyflink.java_gateway import get_gateway

create_env(replace(load_config(env={{}}), jars=sys.argv[1]), local=True)
err = get_gateway().jvm.java.lang.System.err
for _ in range({LINES}):
    err.println("{LINE}")
print("all written", flush=True)
time.sleep(2)  # the copying thread empties the pipe's last 64 KiB
"""


def test_the_jvm_of_a_local_run_writes_more_to_stderr_than_a_pipe_holds(jar_urls):
    # without the copy, the 65th line blocks in the JVM for good and this times out
    run = subprocess.run([sys.executable, "-c", SCRIPT, jar_urls], capture_output=True,
                         timeout=240, cwd=ROOT)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
    assert b"all written" in run.stdout
    # what the JVM wrote reaches this process's stderr (the terminal, or a tool's log)
    assert run.stderr.count(LINE.encode()) >= LINES - 64
