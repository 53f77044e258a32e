"""Typed configuration: one YAML file, keys the snake_case of Lambda's API names.

Every section lives here so that later sources (HTTP functions, MQTT app events, the Lambda API)
slot in as new models without reshaping the old ones. Unknown keys are errors: a typo in
`maximum_retry_attempts` must not silently give a poison record infinite retries.

Errors are reported one per line with their dotted field path, and never echo the offending value:
a mistyped secret must not end up in a terminal or a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from router import secret_files
from router.delivery.filter_criteria import CompiledFilters, FilterError, compile_patterns
from router.routes.route_table import Route, RouteError, RouteTable, reserved_conflict

DEFAULT_CONFIG_PATH = Path("config/router.yaml")
CONFIG_ENV_VAR = "ROUTER_CONFIG"


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one `path: message` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ----------------------------------------------------------------------------------------------
# functions


# Lambda's limit on a function's environment variables, all names and values together. Workers
# are exec'd with them, and the kernel refuses any one variable over 128 KiB.
MAX_ENVIRONMENT_BYTES = 4096


class Environment(_Model):
    variables: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _within_lambda_limit(self) -> Environment:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in self.variables.items())
        if size > MAX_ENVIRONMENT_BYTES:
            raise ValueError(f"the variables take {size} bytes, over Lambda's {MAX_ENVIRONMENT_BYTES}-byte limit")
        for name in self.variables:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a variable name Lambda accepts (a letter, then letters, "
                                 "digits and underscores)")
        return self


_HANDLER_RE = re.compile(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")


class FunctionConfig(_Model):
    """A Lambda function: Handler, Timeout, MemorySize, ReservedConcurrentExecutions, Environment,
    and its event invoke config (how `Invoke` with InvocationType `Event` retries and where its
    results go, Lambda's `PutFunctionEventInvokeConfig`)."""

    handler: str
    code_path: Path | None = None
    timeout: Annotated[int, Field(ge=1, le=900)] = 3
    memory_size: Annotated[int, Field(ge=128, le=10240)] = 128
    reserved_concurrent_executions: Annotated[int, Field(ge=0, le=1000)] = 1
    environment: Environment = Field(default_factory=Environment)
    description: str = ""
    event_invoke_config: AsyncInvokeSettings | None = None

    @field_validator("handler")
    @classmethod
    def _handler_shape(cls, value: str) -> str:
        if not _HANDLER_RE.match(value):
            raise ValueError("must be 'module.function' (dotted module path, then the function name)")
        return value


# ----------------------------------------------------------------------------------------------
# brokers and stores


class KafkaConfig(_Model):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id: str = "router"
    # The consumer stream mappings read with: confluent (librdkafka: fetching and record parsing on
    # its own threads; the faster in bench/streams.py) or aiokafka (pure Python, on the event loop).
    client: Literal["aiokafka", "confluent"] = "confluent"
    session_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 10_000
    heartbeat_interval_ms: Annotated[int, Field(ge=100, le=60_000)] = 1_000
    # The producer's max.request.size for kafka:// destinations: Kafka's default, which a default
    # broker's message.max.bytes (1 MB) matches. Raise both together.
    max_request_size: Annotated[int, Field(ge=64 * 1024, le=128 * 1024 * 1024)] = 1_048_576

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError("sasl_mechanism is required with a SASL security_protocol")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError("sasl_username and sasl_password are required with SASL")
        return self


class MqttTls(_Model):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttConfig(_Model):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: MqttTls = Field(default_factory=MqttTls)
    client_id: str = "router-local"
    shared_subscription_group: str | None = "router"
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_interval: Annotated[int, Field(ge=0)] = 86_400


class HttpConfig(_Model):
    listen: str = "127.0.0.1:9000"
    webhook_token: SecretStr | None = None
    admin_token: SecretStr | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # Listener limits (observability/http_limits.py): a request head must arrive within
    # header_timeout_seconds, idle keep-alive connections close after keepalive_timeout_seconds
    # (keep it above a load balancer's idle timeout), at most max_connections are open.
    header_timeout_seconds: Annotated[float, Field(ge=0.5, le=300)] = 10.0
    keepalive_timeout_seconds: Annotated[float, Field(ge=0.5, le=3600)] = 15.0
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # TLS on the listener itself (PEM files); without them serve plain HTTP behind a proxy.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


class S3Config(_Model):
    endpoint_url: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    region: str | None = None


# ----------------------------------------------------------------------------------------------
# destinations

DESTINATION_SCHEMES = ("kafka", "s3", "mqtt")


class DestinationTarget(_Model):
    destination: str

    @field_validator("destination")
    @classmethod
    def _uri(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in DESTINATION_SCHEMES:
            raise ValueError("must be a kafka://TOPIC, s3://BUCKET/PREFIX or mqtt://TOPIC URI")
        if not parts.netloc:
            raise ValueError(f"{parts.scheme}:// destination needs a name after the scheme")
        return value

    @property
    def scheme(self) -> str:
        return urlsplit(self.destination).scheme


class DestinationConfig(_Model):
    on_failure: DestinationTarget | None = None
    on_success: DestinationTarget | None = None


# ----------------------------------------------------------------------------------------------
# event source mappings


class Filter(_Model):
    pattern: str  # an event pattern: a JSON object, as a string (Lambda's Filters[].Pattern)


class FilterCriteria(_Model):
    """Lambda's FilterCriteria: a record is invoked when it matches at least one pattern. The
    patterns are compiled here, once per load, so a bad one is a config error with its path and
    the stream path only runs the compiled matcher."""

    filters: list[Filter]
    _compiled: CompiledFilters | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _compile(self) -> FilterCriteria:
        try:
            self._compiled = compile_patterns([f.pattern for f in self.filters])
        except FilterError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def compiled(self) -> CompiledFilters:
        assert self._compiled is not None
        return self._compiled

    def __eq__(self, other: object) -> bool:
        # The same patterns are the same criteria: a reload must not see a change in the compiled
        # matcher (a new object each load) and restart a mapping that did not change.
        return isinstance(other, FilterCriteria) and self.filters == other.filters

    __hash__ = None  # type: ignore[assignment]


class StreamMapping(_Model):
    """A Kinesis-style event source mapping whose stream is a Kafka topic."""

    function_name: str
    kafka_topic: str
    consumer_group_id: str | None = None
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    maximum_batching_window_in_seconds: Annotated[float, Field(ge=0, le=300)] = 0
    starting_position: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = "TRIM_HORIZON"
    starting_position_timestamp: float | None = None
    parallelization_factor: Annotated[int, Field(ge=1, le=10)] = 1
    bisect_batch_on_function_error: bool = False
    maximum_retry_attempts: Annotated[int, Field(ge=-1, le=10_000)] = -1
    maximum_record_age_in_seconds: Annotated[int, Field(ge=-1, le=604_800)] = -1
    function_response_types: list[Literal["ReportBatchItemFailures"]] = Field(default_factory=list)
    destination_config: DestinationConfig = Field(default_factory=DestinationConfig)
    filter_criteria: FilterCriteria | None = None
    tumbling_window_in_seconds: Annotated[int, Field(ge=0, le=900)] = 0
    enabled: bool = True
    # Not Lambda keys: Lambda's stream backoff is undocumented; these make it tunable and testable.
    retry_base_delay_seconds: Annotated[float, Field(ge=0, le=60)] = 1.0
    retry_max_delay_seconds: Annotated[float, Field(ge=0, le=600)] = 30.0
    shard_buffer_records: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @model_validator(mode="after")
    def _rules(self) -> StreamMapping:
        if self.maximum_record_age_in_seconds != -1 and self.maximum_record_age_in_seconds < 60:
            raise ValueError("maximum_record_age_in_seconds: must be -1 or between 60 and 604800")
        if self.starting_position == "AT_TIMESTAMP" and self.starting_position_timestamp is None:
            raise ValueError("starting_position_timestamp: required with AT_TIMESTAMP")
        if self.starting_position != "AT_TIMESTAMP" and self.starting_position_timestamp is not None:
            raise ValueError("starting_position_timestamp: only allowed with AT_TIMESTAMP")
        if self.destination_config.on_success is not None:
            raise ValueError(
                "destination_config.on_success: not supported for stream event source mappings"
            )
        if self.tumbling_window_in_seconds and self.parallelization_factor > 1:
            # A window's state is one value per shard, carried from one invocation to the next;
            # parallel key lanes would each need their own and a shard checkpoint held for all.
            raise ValueError(
                "tumbling_window_in_seconds: cannot be combined with parallelization_factor > 1 "
                "(window state is kept per shard)"
            )
        target = self.destination_config.on_failure
        if target is not None and target.destination == f"kafka://{self.kafka_topic}":
            raise ValueError("destination_config.on_failure: must not be the source topic")
        return self

    @property
    def report_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types

    def group_id(self, name: str) -> str:
        return self.consumer_group_id or f"router-{name}"


class BucketNotifications(_Model):
    transport: Literal["mqtt", "webhook"] = "mqtt"
    topic: str | None = None
    bucket: str
    events: list[str] = Field(default_factory=lambda: ["s3:ObjectCreated:*"])
    prefix: str = ""
    suffix: str = ""
    event_format: Literal["aws", "minio"] = "aws"

    @model_validator(mode="after")
    def _topic(self) -> BucketNotifications:
        if self.transport == "mqtt" and not self.topic:
            raise ValueError("topic: required with transport mqtt")
        if self.transport == "webhook" and self.topic:
            raise ValueError("topic: only used with transport mqtt")
        for pattern in self.events:
            if not re.fullmatch(r"s3:[A-Za-z]+(:[A-Za-z*]+)?|s3:\*", pattern):
                raise ValueError(f"events: {pattern!r} is not an S3 event type such as s3:ObjectCreated:*")
        return self


class AsyncInvokeSettings(_Model):
    """How events are invoked asynchronously: Lambda's function event invoke config
    (`PutFunctionEventInvokeConfig`: MaximumRetryAttempts, MaximumEventAgeInSeconds,
    DestinationConfig) plus router's delays and deduplication window.

    One model for every push mapping (bucket notifications, MQTT app events) and the async
    invoker that runs them, so a rule is validated and applied once whatever fed the event."""

    maximum_retry_attempts: Annotated[int, Field(ge=0, le=2)] = 2
    maximum_event_age_in_seconds: Annotated[int, Field(ge=60, le=21_600)] = 21_600
    destination_config: DestinationConfig = Field(default_factory=DestinationConfig)
    # Not a Lambda key: Lambda waits ~1 min then ~2 min; tests and impatient users shorten it.
    retry_delays_seconds: list[Annotated[float, Field(ge=0, le=3600)]] = Field(
        default_factory=lambda: [60.0, 120.0]
    )
    deduplication_window_seconds: Annotated[int, Field(ge=0, le=7 * 86_400)] = 3600

    @field_validator("retry_delays_seconds")
    @classmethod
    def _non_empty(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("must list at least one delay")
        return value


class BucketMapping(AsyncInvokeSettings):
    """S3-style push: bucket notifications become asynchronous invocations."""

    function_name: str
    bucket_notifications: BucketNotifications
    # Matched against the S3 record as the function receives it (`Records[0]`).
    filter_criteria: FilterCriteria | None = None
    enabled: bool = True


class DeduplicationId(_Model):
    """Where an app-event message carries the id that makes a redelivery a duplicate: exactly one
    of an MQTT v5 user property's name or a (dotted) field of the JSON payload."""

    user_property: str | None = None
    json_field: str | None = None

    @model_validator(mode="after")
    def _one(self) -> DeduplicationId:
        if (self.user_property is None) == (self.json_field is None):
            raise ValueError("name exactly one of user_property or json_field")
        return self


class AppEventMapping(AsyncInvokeSettings):
    """Mobile and device apps: MQTT messages on `mqtt_topic` invoke the function asynchronously,
    as an AWS IoT topic rule (`SELECT * FROM '<filter>'`) with a Lambda action does."""

    function_name: str
    mqtt_topic: str  # an MQTT topic filter: + one level, # the rest
    # Opt-in: the message's topic is added to the event under this key (IoT: `SELECT *, topic() AS topic`).
    topic_key: str | None = None
    filter_criteria: FilterCriteria | None = None
    # > 1: invocations of {"Records": [...]}, at most batch_size, after at most the window.
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 1
    maximum_batching_window_in_seconds: Annotated[float, Field(ge=0, le=300)] = 0
    # Opt-in duplicate suppression (within deduplication_window_seconds) by an id the message names.
    deduplication_id: DeduplicationId | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def _batching(self) -> AppEventMapping:
        if self.maximum_batching_window_in_seconds and self.batch_size == 1:
            raise ValueError("maximum_batching_window_in_seconds: only with batch_size > 1")
        return self

    @field_validator("mqtt_topic")
    @classmethod
    def _topic_filter(cls, value: str) -> str:
        levels = value.split("/")
        if not value or "#" in value[:-1] or any(("+" in level and level != "+") for level in levels) \
                or value.startswith("$"):
            raise ValueError("must be an MQTT topic filter ('+' a whole level, '#' only last, no '$')")
        return value


def _mapping_kind(value: Any) -> str | None:
    if isinstance(value, Mapping):
        if "kafka_topic" in value:
            return "stream"
        if "bucket_notifications" in value:
            return "bucket"
        if "mqtt_topic" in value:
            return "app"
        return None
    if isinstance(value, StreamMapping):
        return "stream"
    if isinstance(value, BucketMapping):
        return "bucket"
    if isinstance(value, AppEventMapping):
        return "app"
    return None


EventSourceMapping = Annotated[
    Annotated[StreamMapping, Tag("stream")] | Annotated[BucketMapping, Tag("bucket")]
    | Annotated[AppEventMapping, Tag("app")],
    Discriminator(
        _mapping_kind,
        custom_error_type="mapping_kind",
        custom_error_message="needs kafka_topic (a stream), bucket_notifications (S3 push) or mqtt_topic "
                             "(app events)",
    ),
]


# Paths router serves itself; an HTTP route may not shadow them.
RESERVED_HTTP_PATHS = ("/healthz", "/readyz", "/metrics", "/status", "/webhooks/", "/2015-03-31/")


class HttpRoute(_Model):
    """A website backend: requests matching `method` and `path` invoke `function_name` with an API
    Gateway HTTP API (payload 2.0) event; `path` is a template with `{name}` segments, a greedy
    `{proxy+}` last segment, or `$default` for whatever no other route takes."""

    function_name: str
    method: str = "ANY"
    path: str

    @field_validator("method")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _template(self) -> HttpRoute:
        try:
            RouteTable([self.route("")])
            conflict = reserved_conflict(self.path, RESERVED_HTTP_PATHS)
        except RouteError as exc:
            raise ValueError(f"path: {exc}") from None
        if conflict:
            raise ValueError(f"path: {conflict}")
        return self

    def route(self, name: str) -> Route:
        return Route(name=name, method=self.method, path=self.path)


# ----------------------------------------------------------------------------------------------
# the Lambda API


class ApiCredential(_Model):
    """An access key the Lambda API accepts (requests are SigV4-signed by boto3 and the CLI)."""

    access_key_id: Annotated[str, Field(min_length=1, max_length=128)]
    secret_access_key: SecretStr


class LambdaApiConfig(_Model):
    """Lambda's REST API on `http.listen`: Invoke, ListFunctions/GetFunction and the event source
    mapping operations. Without credentials it is served only on a loopback listener (anyone who
    can reach 127.0.0.1 can already edit the config file); with them every request must carry a
    valid SigV4 signature by one of them."""

    credentials: list[ApiCredential] = Field(default_factory=list)
    # Where API-created mappings are kept: a file in state_dir (one instance), or kafka://TOPIC, a
    # compacted topic every replica reads from the start.
    registry: str | None = None

    @field_validator("registry")
    @classmethod
    def _registry_uri(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme != "kafka" or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError("must be kafka://TOPIC (omit it to keep the registry in state_dir)")
        return value


# ----------------------------------------------------------------------------------------------
# root


class Config(_Model):
    region: str = "us-east-1"
    account_id: Annotated[str, Field(pattern=r"^\d{12}$")] = "000000000000"
    state_dir: Path = Path(".router")
    # Bound on the payload bytes kept under state_dir/dead-letter (delivery/dead_letter.py).
    dead_letter_max_bytes: Annotated[int, Field(ge=1024 * 1024)] = 1024 * 1024 * 1024
    functions: dict[str, FunctionConfig] = Field(default_factory=dict)
    kafka: KafkaConfig | None = None
    mqtt: MqttConfig | None = None
    http: HttpConfig = Field(default_factory=HttpConfig)
    s3: S3Config | None = None
    event_source_mappings: dict[str, EventSourceMapping] = Field(default_factory=dict)
    http_routes: dict[str, HttpRoute] = Field(default_factory=dict)
    lambda_api: LambdaApiConfig | None = None
    stall_timeout_seconds: Annotated[float, Field(gt=0)] = 300
    stall_exit_seconds: Annotated[float, Field(gt=0)] | None = None
    shutdown_timeout_seconds: Annotated[float, Field(gt=0)] = 30
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    # Where accepted push events wait: a SQLite file in state_dir (unset, one machine) or
    # kafka://TOPIC, topics every replica shares (delivery/kafka_queue.py).
    async_queue: str | None = None

    @field_validator("async_queue")
    @classmethod
    def _async_queue_uri(cls, value: str | None) -> str | None:
        if not value:  # unset, or an empty ${VAR:-} in the file: the SQLite queue
            return None
        parts = urlsplit(value)
        if parts.scheme != "kafka" or not parts.netloc or parts.path not in ("", "/") or parts.query:
            raise ValueError("must be kafka://TOPIC (omit it to keep the queue in state_dir)")
        return value

    @property
    def async_queue_topic(self) -> str | None:
        return urlsplit(self.async_queue).netloc if self.async_queue else None

    @field_validator("functions", "event_source_mappings", "http_routes")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"name {name!r} must be 1-64 letters, digits, '-' or '_'")
        return value

    # -- views used by the composition root ------------------------------------------------------

    def stream_mappings(self) -> dict[str, StreamMapping]:
        return {n: m for n, m in self.event_source_mappings.items() if isinstance(m, StreamMapping)}

    def app_event_mappings(self) -> dict[str, AppEventMapping]:
        return {n: m for n, m in self.event_source_mappings.items() if isinstance(m, AppEventMapping)}

    def bucket_mappings(self) -> dict[str, BucketMapping]:
        return {n: m for n, m in self.event_source_mappings.items() if isinstance(m, BucketMapping)}

    def function_arn(self, function: str, qualifier: str | None = None) -> str:
        arn = f"arn:aws:lambda:{self.region}:{self.account_id}:function:{function}"
        return f"{arn}:{qualifier}" if qualifier else arn

    def role_arn(self, function: str) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{function}-role"

    def stream_arn(self, topic: str) -> str:
        return f"arn:aws:kinesis:{self.region}:{self.account_id}:stream/{topic}"


def mapping_problems(config: Config, name: str) -> list[str]:
    """What stops mapping `name` from running with the rest of `config`; each line names the
    field that must change. Also used on a reload, to hold back just the mappings that cannot be
    applied while the daemon runs (say, one that needs an mqtt section the running daemon lacks)."""
    mapping = config.event_source_mappings[name]
    where = f"event_source_mappings.{name}"
    problems: list[str] = []
    if mapping.function_name not in config.functions:
        problems.append(f"{where}.function_name: unknown function {mapping.function_name!r}")
    sections = {"kafka": config.kafka, "mqtt": config.mqtt, "s3": config.s3}
    for kind in ("on_failure", "on_success"):
        target = getattr(mapping.destination_config, kind)
        if target is not None and sections[target.scheme] is None:
            problems.append(f"{where}.destination_config.{kind}: a {target.scheme}:// destination needs "
                            f"a {target.scheme} section")
    if isinstance(mapping, StreamMapping) and config.kafka is None:
        problems.append(f"{where}.kafka_topic: needs a kafka section")
    if isinstance(mapping, BucketMapping):
        transport = mapping.bucket_notifications.transport
        if transport == "mqtt" and config.mqtt is None:
            problems.append(f"{where}.bucket_notifications.transport: mqtt needs an mqtt section")
        if transport == "webhook" and config.http.webhook_token is None:
            problems.append(f"{where}.bucket_notifications.transport: webhook needs http.webhook_token")
    if isinstance(mapping, AppEventMapping) and config.mqtt is None:
        problems.append(f"{where}.mqtt_topic: needs an mqtt section")
    return problems


def cross_checks(config: Config) -> list[str]:
    """Rules that span sections; each line names the field that must change."""
    problems: list[str] = []
    for name in config.event_source_mappings:
        problems.extend(mapping_problems(config, name))
    for name, route in config.http_routes.items():
        if route.function_name not in config.functions:
            problems.append(f"http_routes.{name}.function_name: unknown function {route.function_name!r}")
    try:
        RouteTable(route.route(name) for name, route in config.http_routes.items())
    except RouteError as exc:
        problems.append(f"http_routes: {exc}")
    if config.async_queue is not None and config.kafka is None:
        problems.append("async_queue: a kafka:// queue needs a kafka section")
    if not config.http.is_loopback and config.http.admin_token is None:
        problems.append("http.admin_token: required when http.listen is not a loopback address")
    api = config.lambda_api
    if api is not None:
        if not api.credentials and not config.http.is_loopback:
            problems.append("lambda_api.credentials: required when http.listen is not a loopback address "
                            "(the API changes what runs)")
        if api.registry is not None and config.kafka is None:
            problems.append("lambda_api.registry: a kafka:// registry needs a kafka section")
        if len({c.access_key_id for c in api.credentials}) != len(api.credentials):
            problems.append("lambda_api.credentials: an access_key_id is listed twice")
    return problems


# ----------------------------------------------------------------------------------------------
# loading

# ${VAR}, ${VAR:-default}, or a secret read from a file: ${file:PATH}, ${credential:NAME}.
_VAR_RE = re.compile(r"\$\{(?:(file|credential):([^}]+)|([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?)\}")


def _interpolate(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            kind, ref, name, default = match.groups()
            if kind is not None:
                try:
                    return secret_files.resolve(kind, ref, env)
                except ValueError as exc:
                    problems.append(f"{path or '<root>'}: {exc}")
                    return ""
            found = env.get(name)
            if found not in (None, "") or (found == "" and default is None):
                return found or ""
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        result = _VAR_RE.sub(substitute, value)
        # `key: ${UNSET:-}` means "absent", so optional secrets can default to nothing.
        return None if result == "" and _VAR_RE.fullmatch(value) else result
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}.{i}", problems) for i, v in enumerate(value)]
    return value


def _format_loc(loc: Iterable[int | str]) -> str:
    parts = [str(p) for p in loc if p not in ("stream", "bucket", "app")]
    return ".".join(parts) or "<root>"


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any] | None:
    field = model.model_fields.get(name)
    if field is None:
        return None
    lo = next((getattr(m, "ge", None) for m in field.metadata if getattr(m, "ge", None) is not None), None)
    hi = next((getattr(m, "le", None) for m in field.metadata if getattr(m, "le", None) is not None), None)
    return (lo, hi) if lo is not None and hi is not None else None


def _range_message(loc: tuple[int | str, ...], hint: tuple[type[BaseModel], ...] = ()) -> str | None:
    """Say "must be between 1 and 900" rather than pydantic's one-sided wording."""
    name = str(loc[-1])
    if hint:
        models: tuple[type[BaseModel], ...] = hint
    elif "stream" in loc:
        models = (StreamMapping,)
    elif "bucket" in loc:
        models = (BucketMapping, BucketNotifications)
    elif "app" in loc:
        models = (AppEventMapping,)
    else:
        models = (FunctionConfig, KafkaConfig, MqttConfig, HttpConfig, Config)
    for model in models:
        bounds = _bounds(model, name)
        if bounds:
            return f"must be between {bounds[0]} and {bounds[1]}"
    return None


def format_errors(error: ValidationError, models: tuple[type[BaseModel], ...] = ()) -> list[str]:
    """One `dotted.path: message` line per error; `models` names the model(s) validated when it
    is not the whole config (for the range wording)."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        loc = _format_loc(item["loc"])
        msg = str(item["msg"])
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        elif item["type"] == "missing":
            msg = "required"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
            # Rules phrased as "field: message" move that field into the path.
            head, sep, tail = msg.partition(": ")
            if sep and re.fullmatch(r"[a-z_][a-z0-9_.\[\]]*", head):
                loc, msg = f"{loc}.{head}" if loc != "<root>" else head, tail
        elif item["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            msg = _range_message(item["loc"], models) or msg[0].lower() + msg[1:]
        lines.append(f"{loc}: {msg}")
    return lines


def load_config_data(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed YAML; raises ConfigError with every problem found."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["<root>: must be a mapping of sections"])
    problems: list[str] = []
    data = _interpolate(data, os.environ if env is None else env, "", problems)
    if problems:
        raise ConfigError(problems)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None
    problems = cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def resolve_config_path(path: str | Path | None) -> Path:
    if path:
        return Path(path)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Relative `code_path`/`state_dir` stay relative to the CWD,
    as a systemd unit's WorkingDirectory or a container's workdir defines them."""
    resolved = resolve_config_path(path)
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{resolved}: cannot read ({exc.strerror or exc})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{resolved}: not valid YAML{where}"]) from None
    return load_config_data(data, env)
