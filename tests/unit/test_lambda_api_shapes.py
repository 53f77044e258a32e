"""Event source mappings in Lambda's spelling map onto the config model: one validation, two spellings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.config import load_config_data
from router.lambda_api.errors import LambdaApiError
from router.lambda_api.mapping_shapes import create_mapping, function_name, mapping_document, update_mapping

CONFIG = load_config_data({"functions": {"aggregate": {"handler": "app.handler"}}, "kafka": {}, "s3": {}})
ARN = "arn:aws:kinesis:us-east-1:000000000000:stream/clicks"
# The body of reference 3.10, as boto3 sends it.
CREATE = {"FunctionName": "aggregate", "EventSourceArn": ARN, "StartingPosition": "TRIM_HORIZON", "BatchSize": 500,
          "MaximumBatchingWindowInSeconds": 5, "ParallelizationFactor": 2, "BisectBatchOnFunctionError": True,
          "MaximumRetryAttempts": 3, "FunctionResponseTypes": ["ReportBatchItemFailures"],
          "DestinationConfig": {"OnFailure": {"Destination": "arn:aws:s3:::clicks-failures"}},
          "FilterCriteria": {"Filters": [{"Pattern": json.dumps({"data": {"kind": ["click"]}})}]}}


def error(call: Any) -> LambdaApiError:
    with pytest.raises(LambdaApiError) as err:
        call()
    return err.value


def test_create_body_becomes_the_config_model_and_its_document_round_trips() -> None:
    mapping = create_mapping(CREATE, CONFIG, "u")
    assert (mapping.function_name, mapping.kafka_topic, mapping.batch_size) == ("aggregate", "clicks", 500)
    assert mapping.destination_config.on_failure is not None
    assert mapping.destination_config.on_failure.destination == "s3://clicks-failures"
    assert mapping.filter_criteria is not None and mapping.filter_criteria.compiled.matches({"data": {"kind": "click"}})
    doc = mapping_document("u", mapping, CONFIG, state="Creating", last_modified=1710270238.5123,
                           last_processing_result="No records processed")
    for key, value in CREATE.items():
        if key != "FunctionName":
            assert doc[key] == value, key
    assert doc["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:aggregate"
    assert (doc["State"], doc["LastModified"], doc["MaximumRecordAgeInSeconds"]) == ("Creating", 1710270238.512, -1)


def test_defaults_are_lambdas_and_unset_destination_reads_as_empty_on_failure() -> None:
    mapping = create_mapping({"FunctionName": "aggregate", "EventSourceArn": ARN, "StartingPosition": "LATEST"},
                             CONFIG, "u")
    doc = mapping_document("u", mapping, CONFIG, state="Enabled", last_modified=0, last_processing_result="OK")
    assert doc["BatchSize"] == 100 and doc["MaximumRetryAttempts"] == -1 and doc["TumblingWindowInSeconds"] == 0
    assert doc["DestinationConfig"] == {"OnFailure": {}} and "FilterCriteria" not in doc


@pytest.mark.parametrize(("change", "message"), [
    ({"BatchSize": 0}, "BatchSize: must be between 1 and 10000"),
    ({"MaximumRecordAgeInSeconds": 5}, "MaximumRecordAgeInSeconds: must be -1 or between 60 and 604800"),
    ({"TumblingWindowInSeconds": 60}, "TumblingWindowInSeconds: cannot be combined with ParallelizationFactor > 1"),
    ({"DestinationConfig": {"OnSuccess": {"Destination": "arn:aws:s3:::x"}}},
     "DestinationConfig.OnSuccess: not supported"),
    ({"FilterCriteria": {"Filters": [{"Pattern": "{bad"}]}}, "FilterCriteria.Filters[0].Pattern: not valid JSON"),
    ({"Topics": ["t"]}, "Topics: not supported"),
    ({"ShardBufferRecords": 5}, "ShardBufferRecords: not supported"),
])
def test_update_is_validated_by_the_model_with_lambdas_field_names(change: dict[str, Any], message: str) -> None:
    current = create_mapping(CREATE, CONFIG, "u")
    err = error(lambda: update_mapping(change, current, CONFIG, "u"))
    assert err.code == "InvalidParameterValueException"
    assert err.message.startswith(message)


def test_update_clears_filters_and_destination_and_disables() -> None:
    current = create_mapping(CREATE, CONFIG, "u")
    updated = update_mapping({"Enabled": False, "FilterCriteria": {}, "DestinationConfig": {"OnFailure": {}},
                              "BatchSize": 10}, current, CONFIG, "u")
    assert (updated.enabled, updated.filter_criteria, updated.destination_config.on_failure) == (False, None, None)
    assert updated.batch_size == 10 and updated.parallelization_factor == 2  # the rest is kept


def test_create_needs_the_stream_members_and_this_routers_region() -> None:
    assert "StartingPosition: required" in error(
        lambda: create_mapping({"FunctionName": "aggregate", "EventSourceArn": ARN}, CONFIG, "u")).message
    other = {**CREATE, "EventSourceArn": ARN.replace("us-east-1", "eu-west-1")}
    assert error(lambda: create_mapping(other, CONFIG, "u")).message.startswith("EventSourceArn: this router serves")


@pytest.mark.parametrize("name", ["aggregate", "aggregate:$LATEST", "000000000000:function:aggregate",
                                  "arn:aws:lambda:us-east-1:000000000000:function:aggregate:$LATEST"])
def test_every_function_name_form(name: str) -> None:
    assert function_name(name, CONFIG) == "aggregate"


@pytest.mark.parametrize("name", ["missing", "aggregate:live",
                                  "arn:aws:lambda:eu-west-1:000000000000:function:aggregate"])
def test_unknown_functions_versions_and_regions_are_not_found(name: str) -> None:
    err = error(lambda: function_name(name, CONFIG))
    assert (err.status, err.code) == (404, "ResourceNotFoundException")
    assert err.message.startswith("Function not found: arn:aws:lambda:")
