"""Tests for jobs.cli.main: the parser, the flags forwarded to the job, and how errors are reported.

Nothing here reaches a server: the commands exercised fail on their configuration before any
connection, or only read pid files in a temporary NUDGEFLOW_HOME.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from jobs.cli import main as cli
from jobs.cli.main import _job_args, build_parser, main
from jobs.config import add_config_arguments, config_from_args


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("NUDGEFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NUDGEFLOW_HOME", str(tmp_path / "home"))


def _help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


# --- parser -------------------------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help_text(["--help"], capsys)
    assert text.startswith("usage: nudgeflow")
    for command in ("stack", "run", "jobs", "generate", "jars", "respond"):
        assert f" {command} " in text
    assert "NUDGEFLOW_* environment variables" in text


def test_stack_status_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help_text(["stack", "status", "--help"], capsys)
    assert text.startswith("usage: nudgeflow stack")
    assert "{up,down,status,logs,provision}" in text
    assert "--no-provision" in text
    assert "--kafka-bootstrap" in text
    assert "[env: NUDGEFLOW_KAFKA_BOOTSTRAP]" in text


def test_run_help_mentions_env_vars(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help_text(["run", "--help"], capsys)
    for flag in ("--local", "--bounded", "--no-watch", "--config", "--delivery-guarantee"):
        assert flag in text
    assert "[env: NUDGEFLOW_DELIVERY_GUARANTEE]" in text


def test_jars_has_no_config_flags(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help_text(["jars", "--help"], capsys)
    assert "--kafka-bootstrap" not in text


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required: <command>" in capsys.readouterr().err


def test_parser_dispatches_to_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["stack", "up", "kafka"]).func.__name__ == "cmd_stack"
    assert parser.parse_args(["run"]).func.__name__ == "cmd_run"
    assert parser.parse_args(["jobs", "list"]).func.__name__ == "cmd_jobs"
    assert parser.parse_args(["generate"]).func.__name__ == "cmd_generate"
    assert parser.parse_args(["jars"]).func.__name__ == "cmd_jars"
    args = parser.parse_args(["stack", "logs", "kafka", "redis", "-n", "7", "-f"])
    assert (args.action, args.servers, args.lines, args.follow) == (
        "logs", ["kafka", "redis"], 7, True)


# --- flags forwarded to the job -----------------------------------------------------------------


def test_job_args_forwards_only_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args([
        "run", "--local", "--no-watch", "--pyexec", "/opt/py/bin/python", "--log", "job.log",
        "--bounded", "--config", "conf/nf.yaml",
        "--parallelism", "3", "--kafka-bootstrap", "h:1", "--execution-mode", "process",
    ])
    assert _job_args(args) == [
        "--config", str(tmp_path / "conf" / "nf.yaml"),
        "--kafka-bootstrap", "h:1",
        "--parallelism", "3",
        "--execution-mode", "process",
        "--bounded",
    ]


def test_job_args_empty_without_flags() -> None:
    assert _job_args(build_parser().parse_args(["run", "--local"])) == []


def test_forwarded_args_give_the_same_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nf.yaml").write_text("consumer_group: g-file\nparallelism: 2\n")
    args = build_parser().parse_args([
        "run", "--config", "nf.yaml", "--parallelism", "4", "--delivery-guarantee",
        "at-least-once", "--checkpoint-interval-ms", "0", "--bounded",
    ])
    # the job's own parser (jobs/job.py): --local, --bounded and the configuration flags
    job_parser = argparse.ArgumentParser()
    job_parser.add_argument("--local", action="store_true")
    job_parser.add_argument("--bounded", action="store_true")
    add_config_arguments(job_parser)
    expected = config_from_args(args)
    forwarded = _job_args(args)
    monkeypatch.chdir("/")  # the job may run elsewhere: --config is absolute
    job_args = job_parser.parse_args(forwarded)
    assert job_args.bounded is True
    cfg = config_from_args(job_args)
    assert cfg == expected
    assert (cfg.consumer_group, cfg.parallelism, cfg.checkpoint_interval_ms) == ("g-file", 4, 0)


# --- errors -------------------------------------------------------------------------------------


def test_bad_choice_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--delivery-guarantee", "bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: nudgeflow run" in err
    assert "argument --delivery-guarantee: invalid choice: 'bogus'" in err


def test_invalid_config_combination_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["jobs", "list", "--delivery-guarantee", "exactly-once",
                 "--checkpoint-interval-ms", "0"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("nudgeflow: error: configuration: ")
    assert "exactly-once needs checkpoints" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_bad_env_value_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUDGEFLOW_PARALLELISM", "two")
    assert main(["jobs", "list"]) == 2
    err = capsys.readouterr().err
    assert "configuration: environment variable NUDGEFLOW_PARALLELISM" in err
    assert "'two'" in err


def test_missing_config_file_returns_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["jobs", "list", "--config", str(missing)]) == 2
    assert f"cannot read config file {missing}" in capsys.readouterr().err


def test_unknown_stack_server_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "status", "zookeeper"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nudgeflow: error: unknown server(s) zookeeper; known: kafka,")
    assert err.count("\n") == 1


def test_stack_status_of_an_empty_home(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["stack", "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["server", "state", "pid", "address", "log"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [name, "stopped", "-"]
        for name in ("kafka", "cassandra", "redis", "prometheus", "registry", "flink-jobmanager",
                     "flink-taskmanager")
    ]
    assert str(tmp_path / "home" / "stack" / "kafka" / "logs") in lines[1]


def test_secrets_travel_in_the_environment_not_in_job_arguments(monkeypatch):
    for name in [n for n in os.environ if n.startswith("NUDGEFLOW_")]:
        monkeypatch.delenv(name)
    args = cli.build_parser().parse_args(
        ["run", "--kafka-sasl-password", "s3cret", "--redis-url", "redis://:pw@h:6379/0",
         "--parallelism", "2"])
    forwarded = cli._job_args(args)
    assert "s3cret" not in " ".join(forwarded) and "pw@" not in " ".join(forwarded)
    assert forwarded == ["--parallelism", "2"]
    env = cli._secret_env(cli.config_from_args(args))
    assert env["NUDGEFLOW_KAFKA_SASL_PASSWORD"] == "s3cret"
    assert env["NUDGEFLOW_REDIS_URL"] == "redis://:pw@h:6379/0"


# --- what the command line hands the job (jobs.cli.wiring) --------------------------------------


def test_local_job_flags_fill_in_jars_checkpoints_and_reporter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from infra import jars
    from infra.servers.flink import prometheus_settings
    from jobs.cli import wiring
    from jobs.config import load_config

    monkeypatch.setattr(jars, "jar_urls", lambda component: [f"file:///j/{component}-1.jar",
                                                            f"file:///j/{component}-2.jar"])
    flags = wiring.local_job_flags(load_config(env={}))
    job_parser = argparse.ArgumentParser()
    add_config_arguments(job_parser)
    cfg = config_from_args(job_parser.parse_args(flags))
    assert cfg.jar_urls() == ["file:///j/flink-1.jar", "file:///j/flink-2.jar"]
    assert cfg.checkpoint_dir == (tmp_path / "home" / "checkpoints").resolve().as_uri()
    assert cfg.prometheus_settings_map() == prometheus_settings()
    # values the configuration sets are left alone
    own = load_config(env={}, overrides={"jars": "file:///mine.jar", "checkpoint_dir": "s3://b",
                                         "prometheus_settings": "k=v"})
    assert wiring.local_job_flags(own) == []
    assert wiring.cluster_job_flags(own) == []
    assert wiring.cluster_job_flags(load_config(env={})) == [
        "--jars", "file:///j/flink-1.jar;file:///j/flink-2.jar"]


def test_the_job_refuses_to_start_without_jars() -> None:
    from jobs.config import ConfigError, load_config
    from jobs.env import create_env

    with pytest.raises(ConfigError, match=r"no jars configured: set jars \(--jars or "
                       r"NUDGEFLOW_JARS\)"):
        create_env(load_config(env={}), local=True)


def _imported_packages(path: Path) -> set[str]:
    import ast

    packages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
    return packages


def test_layering_of_the_job() -> None:
    root = Path(__file__).resolve().parents[2]
    # the job's modules take what comes from the machine as values: no infra, no models
    for name in ("job.py", "env.py", "connectors.py", "config.py", "names.py"):
        assert not _imported_packages(root / "jobs" / name) & {"infra", "models"}, name
    # nothing below jobs/ imports it
    for package in ("infra", "schemas", "udfs"):
        for path in (root / package).rglob("*.py"):
            assert "jobs" not in _imported_packages(path), path


def test_savepoint_options_that_would_be_ignored_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--allow-non-restored-state"]) == 1
    assert "--allow-non-restored-state applies only with --from-savepoint" in \
        capsys.readouterr().err
    assert main(["run", "--local", "--from-savepoint", "file:///tmp/sp"]) == 1
    assert "a --local MiniCluster starts with empty state: drop --local" in \
        capsys.readouterr().err


def test_flink_run_passes_allow_non_restored_state_with_the_savepoint(tmp_path) -> None:
    from infra import deploy

    argv = deploy.flink_run_command("http://jm:8081", ["--parallelism", "2"], tmp_path / "a.zip",
                                    savepoint="s3://b/sp-1", allow_non_restored_state=True)
    assert argv[argv.index("-s"):argv.index("-s") + 3] == ["-s", "s3://b/sp-1", "-n"]
    assert "-n" not in deploy.flink_run_command("http://jm:8081", [], tmp_path / "a.zip",
                                                savepoint="s3://b/sp-1")
    with pytest.raises(deploy.DeployError, match="only when starting from a savepoint"):
        deploy.flink_run_command("http://jm:8081", [], tmp_path / "a.zip",
                                 allow_non_restored_state=True)


def test_a_kafka_that_does_not_answer_is_one_line_that_says_what_to_check(
        monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kafka.errors import KafkaTimeoutError

    def unreachable(args):
        raise KafkaTimeoutError("Unable to bootstrap from ['b1:9093']")

    monkeypatch.setattr(cli, "cmd_generate", unreachable)
    assert main(["generate", "--users", "1"]) == 1
    err = capsys.readouterr().err
    assert "Kafka did not answer (KafkaTimeoutError" in err and "Unable to bootstrap" in err
    assert "SASL mechanism, user and password" in err  # a refused login looks the same
    assert "Traceback" not in err


def test_run_with_the_confluent_format_fails_in_one_line_without_a_registry(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("NUDGEFLOW_")]:
        monkeypatch.delenv(name)
    # nothing listens on port 1: the check fails before anything is resolved or submitted
    code = main(["run", "--no-watch", "--output-wire-format", "confluent",
                 "--schema-registry-url", "http://127.0.0.1:1/apis/ccompat/v7",
                 "--flink-rest-url", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 1
    assert ("nudgeflow: error: output-wire-format confluent: cannot reach the schema registry "
            "at http://127.0.0.1:1/apis/ccompat/v7") in err
    assert "nudgeflow stack up registry" in err and "Traceback" not in err
