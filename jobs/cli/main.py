"""``nudgeflow``: the one command for everything a person runs.

Subcommands:
  stack     start, stop, inspect the local Kafka, Cassandra, Redis and Flink (no Docker)
  run       run the job: on the stack's Flink cluster (default) or in-process (--local)
  jobs      list, cancel or stop (with a savepoint) the jobs on the Flink cluster
  generate  write a seeded synthetic workload (users, clicks) to Kafka
  defs      validate, publish, delete and list definitions; schema: JSON Schema of the YAML;
            what-if: try candidate definitions on history, next to the live ones
  segments  sizes: live segment sizes and when each changed; members ID: a segment's users
  journeys  show FILE: a journey as a picture (PNG) and Graphviz DOT, with live counts
            (--metrics)
  jars      resolve the Java dependencies from Maven Central into the cache
  package   build the job archive (code, catalog, churn model, manifest) for `flink run` and
            the image
  native    compile the engine's hot modules with mypyc (done by itself before a run)
  sender    deliver the trigger topics to a channel adapter, P0 first (reference consumer)
  sender-budgets  set, show or clear a sender group's per-channel send budgets (Redis)
  respond   a seeded simulated audience: opens, clicks, unsubscribes and purchases in answer
            to the triggers (for tests and demos)
  stores    rebuild-redis: rebuild the Redis membership cache from Cassandra
  drills    the fault drills on the local stack (kill -9, server outages, fuzzed records,
            invalid bursts; --quick: CI's form)
  bench     measure throughput, latency, cost per stage and resources (--quick: < 3 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from jobs.config import (
    ConfigError,
    NudgeflowConfig,
    add_config_arguments,
    config_from_args,
)


def _say(message: str) -> None:
    print(message, flush=True)


def _fail(message: str, code: int = 1) -> int:
    print(f"nudgeflow: error: {message}", file=sys.stderr, flush=True)
    return code


# --- stack --------------------------------------------------------------------------------------


def cmd_stack(args: argparse.Namespace) -> int:
    """``nudgeflow stack up|down|status|logs|provision``."""
    from infra import stack
    from infra.paths import StackPaths
    from jobs.cli import wiring

    paths = StackPaths.from_env()
    if args.taskmanagers is not None:
        if args.action != "up":
            return _fail("--taskmanagers applies to `stack up` only")
        from infra.servers.flink import MAX_TASKMANAGERS, set_taskmanager_count

        if not 1 <= args.taskmanagers <= MAX_TASKMANAGERS:
            return _fail(f"--taskmanagers must be 1..{MAX_TASKMANAGERS}, got {args.taskmanagers}")
        set_taskmanager_count(paths, args.taskmanagers)
        # fewer than before: the ones above the new count stop
        extra = stack.default_servers(paths, MAX_TASKMANAGERS)[
            len(stack.default_servers(paths)):]
        stack.down(paths, extra, say=_say)
    servers = stack.select(stack.default_servers(paths), args.servers)
    cfg = config_from_args(args)
    if args.action == "up":
        _say(f"nudgeflow stack up (state in {paths.stack})")
        started = time.monotonic()
        stack.up(paths, servers, say=_say)
        if not args.no_provision:
            names = {s.name for s in servers}
            if "kafka" in names:
                wiring.provision_topics(cfg, say=_say)
            if "cassandra" in names:
                wiring.provision_cassandra(cfg, say=_say)
        _say(f"stack ready in {time.monotonic() - started:.1f} s; "
             f"Flink web UI: {cfg.flink_rest_url}")
    elif args.action == "down":
        stopped = stack.down(paths, servers, say=_say)
        _say(f"stopped {len(stopped)} server(s)" if stopped else "nothing was running")
    elif args.action == "status":
        _say(stack.format_status(stack.status(paths, servers)))
    elif args.action == "logs":
        for server in servers:
            _say(f"==> {server.log_file(paths)} <==")
            stack.tail_log(server, paths, args.lines, follow=args.follow and len(servers) == 1)
    elif args.action == "provision":
        wiring.provision_topics(cfg, say=_say)
        wiring.provision_cassandra(cfg, say=_say)
    return 0


# --- run / jobs ---------------------------------------------------------------------------------


_SECRET_FIELDS = {f.name for f in dataclasses.fields(NudgeflowConfig) if f.metadata["secret"]}


def _job_args(args: argparse.Namespace) -> list[str]:
    """The job's own flags, forwarded from ``nudgeflow run``'s configuration flags.

    Secrets are never forwarded as flags (they would show in ``ps`` and in Flink's job
    arguments); ``_secret_env`` hands them over through the environment instead.
    """
    forwarded: list[str] = []
    if args.config:
        forwarded += ["--config", str(Path(args.config).resolve())]
    for name, value in vars(args).items():
        field_name = name[4:]
        if name.startswith("cfg_") and value is not None and field_name not in _SECRET_FIELDS:
            forwarded += [f"--{field_name.replace('_', '-')}", str(value)]
    if args.bounded:
        forwarded.append("--bounded")
    return forwarded


def _secret_env(cfg: NudgeflowConfig) -> dict[str, str]:
    """This process's environment plus the configuration's secrets as NUDGEFLOW_* variables."""
    env = dict(os.environ)
    for name in _SECRET_FIELDS:
        value = getattr(cfg, name)
        if value:
            env[f"NUDGEFLOW_{name.upper()}"] = str(value)
    return env


def _is_local(rest_url: str) -> bool:
    """Whether a REST URL is the local stack's Flink cluster (loopback)."""
    from urllib.parse import urlparse

    return urlparse(rest_url).hostname in {"127.0.0.1", "localhost"}


def cmd_run(args: argparse.Namespace) -> int:
    """``nudgeflow run [--local] [--bounded] [--no-watch]``.

    The jars (resolved with Maven if needed) and, for ``--local``, the checkpoint directory and
    the Prometheus reporter's settings go to the job as configuration flags
    (``jobs.cli.wiring``) unless the configuration sets them.
    """
    from jobs.cli import monitor, wiring

    if args.allow_non_restored_state and not args.from_savepoint:
        return _fail("--allow-non-restored-state applies only with --from-savepoint")
    if args.local and args.from_savepoint:
        return _fail("--from-savepoint starts a job on a Flink cluster (the stack's or yours); "
                     "a --local MiniCluster starts with empty state: drop --local")
    cfg = config_from_args(args)
    _say(f"configuration: {cfg}")
    if cfg.output_wire_format == "confluent":
        # the job registers its schemas when it starts (idempotent); asked here first, a
        # registry that refuses or cannot be reached fails in one line, before any submission
        from jobs.schema_registry import RegistryError, register_output_schemas

        try:
            ids = register_output_schemas(cfg)
        except RegistryError as exc:
            return _fail(f"output-wire-format confluent: {exc}")
        _say(f"schemas registered at {cfg.schema_registry_url}: "
             + ", ".join(f"{topic} id {schema_id}" for topic, schema_id in ids.items()))
    if args.local:
        log_path = Path(args.log).resolve()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "jobs.job", "--local", *_job_args(args),
               *wiring.local_job_flags(cfg)]
        _say(f"running the job in an embedded MiniCluster (log: {log_path}); Ctrl-C stops it")
        from infra.paths import StackPaths
        from infra.servers.flink import local_run_env

        with open(log_path, "ab") as log:
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env=local_run_env(StackPaths.from_env(), _secret_env(cfg)))
        try:
            monitor.watch(cfg, keep_going=lambda: child.poll() is None, say=_say)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
        code = child.wait()
        if code not in (0, -signal.SIGINT):
            return _fail(f"the job exited with {code}; read {log_path}")
        _say("job stopped")
        return 0

    from infra import deploy

    _say(f"submitting to the Flink cluster at {cfg.flink_rest_url} ...")
    job_args = [*_job_args(args), *wiring.cluster_job_flags(cfg)]
    job_id = deploy.submit(cfg.flink_rest_url, job_args, detached=True,
                           python_executable=args.pyexec or sys.executable,
                           env=_secret_env(cfg), local_stack=_is_local(cfg.flink_rest_url),
                           savepoint=args.from_savepoint,
                           allow_non_restored_state=args.allow_non_restored_state)
    _say(f"job {job_id} submitted; web UI: {cfg.flink_rest_url}/#/job/running/{job_id}/overview")
    _say(f"stop it with: nudgeflow jobs cancel {job_id}")
    if args.no_watch:
        return 0
    _say("live summary (Ctrl-C stops watching; the job keeps running):")

    def job_running() -> bool:
        return deploy.job_state(cfg.flink_rest_url, job_id) in {"CREATED", "INITIALIZING",
                                                                "RUNNING", "RESTARTING"}

    monitor.watch(cfg, keep_going=job_running, say=_say)
    _say(f"job {job_id} is {deploy.job_state(cfg.flink_rest_url, job_id)}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """``nudgeflow jobs [list|cancel ID|cancel --all]``."""
    from infra import deploy

    cfg = config_from_args(args)
    jobs = deploy.running_jobs(cfg.flink_rest_url)
    if args.action == "list":
        if not jobs:
            _say("no running jobs")
        for job in jobs:
            _say(f"{job['id']}  {job['state']:<12} {job['name']}")
        return 0
    targets = [j["id"] for j in jobs] if args.all else list(args.job_ids)
    if not targets:
        return _fail(f"name the job id(s) to {args.action}, or --all")
    if args.action == "stop":
        for job_id in targets:
            location = deploy.stop_with_savepoint(cfg.flink_rest_url, job_id, args.savepoint_dir)
            _say(f"stopped {job_id}; savepoint: {location}")
            _say(f"resume with: nudgeflow run --from-savepoint {location}")
        return 0
    for job_id in targets:
        deploy.cancel(cfg.flink_rest_url, job_id)
        _say(f"cancelled {job_id}")
    return 0


# --- generate / jars ----------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    """``nudgeflow generate``: a seeded synthetic workload into Kafka."""
    from jobs.workload import generate, workload

    cfg = config_from_args(args)
    spec = workload.WorkloadSpec(
        users=args.users,
        events=args.events,
        seed=args.seed,
        out_of_order_fraction=args.out_of_order,
        duplicate_fraction=args.duplicates,
        inactive_fraction=args.inactive,
    )
    # event times end just before now, so they look like live traffic to the job
    spec = dataclasses.replace(spec, start_ms=generate.recent_start_ms(spec))
    summary = generate.produce(
        spec,
        cfg.kafka_bootstrap,
        clicks_topic=cfg.clicks_topic,
        metadata_topic=cfg.user_metadata_topic,
        rate=args.rate,
        duration_s=args.duration,
        progress=not args.quiet,
        # the security settings too (bootstrap_servers is the same list)
        producer_config=cfg.python_client_kwargs(),
    )
    _say(generate.format_summary(summary))
    return 0


def cmd_defs(args: argparse.Namespace) -> int:
    """``nudgeflow defs validate|publish|delete|list|schema``."""
    from jobs.cli import defs
    from udfs.catalog.files import validate_command

    if args.action == "schema":
        import json

        from udfs.catalog.schema import definition_schema

        print(json.dumps(definition_schema(), indent=2), flush=True)
        return 0
    if args.action == "what-if":
        return cmd_what_if(args)
    if args.action == "validate":
        if not args.targets:
            return _fail("name the YAML files or directories to validate")
        if args.against_topic:
            cfg = config_from_args(args)
            published = defs.published_updates(cfg)
            code, text = validate_command(args.targets, published, cfg.definitions_topic)
        else:
            code, text = validate_command(args.targets)
        print(text, file=sys.stdout if code == 0 else sys.stderr, flush=True)
        return code
    cfg = config_from_args(args)
    now_ms = int(time.time() * 1000)  # publication time: a wall-clock fact, not event time
    if args.action == "publish":
        if not args.targets:
            return _fail("name the YAML files or directories to publish")
        code, text = validate_command(args.targets)
        if code != 0:
            print(text, file=sys.stderr, flush=True)
            return code
        count, versions = defs.publish(cfg, args.targets, args.by, now_ms, say=_say)
        _say(f"published {count} definition(s) to {cfg.definitions_topic}")
        if args.backfill:
            from jobs.cli import backfill

            try:
                report = backfill.run_backfill(
                    cfg, versions, rate=args.rate or backfill.DEFAULT_RATE,
                    metrics_urls=args.metrics or backfill.LOCAL_METRICS,
                    users_from=args.users_from,
                    progress=not args.quiet, say=_say)
            except backfill.BackfillError as exc:
                return _fail(str(exc))
            if args.json:
                import json

                print(json.dumps(report.as_dict()), flush=True)  # the last line of stdout
            else:
                _say(report.text())
    elif args.action == "delete":
        for definition_id in args.targets:
            version = defs.delete(cfg, definition_id, args.by, now_ms)
            _say(f"published DELETE of {definition_id} as v{version}")
    elif args.action == "list":
        _say(defs.listing(cfg))
    return 0


def cmd_what_if(args: argparse.Namespace) -> int:
    """``nudgeflow defs what-if FILES... --from TIME [--to TIME]`` (``jobs.cli.whatif``)."""
    import json

    from jobs.cli import whatif, whatif_report

    if not args.targets:
        return _fail("name the candidate YAML files or directories to try")
    if not args.start:
        return _fail("give --from TIME: where the report starts (ISO 8601, a date, or epoch ms)")
    cfg = config_from_args(args)
    try:
        request = whatif.WhatIfRequest(
            files=args.targets, start_ms=whatif.parse_time(args.start, "--from"),
            end_ms=whatif.parse_time(args.end, "--to") if args.end else None,
            clicks_file=Path(args.clicks_file) if args.clicks_file else None,
            samples=args.samples, progress=not args.quiet,
            keep_dir=Path(args.keep) if args.keep else None)
        comparison = whatif.what_if(cfg, request, say=lambda m: print(m, file=sys.stderr))
    except whatif.WhatIfError as exc:
        return _fail(str(exc))
    if args.plot:
        whatif_report.plot(comparison, Path(args.plot))
        print(f"plot: {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(whatif_report.to_json(comparison), indent=2), flush=True)
    else:
        print(whatif_report.render_text(comparison), flush=True)
    return 0


def cmd_jars(args: argparse.Namespace) -> int:
    """``nudgeflow jars``: resolve every component's jars now (CI and first installs)."""
    from infra.jars import COMPONENTS, ensure_jars

    for component in args.components or COMPONENTS:
        _say(f"{component}: {ensure_jars(component)}")
    return 0


def cmd_native(args: argparse.Namespace) -> int:
    """``nudgeflow native [--check]``: build the compiled engine modules; say whether they load."""
    from infra import native as native_build
    from udfs import native

    if args.check:
        reason = native_build.not_current()
        _say("the compiled engine modules are current" if reason is None else
             f"the compiled engine modules are not current: {reason}")
        return 0 if reason is None else 1
    try:
        target = native_build.build(say=_say)
    except native_build.NativeBuildError as exc:
        raise SystemExit(f"nudgeflow native: {exc}") from None
    _say(f"{target}: {len(native.MODULES)} modules; new processes load them while the sources "
         f"stay as they are ({native.ENV}=off runs them as Python)")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    """``nudgeflow package [--out DIR]``: the job archive and its requirements file."""
    from infra.package import package, read_manifest

    archive, requirements = package(Path(args.out))
    meta = read_manifest(archive)
    _say(f"{archive}: nudgeflow {meta['version']}, build {meta['build'][:12]}, "
         f"{len(meta['files'])} files")
    _say(f"{requirements}: the runtime dependencies the image installs")
    _say(f"ship it with: flink run -pym jobs.job -pyfs {archive} ...; or build the image: "
         "docker build -f infra/docker/Dockerfile . (docs/operations.md)")
    return 0


# --- drills -------------------------------------------------------------------------------------


def cmd_drills(args: argparse.Namespace) -> int:
    """``nudgeflow drills [--quick]``: the drill suite (tests/drills) under pytest.

    The full form (5 TaskManager kills, minute-long outages, 100,000 fuzzed records) unless
    ``--quick``; prints the drill table at the end.
    """
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "NUDGEFLOW_DRILLS": "quick" if args.quick else "full"}
    cmd = [sys.executable, "-m", "pytest", str(repo / "tests" / "drills"), "-m", "drills",
           "-p", "no:cacheprovider", "-s", "-q", *(["-k", args.select] if args.select else [])]
    return subprocess.run(cmd, cwd=repo, env=env, check=False).returncode


# --- stores -------------------------------------------------------------------------------------


def cmd_stores(args: argparse.Namespace) -> int:
    """``nudgeflow stores rebuild-redis``: Redis's membership keys from Cassandra, now."""
    import redis

    from jobs.cli import wiring
    from udfs.stores import rebuild

    cfg = config_from_args(args)
    _say(f"rebuilding Redis prefix {cfg.redis_key_prefix!r} from Cassandra keyspace "
         f"{cfg.cassandra_keyspace!r} ...")
    try:
        session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    except Exception as exc:  # noqa: BLE001 - one clear line
        return _fail(f"cannot connect to Cassandra at {cfg.cassandra_hosts}:"
                     f"{cfg.cassandra_port} ({exc}); is it running? (`nudgeflow stack status`)")
    client = wiring.redis_client(cfg, socket_timeout=30)
    try:
        rebuild.ensure_rebuilt(session, cfg.cassandra_keyspace, client, cfg.redis_key_prefix,
                               force=True, say=_say)
    except redis.RedisError as exc:
        return _fail(f"Redis at {cfg.redis_url.split('@')[-1]} failed during the rebuild "
                     f"({exc}); it is idempotent: run it again once Redis answers")
    finally:
        session.cluster.shutdown()
        client.close()
    return 0


# --- segments -----------------------------------------------------------------------------------


def cmd_segments(args: argparse.Namespace) -> int:
    """``nudgeflow segments sizes`` | ``nudgeflow segments members ID [--limit N]``."""
    import redis
    from cassandra.cluster import NoHostAvailable

    from jobs.cli import segments

    cfg = config_from_args(args)
    if args.action == "members" and not args.segment:
        return _fail("name the segment: nudgeflow segments members SEGMENT_ID [--limit N]", 2)
    if args.action == "sizes" and args.segment:
        return _fail("`segments sizes` lists every segment; for one segment's users use "
                     f"`segments members {args.segment}`", 2)
    if args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}", 2)
    try:
        if args.action == "sizes":
            print(segments.sizes(cfg, int(time.time() * 1000)))
        else:
            print(segments.members(cfg, args.segment, args.limit))
    except redis.RedisError as exc:
        return _fail(f"Redis at {cfg.redis_url.split('@')[-1]} did not answer ({exc}); is it "
                     "running? (`nudgeflow stack status`)")
    except NoHostAvailable as exc:
        return _fail(f"cannot reach Cassandra at {cfg.cassandra_hosts}:{cfg.cassandra_port} "
                     f"({exc}); is it running? (`nudgeflow stack status`)")
    return 0


# --- journeys -----------------------------------------------------------------------------------


def cmd_journeys(args: argparse.Namespace) -> int:
    """``nudgeflow journeys show FILE [--out PNG] [--dot DOT] [--metrics URL]``."""
    from jobs.cli import journeys

    try:
        return journeys.show(args.file, out=args.out, dot=args.dot, metrics=args.metrics or ())
    except journeys.JourneyShowError as exc:
        return _fail(str(exc))


def cmd_report(args: argparse.Namespace) -> int:
    """``nudgeflow report campaigns [--out PNG] [--json]``: sends, conversions and lift."""
    from jobs.cli import report

    cfg = config_from_args(args)
    try:
        stats = report.read_stats(cfg)
    except Exception as exc:  # noqa: BLE001 - the store's errors, said to the user
        return _fail(f"could not read the campaign statistics from Redis at {cfg.redis_url} "
                     f"(prefix {cfg.redis_key_prefix!r}): {exc}; is the stack up "
                     "(`nudgeflow stack up`)?")
    return report.campaigns(stats, Path(args.out) if args.out else None, args.json)


# --- sender -------------------------------------------------------------------------------------


def cmd_sender(args: argparse.Namespace) -> int:
    """``nudgeflow sender``: deliver triggers to a channel adapter, P0 first, deduplicated."""
    from jobs.sender import sender

    cfg = config_from_args(args)
    try:
        options = sender.options_from_args(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        sender.run_sender(cfg, options, sender.load_adapter(options.adapter), say=_say)
    except sender.SenderError as exc:
        return _fail(str(exc))
    return 0


def cmd_sender_budgets(args: argparse.Namespace) -> int:
    """``nudgeflow sender-budgets``: set, show or clear a sender group's send budgets.

    The budgets live in Redis (``<prefix>:budgets:<group>``); running senders of the group read
    them at their next admission, so this changes them at runtime.
    """
    from jobs.cli import wiring
    from jobs.sender.budgets import BudgetError, RedisBudgets, budgets_text, parse_budget

    cfg = config_from_args(args)
    try:
        parsed = dict(parse_budget(text) for text in args.budgets) if args.action == "set" \
            else {}
    except BudgetError as exc:
        return _fail(str(exc), 2)
    if args.action == "set" and not parsed:
        return _fail("sender-budgets set needs at least one CHANNEL=COUNT/UNIT[@BURST]", 2)
    if args.action == "clear" and not args.budgets:
        return _fail("sender-budgets clear needs the channels to clear (e.g. SMS EMAIL)", 2)
    try:
        budgets = RedisBudgets(wiring.redis_client(cfg, socket_timeout=5),
                               cfg.redis_key_prefix, args.group)
        if args.action == "set":
            budgets.set(parsed)
        elif args.action == "clear":
            budgets.remove(args.budgets)
        current = budgets.get()
    except Exception as exc:  # noqa: BLE001 - any client error is reported the same way
        return _fail(f"cannot reach the budgets in Redis at {cfg.describe()['redis_url']}: "
                     f"{exc}; is Redis up (`nudgeflow stack status`)?")
    print(f"send budgets of sender group {args.group}:")
    for channel, limits in sorted(current.items()):
        print(f"  {channel:<12}{budgets_text(limits)}")
    if not current:
        print("  (none: every channel unlimited)")
    return 0


# --- respond ------------------------------------------------------------------------------------


def cmd_respond(args: argparse.Namespace) -> int:
    """``nudgeflow respond``: a seeded simulated audience answering the job's triggers."""
    from jobs.workload import respond

    cfg = config_from_args(args)
    try:
        spec, options = respond.options_from_args(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    _say(f"responder: seed {spec.seed}, group {options.group}, release {options.release}, "
         f"reading {', '.join(cfg.trigger_topics().values())} and "
         f"{cfg.trigger_decisions_topic}, writing {cfg.outcomes_topic} and {cfg.clicks_topic}")
    try:
        counts = respond.run_responder(cfg, spec, options.idle_exit_s, progress=True,
                                       group=options.group, release=options.release, say=_say)
    except respond.ResponderError as exc:
        return _fail(str(exc))
    _say(respond.format_counts(counts))
    return 0


# --- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``nudgeflow`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nudgeflow",
        description="nudgeflow: real-time segments and priority-tagged campaign triggers on "
        "Apache Flink.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `nudgeflow <command> --help` for a command's options. "
        "Configuration flags fall back to NUDGEFLOW_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    stack_p = sub.add_parser("stack", help="start/stop/inspect the local Kafka, Cassandra, Redis, "
                             "Prometheus, schema registry and Flink")
    stack_p.add_argument("action", choices=["up", "down", "status", "logs", "provision"])
    stack_p.add_argument("servers", nargs="*", help="only these servers (kafka, cassandra, redis, "
                         "prometheus, registry, flink); default: all")
    stack_p.add_argument("--no-provision", action="store_true",
                         help="up: do not create topics and tables")
    stack_p.add_argument("--taskmanagers", type=int, metavar="N",
                         help="up: run N Flink TaskManagers (4 slots each; kept for later "
                         "`stack` commands; default: as last set, 1 at first)")
    stack_p.add_argument("-n", "--lines", type=int, default=50, help="logs: lines to show")
    stack_p.add_argument("-f", "--follow", action="store_true", help="logs: follow one log")
    add_config_arguments(stack_p)
    stack_p.set_defaults(func=cmd_stack)

    run_p = sub.add_parser("run", help="run the job on the stack's Flink cluster or --local")
    run_p.add_argument("--local", action="store_true",
                       help="run in an embedded MiniCluster instead of submitting to the cluster")
    run_p.add_argument("--bounded", action="store_true",
                       help="stop after the clicks that are in the topic when the job starts")
    run_p.add_argument("--no-watch", action="store_true",
                       help="cluster: return after submitting instead of showing the summary")
    run_p.add_argument("--from-savepoint", metavar="LOCATION",
                       help="cluster: start from this savepoint (keeps all state; see `jobs "
                       "stop`)")
    run_p.add_argument("--allow-non-restored-state", action="store_true",
                       help="cluster, with --from-savepoint: start although the savepoint "
                       "holds state of an operator this job no longer has (that state is "
                       "dropped; without it Flink refuses the savepoint)")
    run_p.add_argument("--pyexec", help="cluster: Python interpreter on the TaskManagers "
                       "(default: this one, right for the local stack)")
    run_p.add_argument("--log", default=os.path.join(
        os.environ.get("NUDGEFLOW_HOME", os.path.expanduser("~/.nudgeflow")), "local-job.log"),
        help="--local: where the job's output goes")
    add_config_arguments(run_p)
    run_p.set_defaults(func=cmd_run)

    jobs_p = sub.add_parser("jobs", help="list, cancel or stop (with a savepoint) jobs on the "
                            "Flink cluster")
    jobs_p.add_argument("action", choices=["list", "cancel", "stop"],
                        help="stop: with a savepoint, printed for `run --from-savepoint`")
    jobs_p.add_argument("--savepoint-dir", help="stop: where to write the savepoint "
                        "(default: the cluster's execution.checkpointing.savepoint-dir)")
    jobs_p.add_argument("job_ids", nargs="*")
    jobs_p.add_argument("--all", action="store_true", help="cancel: every running job")
    add_config_arguments(jobs_p)
    jobs_p.set_defaults(func=cmd_jobs)

    gen_p = sub.add_parser("generate", help="write a seeded synthetic workload to Kafka")
    gen_p.add_argument("--users", type=int, default=1000, help="number of users (default 1000)")
    gen_p.add_argument("--events", type=int, default=100_000,
                       help="click events to send, duplicates included (default 100000)")
    gen_p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    gen_p.add_argument("--rate", type=float, help="events per second (default: as fast as "
                       "possible)")
    gen_p.add_argument("--duration", type=float, help="stop after this many seconds")
    gen_p.add_argument("--out-of-order", type=float, default=0.02,
                       help="fraction of events sent out of event-time order (default 0.02)")
    gen_p.add_argument("--duplicates", type=float, default=0.01,
                       help="fraction of events sent twice with the same event id (default 0.01)")
    gen_p.add_argument("--inactive", type=float, default=0.1,
                       help="fraction of users who go inactive partway (default 0.1)")
    gen_p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(gen_p)
    gen_p.set_defaults(func=cmd_generate)

    defs_p = sub.add_parser("defs", help="validate, publish, delete and list definitions "
                            "(YAML: segments, campaigns, journeys, priority policy, currency "
                            "rates); schema: the JSON Schema of the YAML, for editors")
    defs_p.add_argument("action", choices=["validate", "publish", "delete", "list", "schema",
                                           "what-if"])
    defs_p.add_argument("targets", nargs="*", help="validate/publish/what-if: YAML files or "
                        "directories; delete: definition ids")
    defs_p.add_argument("--from", dest="start", metavar="TIME",
                        help="what-if: where the report starts, in event time (ISO 8601 such "
                        "as 2026-11-30T12:00Z, a date, or epoch ms); the history before it "
                        "still builds state")
    defs_p.add_argument("--to", dest="end", metavar="TIME",
                        help="what-if: where the report ends (default: the history's last click)")
    defs_p.add_argument("--clicks-file", metavar="FILE",
                        help="what-if: replay the ClickEvents of this JSON-lines or Avro "
                        "container file instead of the clicks topic (metadata still comes from "
                        "the user-metadata topic)")
    defs_p.add_argument("--json", action="store_true", help="what-if, publish --backfill: the "
                        "report as JSON (--backfill: its last line of output)")
    defs_p.add_argument("--plot", metavar="PNG", help="what-if: also draw audience sizes and "
                        "triggers over time, live vs live + candidate, into this PNG")
    defs_p.add_argument("--samples", type=int, default=5,
                        help="what-if: sample triggers of the candidates to show")
    defs_p.add_argument("--keep", metavar="DIR", help="what-if: keep each run's plan, records "
                        "and log in DIR")
    defs_p.add_argument("--quiet", action="store_true",
                        help="what-if, publish --backfill: no progress bar")
    defs_p.add_argument("--against-topic", action="store_true",
                        help="validate: also check ids, versions and segment references against "
                        "the definitions control topic (needs Kafka)")
    defs_p.add_argument("--backfill", action="store_true",
                        help="publish: then re-evaluate every known user against the published "
                        "definitions now, instead of at each user's next event (waits until "
                        "the running job applies them)")
    defs_p.add_argument("--rate", type=float,
                        help="publish --backfill: at most this many re-evaluation requests per "
                        "second, so live traffic keeps its latency (default 250)")
    defs_p.add_argument("--users-from", choices=["all", "metadata"], default="all",
                        help="publish --backfill: the known users: all (default: every user "
                        "with metadata on the user-metadata topic or a membership row in "
                        "Cassandra) or metadata (the topic alone)")
    defs_p.add_argument("--metrics", metavar="URL", action="append",
                        help="publish --backfill: a Flink Prometheus reporter's page to follow "
                        "the engine's answers on; repeat it for each TaskManager (default: the "
                        "local stack's, ports 9249-9259)")
    defs_p.add_argument("--by", default=os.environ.get("USER"),
                        help="publish/delete: who publishes (recorded in the update)")
    add_config_arguments(defs_p)
    defs_p.set_defaults(func=cmd_defs)

    segments_p = sub.add_parser("segments", help="sizes: every segment's live size and when "
                                "it last changed (Redis); members ID: its users (Cassandra)")
    segments_p.add_argument("action", choices=["sizes", "members"])
    segments_p.add_argument("segment", nargs="?", help="members: the segment id")
    segments_p.add_argument("--limit", type=int, default=20,
                            help="members: at most this many users (default 20)")
    add_config_arguments(segments_p)
    segments_p.set_defaults(func=cmd_segments)

    report_p = sub.add_parser("report", help="campaigns: sends, conversions, holdouts and "
                              "measured lift per campaign and journey (table, --json, --out PNG)")
    report_p.add_argument("what", choices=["campaigns"])
    report_p.add_argument("--out", help="also draw the lift and conversions to this PNG")
    report_p.add_argument("--json", action="store_true", help="print JSON, not a table")
    add_config_arguments(report_p)
    report_p.set_defaults(func=cmd_report)

    journeys_p = sub.add_parser("journeys", help="show FILE: a journey as a picture (PNG, "
                                "no Graphviz needed) and as Graphviz DOT text, with its live "
                                "per-node counts (--metrics)")
    journeys_p.add_argument("action", choices=["show"], help="show: print the DOT text and "
                            "write the picture")
    journeys_p.add_argument("file", help="a journey YAML file (kind: journey)")
    journeys_p.add_argument("--out", metavar="PATH.png", help="where to write the picture "
                            "(default: <journey id>.png in the current directory)")
    journeys_p.add_argument("--dot", metavar="PATH.dot", help="write the DOT text there "
                            "instead of to stdout")
    journeys_p.add_argument("--metrics", metavar="URL", action="append",
                            help="a Flink Prometheus reporter's page, e.g. "
                            "http://127.0.0.1:9249/metrics: show the journey's per-node "
                            "counters (summed over subtasks); repeat it for each TaskManager")
    journeys_p.set_defaults(func=cmd_journeys)

    from infra.jars import COMPONENTS

    jars_p = sub.add_parser("jars", help="resolve the Java dependencies from Maven Central")
    jars_p.add_argument("components", nargs="*",
                        help=f"{', '.join(COMPONENTS)} (default: all)")
    jars_p.set_defaults(func=cmd_jars)

    package_p = sub.add_parser("package", help="build the job archive (jobs, udfs with the "
                               "catalog, schemas, the churn model, a manifest) for `flink run "
                               "-pyfs` and the image")
    package_p.add_argument("--out", default="dist", help="the directory to write "
                           "nudgeflow-job-<version>.zip and requirements.txt to (default: dist)")
    package_p.set_defaults(func=cmd_package)

    native_p = sub.add_parser("native", help="compile the engine's hot modules with mypyc into "
                              "udfs/_native (nudgeflow run and bench do it by themselves)")
    native_p.add_argument("--check", action="store_true",
                          help="only say whether the build is current (exit 1 when not)")
    native_p.set_defaults(func=cmd_native)

    from jobs.sender.sender import add_sender_arguments

    sender_p = sub.add_parser("sender", help="deliver the trigger topics to a channel adapter, "
                              "P0 first, deduplicated (reference consumer)")
    add_sender_arguments(sender_p)
    add_config_arguments(sender_p)
    sender_p.set_defaults(func=cmd_sender)

    from jobs.sender.sender import BUDGET_HELP, DEFAULT_GROUP, ENV_PREFIX

    budgets_p = sub.add_parser("sender-budgets", help="set, show or clear a sender group's "
                               "per-channel send budgets (kept in Redis, read by running "
                               "senders at every admission)")
    budgets_p.add_argument("action", choices=["set", "show", "clear"])
    budgets_p.add_argument("budgets", nargs="*", metavar="CHANNEL=LIMITS",
                           help=f"set: {BUDGET_HELP}; clear: the channels to clear")
    budgets_p.add_argument("--group", default=os.environ.get(ENV_PREFIX + "GROUP", DEFAULT_GROUP),
                           help=f"the sender group [env: {ENV_PREFIX}GROUP] "
                           f"[default: {DEFAULT_GROUP!r}]")
    add_config_arguments(budgets_p)
    budgets_p.set_defaults(func=cmd_sender_budgets)

    from jobs.workload.respond import add_respond_arguments

    respond_p = sub.add_parser("respond", help="a seeded simulated audience: opens, clicks, "
                               "unsubscribes and purchases in answer to the triggers and "
                               "holdouts (for tests and demos)")
    add_respond_arguments(respond_p)
    add_config_arguments(respond_p)
    respond_p.set_defaults(func=cmd_respond)

    stores_p = sub.add_parser("stores", help="rebuild-redis: rebuild the Redis membership "
                              "cache (user sets, segment sizes, churn hashes) from Cassandra")
    stores_p.add_argument("action", choices=["rebuild-redis"])
    add_config_arguments(stores_p)
    stores_p.set_defaults(func=cmd_stores)

    drills_p = sub.add_parser("drills", help="the fault drills on the local stack: TaskManager "
                              "kill -9, Kafka/Cassandra/Redis outages, 100,000 fuzzed "
                              "records, invalid bursts (--quick: CI's form)")
    drills_p.add_argument("--quick", action="store_true",
                          help="the reduced form CI runs (fewer kills, shorter outages)")
    drills_p.add_argument("-k", dest="select", help="only drills whose name matches (pytest -k)")
    drills_p.set_defaults(func=cmd_drills)

    from jobs.bench.bench import add_bench_arguments, run_bench

    bench_p = sub.add_parser("bench", help="measure throughput, latency, cost per stage and "
                             "resources against the machine's ceiling (--quick: < 3 min)")
    add_bench_arguments(bench_p)
    bench_p.set_defaults(func=run_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nudgeflow`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        return _fail(f"configuration: {exc}", 2)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI turns known failures into one clear line
        from infra.deploy import DeployError
        from infra.jars import JarResolutionError
        from infra.package import PackageError
        from infra.provision import ProvisionError
        from infra.stack import StackError
        from jobs.cli.defs import PublishError
        from udfs.definitions.diagnostics import DefinitionError

        if isinstance(exc, StackError | DeployError | ProvisionError | JarResolutionError |
                      PublishError | PackageError):
            return _fail(str(exc))
        if isinstance(exc, DefinitionError):
            return _fail(segments_errors(exc))
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            # kafka-python says "Unable to bootstrap" for a broker that is down, unreachable or
            # refused the login alike
            return _fail(f"Kafka did not answer ({type(exc).__name__}: {exc}). Check "
                         "--kafka-bootstrap and that the brokers run, then the security "
                         "settings (protocol, SASL mechanism, user and password, CA file): a "
                         "rejected login looks the same from here")
        raise


def segments_errors(exc: Exception) -> str:
    """Render definition errors as ``file:path: message`` lines."""
    from udfs.definitions.diagnostics import format_errors

    return "invalid definitions:\n" + format_errors(getattr(exc, "errors", ()))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "build_parser", "NudgeflowConfig"]
