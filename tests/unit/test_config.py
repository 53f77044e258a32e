"""Config validation: every problem reported once, with its field path, never with its value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.config import BucketMapping, ConfigError, StreamMapping, load_config, load_config_data

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "router.example.yaml"


def _problems(data: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_data(data, env or {})
    return info.value.problems


def _fn(**extra: object) -> dict:
    return {"handler": "pkg.mod.handler", **extra}


def test_example_config_is_valid_and_documents_both_mapping_kinds() -> None:
    config = load_config(EXAMPLE, env={"ROUTER_WEBHOOK_TOKEN": "t0ken"})
    assert isinstance(config.event_source_mappings["clicks-to-metrics"], StreamMapping)
    assert isinstance(config.event_source_mappings["photos-to-thumbnails"], BucketMapping)
    assert config.http.webhook_token is not None
    assert config.http.webhook_token.get_secret_value() == "t0ken"


def test_dev_config_is_valid() -> None:
    dev = ROOT / "config" / "router.dev.yaml"
    if not dev.exists():
        pytest.skip("router.dev.yaml arrives with `router dev`")
    load_config(dev, env={})


def test_defaults_follow_lambda() -> None:
    config = load_config_data(
        {"functions": {"f": _fn()}, "kafka": {}, "mqtt": {},
         "event_source_mappings": {
             "s": {"function_name": "f", "kafka_topic": "t"},
             "b": {"function_name": "f", "bucket_notifications": {"bucket": "x", "topic": "minio/events"}}}},
        {},
    )
    fn = config.functions["f"]
    assert (fn.timeout, fn.memory_size, fn.reserved_concurrent_executions) == (3, 128, 1)
    s = config.event_source_mappings["s"]
    assert isinstance(s, StreamMapping)
    assert (s.batch_size, s.maximum_batching_window_in_seconds, s.parallelization_factor) == (100, 0, 1)
    assert (s.maximum_retry_attempts, s.maximum_record_age_in_seconds) == (-1, -1)
    assert s.starting_position == "TRIM_HORIZON" and s.group_id("s") == "router-s"
    b = config.event_source_mappings["b"]
    assert isinstance(b, BucketMapping)
    assert (b.maximum_retry_attempts, b.maximum_event_age_in_seconds) == (2, 21600)
    assert b.bucket_notifications.events == ["s3:ObjectCreated:*"]
    assert config.region == "us-east-1" and config.account_id == "000000000000"


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ({"timeout": 901}, "functions.f.timeout: must be between 1 and 900"),
        ({"timeout": 0}, "functions.f.timeout: must be between 1 and 900"),
        ({"memory_size": 64}, "functions.f.memory_size: must be between 128 and 10240"),
        ({"timout": 3}, "functions.f.timout: unknown key"),
        ({"handler": "nodots"}, "functions.f.handler: must be 'module.function'"),
    ],
)
def test_function_errors_name_the_field(function: dict, expected: str) -> None:
    problems = _problems({"functions": {"f": {**_fn(), **function}}})
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"batch_size": 0}, "event_source_mappings.m.batch_size: must be between 1 and 10000"),
        ({"batch_size": 10001}, "event_source_mappings.m.batch_size: must be between 1 and 10000"),
        ({"maximum_record_age_in_seconds": 30},
         "event_source_mappings.m.maximum_record_age_in_seconds: must be -1 or between 60 and 604800"),
        ({"maximum_retry_attempts": -2}, "event_source_mappings.m.maximum_retry_attempts: must be between -1"),
        ({"parallelization_factor": 11}, "event_source_mappings.m.parallelization_factor: must be between 1"),
        ({"starting_position": "AT_TIMESTAMP"},
         "event_source_mappings.m.starting_position_timestamp: required with AT_TIMESTAMP"),
        ({"destination_config": {"on_success": {"destination": "kafka://ok"}}},
         "event_source_mappings.m.destination_config.on_success: not supported"),
        ({"destination_config": {"on_failure": {"destination": "sqs://q"}}},
         "event_source_mappings.m.destination_config.on_failure.destination: must be a kafka://"),
        ({"destination_config": {"on_failure": {"destination": "kafka://t"}}},
         "event_source_mappings.m.destination_config.on_failure: must not be the source topic"),
        ({"function_response_types": ["Nope"]}, "event_source_mappings.m.function_response_types.0:"),
        ({"batchsize": 5}, "event_source_mappings.m.batchsize: unknown key"),
    ],
)
def test_stream_mapping_rules(mapping: dict, expected: str) -> None:
    data = {"functions": {"f": _fn()}, "kafka": {},
            "event_source_mappings": {"m": {"function_name": "f", "kafka_topic": "t", **mapping}}}
    problems = _problems(data)
    assert any(p.startswith(expected) for p in problems), problems


def test_cross_section_rules_are_reported_together() -> None:
    problems = _problems({
        "functions": {"f": _fn()},
        "http": {"listen": "0.0.0.0:9000"},
        "event_source_mappings": {
            "s": {"function_name": "missing", "kafka_topic": "t",
                  "destination_config": {"on_failure": {"destination": "s3://b/p/"}}},
            "w": {"function_name": "f", "bucket_notifications": {"transport": "webhook", "bucket": "b"}},
        },
    })
    assert "event_source_mappings.s.function_name: unknown function 'missing'" in problems
    assert "event_source_mappings.s.kafka_topic: needs a kafka section" in problems
    assert "event_source_mappings.w.bucket_notifications.transport: webhook needs http.webhook_token" in problems
    assert any(p.startswith("event_source_mappings.s.destination_config.on_failure: a s3:// destination needs")
               for p in problems)
    assert any(p.startswith("http.admin_token: required") for p in problems)


def test_bucket_mapping_ranges() -> None:
    problems = _problems({
        "functions": {"f": _fn()}, "mqtt": {},
        "event_source_mappings": {"b": {
            "function_name": "f", "maximum_retry_attempts": 3, "maximum_event_age_in_seconds": 59,
            "bucket_notifications": {"bucket": "x", "topic": "t", "events": ["ObjectCreated"]}}},
    })
    assert "event_source_mappings.b.maximum_retry_attempts: must be between 0 and 2" in problems
    assert "event_source_mappings.b.maximum_event_age_in_seconds: must be between 60 and 21600" in problems
    events = "event_source_mappings.b.bucket_notifications.events: 'ObjectCreated' is not"
    assert any(p.startswith(events) for p in problems)


def test_environment_interpolation_and_defaults() -> None:
    data = {"mqtt": {"host": "${MQTT_HOST:-broker}", "password": "${MQTT_PASSWORD}",
                     "client_id": "router-${HOSTNAME:-local}", "username": "${MQTT_USER:-}"}}
    config = load_config_data(data, {"MQTT_PASSWORD": "pw", "HOSTNAME": "pod-1"})
    assert config.mqtt is not None
    assert config.mqtt.host == "broker" and config.mqtt.client_id == "router-pod-1"
    assert config.mqtt.password is not None and config.mqtt.password.get_secret_value() == "pw"
    assert config.mqtt.username is None
    assert _problems(data, {}) == ["mqtt.password: environment variable MQTT_PASSWORD is not set"]


def test_errors_never_echo_secret_values() -> None:
    secret = "hunter2-do-not-print"
    problems = _problems({"kafka": {"sasl_password": secret, "security_protocol": "SASL_SSL",
                                    "sasl_mechanism": "MD5"}, "http": {"webhook_token": {"x": secret}}})
    assert problems and not any(secret in p for p in problems)
    assert "hunter2" not in repr(load_config_data({"mqtt": {"password": secret}}, {}))


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"functions": {"f": _fn()}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"functions": {"f": _fn(timeout=1000)}, "bogus": 1}))
    ok = subprocess.run([sys.executable, "-m", "router.cli", "validate", "--config", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "valid: 1 functions" in ok.stdout
    ko = subprocess.run([sys.executable, "-m", "router.cli", "validate", "--config", str(bad)],
                        capture_output=True, text=True)
    assert ko.returncode == 2
    assert ko.stderr.splitlines() == ["functions.f.timeout: must be between 1 and 900", "bogus: unknown key"]
    env_default = subprocess.run(
        [sys.executable, "-m", "router.cli", "validate"], capture_output=True, text=True,
        env={"ROUTER_CONFIG": str(good), "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
    )
    assert env_default.returncode == 0, env_default.stderr


def test_filter_criteria_errors_name_the_pattern_and_equal_patterns_are_equal() -> None:
    mapping = {"function_name": "f", "kafka_topic": "t",
               "filter_criteria": {"filters": [{"pattern": '{"data": {"a": ["x"]}}'}, {"pattern": "{oops"}]}}
    problems = _problems({"functions": {"f": _fn()}, "kafka": {}, "event_source_mappings": {"m": mapping}})
    assert "event_source_mappings.m.filter_criteria.filters[1].pattern: not valid JSON" in problems
    good = {"function_name": "f", "kafka_topic": "t", "filter_criteria": {"filters": [{"pattern": '{"a": ["x"]}'}]}}
    data = {"functions": {"f": _fn()}, "kafka": {}, "event_source_mappings": {"m": good}}
    # A reload of the same file must not see a change (the compiled matcher is a new object each time).
    assert load_config_data(data).event_source_mappings == load_config_data(data).event_source_mappings


def test_http_routes_are_validated() -> None:
    problems = _problems({"functions": {"f": _fn()}, "http_routes": {
        "shadow": {"function_name": "f", "path": "/{proxy+}"},
        "health": {"function_name": "f", "method": "GET", "path": "/healthz"},
        "bad": {"function_name": "f", "path": "/a/{proxy+}/b"},
        "orphan": {"function_name": "nope", "path": "/x"},
    }})
    assert any(p.startswith("http_routes.shadow.path: route path '/{proxy+}' would match") for p in problems), problems
    assert any(p.startswith("http_routes.health.path: ") for p in problems)
    assert any(p.startswith("http_routes.bad.path: ") for p in problems)
    problems = _problems({"functions": {"f": _fn()}, "http_routes": {"orphan": {"function_name": "nope", "path": "/x"},
                                                                      "a": {"function_name": "f", "path": "/y/{a}"},
                                                                      "b": {"function_name": "f", "path": "/y/{b}"}}})
    assert "http_routes.orphan.function_name: unknown function 'nope'" in problems
    assert any(p.startswith("http_routes: ") for p in problems), problems


def test_lambda_api_section_rules() -> None:
    assert load_config_data({"lambda_api": {}}).lambda_api is not None  # loopback: no credentials needed
    with pytest.raises(ConfigError) as err:
        load_config_data({"http": {"listen": "0.0.0.0:9000", "admin_token": "t"}, "lambda_api": {"registry": "kafka://r"}})
    assert "lambda_api.credentials: required when http.listen is not a loopback address " \
           "(the API changes what runs)" in err.value.problems
    assert "lambda_api.registry: a kafka:// registry needs a kafka section" in err.value.problems


def test_app_event_mapping_bounds_are_worded_as_a_range() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_data({"functions": {"f": {"handler": "a.b"}}, "mqtt": {},
                          "event_source_mappings": {"m": {"function_name": "f", "mqtt_topic": "a/#", "batch_size": 0}}})
    assert err.value.problems == ["event_source_mappings.m.batch_size: must be between 1 and 10000"]


def test_function_environment_follows_lambdas_limits() -> None:
    def env(variables: dict[str, str]) -> list[str]:
        return _problems({"functions": {"f": _fn(environment={"variables": variables})}})

    config = load_config_data({"functions": {"f": _fn(environment={"variables": {"BIG": "v" * 4093}})}}, {})
    assert len(config.functions["f"].environment.variables["BIG"]) == 4093  # 4096 bytes: just fits
    assert env({"BIG": "v" * 4094}) == [
        "functions.f.environment: the variables take 4097 bytes, over Lambda's 4096-byte limit"
    ]
    assert env({"bad-name": "x"}) == [
        "functions.f.environment: 'bad-name' is not a variable name Lambda accepts "
        "(a letter, then letters, digits and underscores)"
    ]
