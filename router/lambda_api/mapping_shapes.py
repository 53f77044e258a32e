"""Event source mappings in Lambda's spelling: request bodies in, EventSourceMappingConfiguration out.

One validation, two spellings: a CreateEventSourceMapping or UpdateEventSourceMapping body is
turned into the config file's snake_case (`BatchSize` -> `batch_size`, `FilterCriteria.Filters[].
Pattern` -> `filter_criteria.filters[].pattern`) and validated by the same `StreamMapping` model
and cross checks as a mapping in the file, so a rule cannot differ between the two. Their messages
come back with the field named as the caller spelled it (`BatchSize: must be between 1 and 10000`)
in Lambda's `InvalidParameterValueException`.

What the names mean here:

* `EventSourceArn` `arn:aws:kinesis:<region>:<account>:stream/<topic>` names the Kafka topic (the
  region and account must be the daemon's: every event router builds carries them).
* `FunctionName` is a name, `name:$LATEST`, `<account>:function:<name>` or a full function ARN.
* `DestinationConfig.OnFailure.Destination` takes router's own URIs (`kafka://`, `s3://`,
  `mqtt://`) or the AWS ARN that stands for each: an S3 bucket ARN is that bucket, an SQS queue ARN
  a Kafka topic of the queue's name, an SNS topic ARN an MQTT topic of its name. Responses give the
  ARN form, as Lambda does.

Only the members Lambda accepts for a Kinesis stream are taken; router's own tuning keys
(`retry_base_delay_seconds`, `consumer_group_id`, ...) stay file-only. Members of other source
types (`Topics`, `Queues`, `SourceAccessConfigurations`, ...) are refused by name, except when
empty, since some tools send them empty whatever the source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from router.config import Config, StreamMapping, format_errors, mapping_problems
from router.lambda_api.errors import LambdaApiError, invalid_parameter, not_found

CREATE_MEMBERS = frozenset({
    "FunctionName", "EventSourceArn", "Enabled", "BatchSize", "MaximumBatchingWindowInSeconds",
    "StartingPosition", "StartingPositionTimestamp", "ParallelizationFactor", "BisectBatchOnFunctionError",
    "MaximumRetryAttempts", "MaximumRecordAgeInSeconds", "FunctionResponseTypes", "DestinationConfig",
    "FilterCriteria", "TumblingWindowInSeconds",
})
UPDATE_MEMBERS = CREATE_MEMBERS - {"EventSourceArn", "StartingPosition", "StartingPositionTimestamp"}

_STREAM_ARN = re.compile(
    r"^arn:aws:kinesis:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):stream/(?P<topic>[A-Za-z0-9._-]+)$"
)
_FUNCTION = re.compile(
    r"^(?:(?:arn:aws:lambda:(?P<region>[a-z0-9-]+):)?(?P<account>\d{12}):function:)?"
    r"(?P<name>[A-Za-z0-9_-]{1,64})(?::(?P<qualifier>[A-Za-z0-9$_-]{1,128}))?$"
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _snake_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {snake(str(k)): _snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value


# -- names --------------------------------------------------------------------------------------


def function_name(value: Any, config: Config, *, qualifier: str | None = None) -> str:
    """The configured function that `value` (any of Lambda's FunctionName forms) names.

    Only `$LATEST` exists: router has no published versions or aliases."""
    if not isinstance(value, str):
        raise invalid_parameter("FunctionName: must be a string")
    match = _FUNCTION.match(value)
    if match is None:
        raise invalid_parameter(f"FunctionName: {value[:256]!r} is not a function name or ARN")
    name = match["name"]
    given = match["qualifier"]
    if given and qualifier and given != qualifier:
        raise invalid_parameter("The derived qualifier from the function name does not match the specified "
                                "qualifier.")
    wanted = given or qualifier
    elsewhere = (match["region"] not in (None, config.region)) or (match["account"] not in (None, config.account_id))
    if name not in config.functions or elsewhere or wanted not in (None, "$LATEST"):
        raise not_found(f"Function not found: {config.function_arn(name, wanted)}")
    return name


def stream_topic(arn: Any, config: Config) -> str:
    if not isinstance(arn, str):
        raise invalid_parameter("EventSourceArn: must be a string")
    match = _STREAM_ARN.match(arn)
    if match is None:
        raise invalid_parameter(
            "EventSourceArn: must be a Kinesis stream ARN, arn:aws:kinesis:<region>:<account>:stream/<kafka topic>"
        )
    if match["region"] != config.region or match["account"] != config.account_id:
        raise invalid_parameter(f"EventSourceArn: this router serves region {config.region} and account "
                                f"{config.account_id} (expected {config.stream_arn(match['topic'])})")
    return match["topic"]


def destination_uri(value: Any) -> str:
    """Router's destination URI for a destination given as an ARN (or already as a URI)."""
    if not isinstance(value, str):
        raise invalid_parameter("DestinationConfig.OnFailure.Destination: must be a string")
    if value.startswith("arn:aws:s3:::"):
        return f"s3://{value.removeprefix('arn:aws:s3:::')}"
    for service, scheme in (("sqs", "kafka"), ("sns", "mqtt")):
        match = re.fullmatch(rf"arn:aws:{service}:[a-z0-9-]+:\d{{12}}:([A-Za-z0-9._-]+)", value)
        if match:
            return f"{scheme}://{match[1]}"
    return value  # a URI, or something the model refuses with its own message


def destination_arn(uri: str, config: Config) -> str:
    parts = urlsplit(uri)
    name = parts.netloc + parts.path.rstrip("/")
    if parts.scheme == "s3":
        return f"arn:aws:s3:::{name}"
    service = {"kafka": "sqs", "mqtt": "sns"}.get(parts.scheme)
    if service and "/" not in name:
        return f"arn:aws:{service}:{config.region}:{config.account_id}:{name}"
    return uri  # an MQTT topic with levels has no ARN spelling: give router's own


# -- requests -----------------------------------------------------------------------------------


def _members(body: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise invalid_parameter("The request body must be a JSON object")
    members: dict[str, Any] = {}
    for key, value in body.items():
        if key in allowed:
            members[key] = value
        elif value in (None, {}, []):
            continue
        else:
            raise invalid_parameter(f"{key}: not supported for Kinesis-stream event source mappings on router")
    return members


def _spec(members: Mapping[str, Any]) -> dict[str, Any]:
    """The snake_case fields of a StreamMapping for the given (known) members."""
    spec: dict[str, Any] = {}
    for key, value in members.items():
        if key in ("FunctionName", "EventSourceArn"):
            continue
        if key == "FilterCriteria":  # {} or no Filters: no criteria
            cleared = isinstance(value, Mapping) and not value.get("Filters")
            spec["filter_criteria"] = None if cleared else _snake_keys(value)
        elif key == "DestinationConfig":
            spec["destination_config"] = _destination_spec(value)
        else:
            spec[snake(key)] = value
    return spec


def _destination_spec(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value  # the model says what is wrong
    spec: dict[str, Any] = {}
    for kind, target in value.items():
        if isinstance(target, Mapping) and not target.get("Destination"):
            spec[snake(str(kind))] = None  # {"OnFailure": {}}: no destination
        elif isinstance(target, Mapping):
            spec[snake(str(kind))] = {"destination": destination_uri(target["Destination"])}
        else:
            spec[snake(str(kind))] = target
    return spec


def _validated(spec: dict[str, Any], config: Config, name: str) -> StreamMapping:
    try:
        mapping = StreamMapping.model_validate(spec)
    except ValidationError as exc:
        raise _invalid(format_errors(exc, (StreamMapping,))) from None
    with_it = config.model_copy(update={"event_source_mappings": {**config.event_source_mappings, name: mapping}})
    problems = mapping_problems(with_it, name)
    if problems:
        raise _invalid([p.removeprefix(f"event_source_mappings.{name}.") for p in problems])
    return mapping


def _invalid(lines: list[str]) -> LambdaApiError:
    """The first problem, its field paths and any field names inside the text in PascalCase."""
    line = lines[0]
    path, sep, message = line.partition(": ")
    if not sep:
        path, message = "", line
    names = sorted(StreamMapping.model_fields, key=len, reverse=True)
    for field in names:
        message = re.sub(rf"\b{field}\b", _public(field), message)
    public = ".".join(_public(part) for part in path.split(".") if part and part != "<root>")
    return invalid_parameter(f"{public}: {message}" if public else message)


def _public(field: str) -> str:
    return "EventSourceArn" if field == "kafka_topic" else pascal(field)


def create_mapping(body: Any, config: Config, name: str) -> StreamMapping:
    """The StreamMapping a CreateEventSourceMapping body asks for (validated as a whole)."""
    members = _members(body, CREATE_MEMBERS)
    for required in ("FunctionName", "EventSourceArn", "StartingPosition"):
        if members.get(required) in (None, ""):
            raise invalid_parameter(f"{required}: required for a Kinesis stream event source mapping")
    spec = _spec(members)
    spec["function_name"] = function_name(members["FunctionName"], config)
    spec["kafka_topic"] = stream_topic(members["EventSourceArn"], config)
    return _validated(spec, config, name)


def update_mapping(body: Any, current: StreamMapping, config: Config, name: str) -> StreamMapping:
    """`current` with an UpdateEventSourceMapping body's members applied (validated as a whole)."""
    members = _members(body, UPDATE_MEMBERS)
    spec = current.model_dump()
    spec.update(_spec(members))
    if "FunctionName" in members:
        spec["function_name"] = function_name(members["FunctionName"], config)
    return _validated(spec, config, name)


# -- responses ----------------------------------------------------------------------------------


def mapping_document(
    uuid: str,
    mapping: StreamMapping,
    config: Config,
    *,
    state: str,
    last_modified: float,
    last_processing_result: str,
    state_transition_reason: str = "User action",
) -> dict[str, Any]:
    """Lambda's EventSourceMappingConfiguration for a stream mapping."""
    target = mapping.destination_config.on_failure
    document: dict[str, Any] = {
        "UUID": uuid,
        "EventSourceMappingArn": f"arn:aws:lambda:{config.region}:{config.account_id}:event-source-mapping:{uuid}",
        "EventSourceArn": config.stream_arn(mapping.kafka_topic),
        "FunctionArn": config.function_arn(mapping.function_name),
        "StartingPosition": mapping.starting_position,
        "BatchSize": mapping.batch_size,
        "MaximumBatchingWindowInSeconds": _number(mapping.maximum_batching_window_in_seconds),
        "ParallelizationFactor": mapping.parallelization_factor,
        "LastModified": round(last_modified, 3),
        "LastProcessingResult": last_processing_result,
        "State": state,
        "StateTransitionReason": state_transition_reason,
        "DestinationConfig": {"OnFailure": {"Destination": destination_arn(target.destination, config)}
                              if target else {}},
        "MaximumRecordAgeInSeconds": mapping.maximum_record_age_in_seconds,
        "BisectBatchOnFunctionError": mapping.bisect_batch_on_function_error,
        "MaximumRetryAttempts": mapping.maximum_retry_attempts,
        "TumblingWindowInSeconds": mapping.tumbling_window_in_seconds,
        "FunctionResponseTypes": list(mapping.function_response_types),
    }
    if mapping.starting_position_timestamp is not None:
        document["StartingPositionTimestamp"] = mapping.starting_position_timestamp
    if mapping.filter_criteria is not None:
        document["FilterCriteria"] = {"Filters": [{"Pattern": f.pattern} for f in mapping.filter_criteria.filters]}
    return document


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
