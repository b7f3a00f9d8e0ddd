"""Tests for jobs.config: defaults, layering, coercion, validation, masking and the CLI flags.

Every ``load_config`` call passes an explicit ``env`` mapping, so the real environment of the
test process never leaks in; ``config_from_args`` (which reads ``os.environ``) runs with every
``NUDGEFLOW_*`` variable removed by monkeypatch.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

import pytest

from jobs.config import (
    ConfigError,
    NudgeflowConfig,
    add_config_arguments,
    config_from_args,
    load_config,
    replace,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NUDGEFLOW_"):
            monkeypatch.delenv(name)


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_match_the_local_stack() -> None:
    cfg = load_config(env={})
    assert cfg == NudgeflowConfig()
    assert cfg.kafka_bootstrap == "127.0.0.1:9092"
    assert cfg.clicks_topic == "clicks"
    assert cfg.cassandra_port == 9042
    assert cfg.parallelism == 1
    assert cfg.checkpoint_interval_ms == 10_000
    assert cfg.delivery_guarantee == "exactly-once"
    assert cfg.execution_mode == "thread"
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"


def test_every_field_has_help_text() -> None:
    for f in fields(NudgeflowConfig):
        assert f.metadata.get("help"), f.name


# --- layering -----------------------------------------------------------------------------------


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "kafka_bootstrap: file:1\nparallelism: 2\n")
    cfg = load_config(path, env={})
    assert cfg.kafka_bootstrap == "file:1"
    assert cfg.parallelism == 2
    assert cfg.clicks_topic == "clicks"  # untouched fields keep their default


def test_file_keys_may_use_dashes(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "kafka-bootstrap: dashed:1\n")
    assert load_config(path, env={}).kafka_bootstrap == "dashed:1"


def test_env_overrides_file_and_overrides_win(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.yaml", "kafka_bootstrap: file:1\nparallelism: 2\nclicks_topic: f-clicks\n"
    )
    env = {"NUDGEFLOW_KAFKA_BOOTSTRAP": "env:2", "NUDGEFLOW_PARALLELISM": "3"}
    cfg = load_config(path, env=env)
    assert (cfg.kafka_bootstrap, cfg.parallelism, cfg.clicks_topic) == ("env:2", 3, "f-clicks")

    cfg = load_config(path, env=env, overrides={"parallelism": 4, "kafka_bootstrap": None})
    # None overrides are ignored (an absent flag), a given one wins over env and file
    assert (cfg.kafka_bootstrap, cfg.parallelism, cfg.clicks_topic) == ("env:2", 4, "f-clicks")


def test_config_file_named_by_env(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "consumer_group: from-env-file\n")
    cfg = load_config(env={"NUDGEFLOW_CONFIG": str(path)})
    assert cfg.consumer_group == "from-env-file"


def test_explicit_file_wins_over_env_named_file(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", "consumer_group: a\n")
    b = _write(tmp_path / "b.yaml", "consumer_group: b\n")
    assert load_config(a, env={"NUDGEFLOW_CONFIG": str(b)}).consumer_group == "a"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.yaml", "")
    assert load_config(path, env={}) == NudgeflowConfig()


def test_unrelated_env_vars_are_ignored() -> None:
    cfg = load_config(env={"KAFKA_BOOTSTRAP": "nope:1", "NUDGEFLOW_HOME": "/x"})
    assert cfg.kafka_bootstrap == "127.0.0.1:9092"


# --- coercion and its errors --------------------------------------------------------------------


def test_int_fields_are_coerced_from_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "cassandra_port: '9043'\n")
    cfg = load_config(path, env={"NUDGEFLOW_BUNDLE_SIZE": "500"},
                      overrides={"checkpoint_interval_ms": "2000"})
    assert cfg.cassandra_port == 9043
    assert cfg.bundle_size == 500
    assert cfg.checkpoint_interval_ms == 2000
    assert all(isinstance(v, int) for v in (cfg.cassandra_port, cfg.bundle_size))


def test_str_fields_are_coerced_to_str(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "consumer_group: 123\n")
    assert load_config(path, env={}).consumer_group == "123"


def test_bad_int_in_file_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "parallelism: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert f"config file {path}" in message
    assert "parallelism" in message
    assert "'lots'" in message


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "parallelism: true\n")
    with pytest.raises(ConfigError, match="parallelism must be an integer, got True"):
        load_config(path, env={})


def test_a_float_field_takes_numbers_only(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path / "a.yaml", "tracing_sample_ratio: 0.5\n"),
                       env={}).tracing_sample_ratio == 0.5
    for text, shown in (("yes", "True"), ("'half'", "'half'")):
        with pytest.raises(ConfigError, match=f"tracing_sample_ratio must be a number, got "
                           f"{shown}"):
            load_config(_write(tmp_path / "b.yaml", f"tracing_sample_ratio: {text}\n"), env={})


def test_bad_int_in_env_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"NUDGEFLOW_CASSANDRA_PORT": "9042x"})
    assert "environment variable NUDGEFLOW_CASSANDRA_PORT" in str(info.value)
    assert "'9042x'" in str(info.value)


def test_bad_int_in_override_names_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides={"bundle_time_ms": "soon"})
    assert str(info.value).startswith("--bundle-time-ms: bundle_time_ms must be an integer")


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown configuration field 'no_such_field'"):
        load_config(env={}, overrides={"no_such_field": 1})


# --- file errors --------------------------------------------------------------------------------


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "kafka_bootstrap: h:1\nkafka_botstrap: typo:1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert str(path) in message
    assert "'kafka_botstrap'" in message
    assert "kafka_bootstrap" in message.split("known keys:", 1)[1]


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", "kafka_bootstrap: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_name", "bad"),
    [
        ("delivery_guarantee", "at-most-once"),
        ("execution_mode", "fork"),
        ("starting_offsets", "middle"),
        ("state_backend", "memory"),
    ],
)
def test_choices_are_validated(field_name: str, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides={field_name: bad})
    message = str(info.value)
    assert f"{field_name}={bad!r} is not allowed" in message
    assert "choose one of" in message


def test_valid_choices_are_accepted() -> None:
    cfg = load_config(env={"NUDGEFLOW_EXECUTION_MODE": "process"},
                      overrides={"state_backend": "rocksdb", "starting_offsets": "latest"})
    assert (cfg.execution_mode, cfg.state_backend, cfg.starting_offsets) == (
        "process", "rocksdb", "latest")


def test_exactly_once_needs_checkpoints() -> None:
    with pytest.raises(ConfigError, match="exactly-once needs checkpoints"):
        load_config(env={"NUDGEFLOW_CHECKPOINT_INTERVAL_MS": "0"})


def test_at_least_once_without_checkpoints_is_fine() -> None:
    cfg = load_config(env={"NUDGEFLOW_CHECKPOINT_INTERVAL_MS": "0",
                           "NUDGEFLOW_DELIVERY_GUARANTEE": "at-least-once"})
    assert cfg.checkpoint_interval_ms == 0


def test_parallelism_and_interval_ranges() -> None:
    with pytest.raises(ConfigError, match="parallelism must be >= 1, got 0"):
        load_config(env={}, overrides={"parallelism": 0})
    with pytest.raises(ConfigError, match="checkpoint_interval_ms must be >= 0"):
        load_config(env={}, overrides={"checkpoint_interval_ms": -1})


def test_max_parallelism_is_fixed_between_the_parallelism_and_flinks_bound() -> None:
    assert load_config(env={}).max_parallelism == 128  # Flink's default up to parallelism 85
    assert load_config(env={"NUDGEFLOW_MAX_PARALLELISM": "4096"}).max_parallelism == 4096
    with pytest.raises(ConfigError, match=r"max_parallelism must be between parallelism \(8\) "
                       r"and 32768, got 4; it is fixed for the life of the job's state"):
        load_config(env={}, overrides={"parallelism": 8, "max_parallelism": 4})
    with pytest.raises(ConfigError, match="got 40000"):
        load_config(env={}, overrides={"max_parallelism": 40_000})


def test_replace_validates_again() -> None:
    cfg = load_config(env={})
    assert replace(cfg, parallelism=5).parallelism == 5
    with pytest.raises(ConfigError):
        replace(cfg, checkpoint_interval_ms=0)


# --- secrets ------------------------------------------------------------------------------------


def test_passwords_are_masked_in_repr_and_describe() -> None:
    cfg = load_config(env={}, overrides={
        "kafka_sasl_password": "kafka-s3cret",
        "cassandra_password": "cass-s3cret",
        "kafka_sasl_username": "alice",
    })
    text = repr(cfg)
    described = cfg.describe()
    for secret in ("kafka-s3cret", "cass-s3cret"):
        assert secret not in text
        assert all(secret not in v for v in described.values())
    assert described["kafka_sasl_password"] == "'***'"
    assert described["cassandra_password"] == "'***'"
    assert described["kafka_sasl_username"] == "'alice'"  # not a secret
    assert text.startswith("NudgeflowConfig(")
    assert "kafka_sasl_username='alice'" in text


def test_empty_secret_is_shown_as_empty() -> None:
    assert load_config(env={}).describe()["cassandra_password"] == "''"


def test_redis_url_keeps_host_hides_credentials() -> None:
    cfg = load_config(env={"NUDGEFLOW_REDIS_URL": "redis://user:hunter2@cache.example:6380/1"})
    shown = cfg.describe()["redis_url"]
    assert shown == "'redis://***@cache.example:6380/1'"
    assert "hunter2" not in repr(cfg)
    assert "user" not in shown
    assert cfg.redis_url == "redis://user:hunter2@cache.example:6380/1"  # the value is intact


def test_redis_url_without_password_is_shown_as_is() -> None:
    assert load_config(env={}).describe()["redis_url"] == "'redis://127.0.0.1:6379/0'"


def test_rediss_url_is_masked_too() -> None:
    cfg = load_config(env={}, overrides={"redis_url": "rediss://:pw@tls-host:6379"})
    assert cfg.describe()["redis_url"] == "'rediss://***@tls-host:6379'"


# --- helpers ------------------------------------------------------------------------------------


def test_trigger_topic() -> None:
    cfg = load_config(env={})
    assert cfg.trigger_topic("P0") == "triggers-p0"
    assert cfg.trigger_topic("p3") == "triggers-p3"
    other = load_config(env={"NUDGEFLOW_TRIGGER_TOPIC_PREFIX": "t."})
    assert other.trigger_topic("P2") == "t.p2"


#: the Kafka client's security package as the job's shaded connector (flink-sql-connector-kafka)
#: has it: the unshaded name fails at connect with "No LoginModule found"
_SHADED = "org.apache.flink.kafka.shaded.org.apache.kafka.common.security"


def test_kafka_client_properties_plaintext() -> None:
    assert load_config(env={}).kafka_client_properties() == {
        "bootstrap.servers": "127.0.0.1:9092"
    }


def test_kafka_client_properties_scram() -> None:
    cfg = load_config(env={}, overrides={
        "kafka_bootstrap": "b1:9093,b2:9093",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "alice",
        "kafka_sasl_password": "pw",
    })
    assert cfg.kafka_client_properties() == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": f"{_SHADED}.scram.ScramLoginModule required "
        'username="alice" password="pw";',
    }
    assert cfg.librdkafka_config() == {
        "bootstrap.servers": "b1:9093,b2:9093", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice", "sasl.password": "pw",
    }
    kwargs = cfg.python_client_kwargs()
    assert kwargs["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("alice", "pw")


def test_kafka_client_properties_plain_mechanism() -> None:
    cfg = load_config(env={}, overrides={
        "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "u", "kafka_sasl_password": "p",
    })
    jaas = cfg.kafka_client_properties()["sasl.jaas.config"]
    assert jaas.startswith(f"{_SHADED}.plain.PlainLoginModule required ")
    assert cfg.kafka_client_properties()["security.protocol"] == "SASL_PLAINTEXT"


def test_jaas_values_are_escaped() -> None:
    cfg = load_config(env={}, overrides={
        "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": 'svc"x', "kafka_sasl_password": 'p"w\\d";',
    })
    assert cfg.kafka_client_properties()["sasl.jaas.config"] == (
        f'{_SHADED}.scram.ScramLoginModule required '
        'username="svc\\"x" password="p\\"w\\\\d\\";";')


def test_kafka_tls_files_reach_the_job_and_the_tools() -> None:
    cfg = load_config(env={}, overrides={
        "kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/etc/kafka/ca.pem",
        "kafka_ssl_client_pem": "/etc/kafka/client.pem", "kafka_ssl_key_password": "k3y",
    })
    assert cfg.kafka_client_properties() == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SSL",
        "ssl.truststore.type": "PEM", "ssl.truststore.location": "/etc/kafka/ca.pem",
        "ssl.keystore.type": "PEM", "ssl.keystore.location": "/etc/kafka/client.pem",
        "ssl.key.password": "k3y",
    }
    kwargs = cfg.python_client_kwargs()
    assert (kwargs["ssl_cafile"], kwargs["ssl_certfile"], kwargs["ssl_password"]) == (
        "/etc/kafka/ca.pem", "/etc/kafka/client.pem", "k3y")
    assert "'***'" == cfg.describe()["kafka_ssl_key_password"]
    assert cfg.librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SSL",
        "ssl.ca.location": "/etc/kafka/ca.pem", "ssl.certificate.location": "/etc/kafka/client.pem",
        "ssl.key.location": "/etc/kafka/client.pem", "ssl.key.password": "k3y",
    }


@pytest.mark.parametrize("overrides, message", [
    ({"kafka_security_protocol": "SASL_SSL"},
     "kafka_security_protocol=SASL_SSL needs kafka_sasl_mechanism (one of PLAIN, "
     "SCRAM-SHA-256, SCRAM-SHA-512)"),
    ({"kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "u"},
     "kafka_sasl_mechanism=SCRAM-SHA-512 is used only with kafka_security_protocol "
     "SASL_PLAINTEXT or SASL_SSL, got PLAINTEXT"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"},
     "kafka_sasl_username is empty: SASL needs a user name"),
    ({"kafka_ssl_ca_file": "/ca.pem"},
     "kafka_ssl_ca_file is set but kafka_security_protocol is PLAINTEXT: use SSL or SASL_SSL"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_key_password": "x"},
     "kafka_ssl_key_password is set without kafka_ssl_client_pem"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER",
      "kafka_sasl_username": "u"},
     "kafka_sasl_mechanism='OAUTHBEARER' is not allowed"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol='TLS' is not allowed"),
])
def test_kafka_security_that_cannot_connect_is_refused(overrides, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides=overrides)
    assert message in str(info.value)


# --- argparse -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_config_arguments(parser)
    return parser


def test_argparse_round_trip(clean_environ: None) -> None:
    args = _parser().parse_args(["--kafka-bootstrap", "h:1", "--parallelism", "3"])
    assert args.cfg_parallelism == 3  # typed by argparse already
    cfg = config_from_args(args)
    assert cfg.kafka_bootstrap == "h:1"
    assert cfg.parallelism == 3
    assert cfg.clicks_topic == "clicks"


def test_argparse_flags_win_over_config_file(clean_environ: None, tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "kafka_bootstrap: file:1\nconsumer_group: g-file\n")
    args = _parser().parse_args(["--config", str(path), "--kafka-bootstrap", "flag:1"])
    cfg = config_from_args(args)
    assert (cfg.kafka_bootstrap, cfg.consumer_group) == ("flag:1", "g-file")


def test_argparse_rejects_bad_choice_and_int(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["--execution-mode", "fork"])
    assert info.value.code == 2
    assert "invalid choice: 'fork'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["--parallelism", "many"])
    assert "invalid int value" in capsys.readouterr().err


def test_help_names_env_vars_and_masks_secret_defaults() -> None:
    text = " ".join(_parser().format_help().split())  # undo argparse's line wrapping
    assert "--kafka-bootstrap" in text
    assert "[env: NUDGEFLOW_KAFKA_BOOTSTRAP]" in text
    assert "[env: NUDGEFLOW_CONFIG]" in text
    assert "[env: NUDGEFLOW_CHECKPOINT_INTERVAL_MS]" in text
    assert "redis://127.0.0.1:6379/0" not in text  # secret field: default masked
    assert "[default: '***']" in text
    for f in fields(NudgeflowConfig):
        assert "--" + f.name.replace("_", "-") in text


# --- what reaches the job from outside: jars, reporter settings, topic names --------------------


def test_jars_as_urls(tmp_path: Path) -> None:
    jar = tmp_path / "a.jar"
    cfg = load_config(env={"NUDGEFLOW_JARS": f" file:///x/k.jar ; {jar} ;"})
    assert cfg.jar_urls() == ["file:///x/k.jar", jar.as_uri()]
    assert load_config(env={}).jar_urls() == []


def test_prometheus_settings_pairs() -> None:
    cfg = load_config(env={}, overrides={"prometheus_settings": "a.b=C; port = 9249-9259"})
    assert cfg.prometheus_settings_map() == {"a.b": "C", "port": "9249-9259"}
    assert load_config(env={}).prometheus_settings_map() == {}
    with pytest.raises(ConfigError, match="prometheus_settings: 'no-value' is not key=value"):
        load_config(env={}, overrides={"prometheus_settings": "a=b;no-value"})


def test_topic_names_for_provisioning() -> None:
    cfg = load_config(env={}, overrides={"clicks_topic": "x", "trigger_topic_prefix": "t."})
    fields_ = cfg.topic_fields()
    assert fields_["clicks_topic"] == "x"
    assert fields_["dead_letter_topic"] == "dead-letter"
    assert "trigger_topic_prefix" not in fields_
    assert cfg.trigger_topics() == {"P0": "t.p0", "P1": "t.p1", "P2": "t.p2", "P3": "t.p3"}


def test_shipped_model_is_the_committed_file() -> None:
    from models import CHURN_ONNX

    assert load_config(env={}).churn_model_path() == str(CHURN_ONNX)
    assert load_config(env={}, overrides={"churn_model": "off"}).churn_model_path() is None


def test_input_limits_are_configurable_and_bounded() -> None:
    from jobs.config import ConfigError, load_config
    from udfs.intake import Limits

    assert load_config(env={}).intake_limits() == Limits()
    cfg = load_config(env={"NUDGEFLOW_MAX_ID_BYTES": "64", "NUDGEFLOW_MAX_EVENT_AGE_MS": "0"})
    assert (cfg.intake_limits().max_id_bytes, cfg.intake_limits().max_event_age_ms) == (64, 0)
    with pytest.raises(ConfigError, match="dead_letter_raw_max_bytes=2000000 is over 983040"):
        load_config(env={"NUDGEFLOW_DEAD_LETTER_RAW_MAX_BYTES": "2000000"})
    with pytest.raises(ConfigError, match="max_record_bytes must be >= 1"):
        load_config(env={"NUDGEFLOW_MAX_RECORD_BYTES": "0"})


def test_a_bounded_replay_is_decided_by_event_time_alone():
    from jobs.job import bounded_replay

    cfg = bounded_replay(load_config(env={}))
    assert cfg.quiet_release_ms == 0  # nothing applied by processing time
    assert cfg.idleness_ms >= 30 * 86_400_000  # no partition left out for being slow


def test_the_gil_switch_interval_is_a_positive_number_of_microseconds():
    assert load_config(env={}).gil_switch_interval_us == 200
    assert load_config(env={"NUDGEFLOW_GIL_SWITCH_INTERVAL_US": "5000"}) \
        .gil_switch_interval_us == 5000
    for bad in ("0", "-5", "2000000"):
        with pytest.raises(ConfigError, match="gil_switch_interval_us must be 1..1000000"):
            load_config(env={"NUDGEFLOW_GIL_SWITCH_INTERVAL_US": bad})


def test_an_isolated_config_owns_every_topic_group_and_prefix() -> None:
    from dataclasses import fields as dc_fields

    from jobs.config import isolated

    base = load_config(env={})
    cfg = isolated(base, "it-1a2b")
    topics = [f.name for f in dc_fields(cfg) if f.name.endswith("_topic")]
    assert all(getattr(cfg, t).startswith("it-1a2b-") for t in topics)
    assert len({getattr(cfg, t) for t in topics}) == len(topics)
    assert cfg.user_metadata_topic == "it-1a2b-user-metadata"
    assert cfg.trigger_topic("P0") == "it-1a2b-triggers-p0"
    assert (cfg.consumer_group, cfg.transactional_id_prefix, cfg.redis_key_prefix) == \
        ("it-1a2b",) * 3
    assert cfg.kafka_bootstrap == base.kafka_bootstrap  # nothing else moves


# --- the output wire format ----------------------------------------------------------------------


def test_the_wire_format_and_its_registry_are_checked(clean_environ: None) -> None:
    cfg = load_config(env={"NUDGEFLOW_OUTPUT_WIRE_FORMAT": "confluent",
                           "NUDGEFLOW_SCHEMA_REGISTRY_USER_INFO": "team:s3cret"})
    assert cfg.output_wire_format == "confluent"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.describe())
    with pytest.raises(ConfigError, match="output_wire_format='avro' is not allowed; choose "
                       "one of: single-object, confluent"):
        replace(cfg, output_wire_format="avro")
    with pytest.raises(ConfigError, match="schema_registry_url must be an http:// or https://"):
        replace(cfg, schema_registry_url="127.0.0.1:8085")
    with pytest.raises(ConfigError, match="user:password"):
        replace(cfg, schema_registry_user_info="token-only")


def test_gc_thresholds_are_three_counts_and_the_collector_stays_on():
    assert load_config(env={}).gc_threshold_counts() == (50_000, 20, 100)
    assert load_config(env={"NUDGEFLOW_GC_THRESHOLDS": "700,10,10"}
                       ).gc_threshold_counts() == (700, 10, 10)
    for bad in ("700,10", "0,10,10", "a,b,c", "700,-1,10", ""):
        with pytest.raises(ConfigError, match="gc_thresholds must be three whole numbers"):
            load_config(env={"NUDGEFLOW_GC_THRESHOLDS": bad})
