"""The Lambda API with the clients users run: boto3 and the AWS CLI against `router run`, on Tansu.

Every mapping operation is judged by what then happens to records in Kafka: delivered after a
create, held after a disable, resumed from the checkpoint after an enable (nothing delivered twice),
stopped after a delete, and still there after a restart.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from daemon_support import Daemon
from stream_daemon import HANDLERS, calls, kafka_client, produce

from router.devstack import Tansu, wait_for

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
REGION, ACCOUNT = "eu-west-1", "123456789012"
KEY, SECRET = "AKIDROUTERTEST", "router-test-secret"


def api_config(tmp_path: Path, kafka: Tansu, *, registry: str | None = None, replica: str = "a",
               file_mappings: dict[str, Any] | None = None) -> dict[str, Any]:
    lambda_api: dict[str, Any] = {"credentials": [{"access_key_id": KEY, "secret_access_key": SECRET}]}
    if registry:
        lambda_api["registry"] = registry
    return {
        "region": REGION, "account_id": ACCOUNT,
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "session_timeout_ms": 6000,
                  "heartbeat_interval_ms": 500, "client": kafka_client()},
        "lambda_api": lambda_api,
        "functions": {
            "echo": {"handler": "basic.echo", "code_path": str(TESTS / "handlers")},
            "context": {"handler": "basic.context_info", "code_path": str(TESTS / "handlers")},
            "boom": {"handler": "basic.boom", "code_path": str(TESTS / "handlers")},
            "later": {"handler": "async_recorder.succeed", "code_path": str(TESTS / "async_handlers"),
                      "environment": {"variables": {"RECORD_FILE": str(tmp_path / "async.jsonl")}}},
            "recorder": {"handler": "stream_recorder.handler", "code_path": str(HANDLERS),
                         "reserved_concurrent_executions": 4,
                         "environment": {"variables": {"RECORD_FILE": str(tmp_path / "calls.jsonl"),
                                                       "REPLICA": replica}}},
        },
        "event_source_mappings": file_mappings or {},
    }


def client(daemon: Daemon, *, secret: str = SECRET, key: str = KEY) -> Any:
    return boto3.client(
        "lambda", endpoint_url=f"http://127.0.0.1:{daemon.port}", region_name=REGION,
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=BotoConfig(retries={"max_attempts": 1}, read_timeout=30),
    )


def stream_arn(topic: str) -> str:
    return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{topic}"


def wait_state(lam: Any, uuid: str, state: str, timeout: float = 30) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def settled() -> bool:
        try:
            seen.update(lam.get_event_source_mapping(UUID=uuid))
        except lam.exceptions.ResourceNotFoundException:  # another replica has not read it yet
            return False
        return bool(seen["State"] == state)

    wait_for(settled, timeout=timeout, what=f"mapping {uuid} {state}")
    return seen


def wait_gone(lam: Any, uuid: str, timeout: float = 30) -> None:
    def gone() -> bool:
        try:
            lam.get_event_source_mapping(UUID=uuid)
        except lam.exceptions.ResourceNotFoundException:
            return True
        return False

    wait_for(gone, timeout=timeout, what=f"mapping {uuid} gone")


def data_seen(tmp_path: Path) -> list[str]:
    return [d for c in calls(tmp_path) for d in c["data"]]


def send(kafka: Tansu, topic: str, values: list[str]) -> None:
    import asyncio

    asyncio.run(produce(kafka.bootstrap_servers, topic, [(None, v.encode(), None) for v in values]))


@pytest.fixture
def router_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(config: dict[str, Any], workdir: Path | None = None) -> Daemon:
        where = workdir or tmp_path
        where.mkdir(parents=True, exist_ok=True)
        config.setdefault("state_dir", str(where / "state"))
        d = Daemon(config, where)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait()


# -- Invoke -------------------------------------------------------------------------------------


def test_invoke_request_response_event_dry_run_and_errors(tmp_path: Path, kafka: Tansu,
                                                          router_daemon: Callable[..., Daemon]) -> None:
    daemon = router_daemon(api_config(tmp_path, kafka))
    lam = client(daemon)

    answer = lam.invoke(FunctionName="echo", Payload=json.dumps({"n": 1}).encode())
    assert answer["StatusCode"] == 200
    assert answer["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in answer
    body = json.loads(answer["Payload"].read())
    assert body["event"] == {"n": 1}
    assert body["request_id"] == answer["ResponseMetadata"]["RequestId"]

    # Every FunctionName form, a qualifier, an empty payload (= {}), a log tail, a client context.
    for name in ("echo:$LATEST", f"{ACCOUNT}:function:echo", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:echo"):
        assert json.loads(lam.invoke(FunctionName=name)["Payload"].read())["event"] == {}
    tailed = lam.invoke(FunctionName="echo", Qualifier="$LATEST", LogType="Tail", Payload=b"[1, 2]")
    log = base64.b64decode(tailed["LogResult"]).decode()
    assert log.startswith("START RequestId: ") and "REPORT RequestId: " in log
    assert json.loads(tailed["Payload"].read())["event"] == [1, 2]
    context = base64.b64encode(json.dumps({"custom": {"user": "u1"}, "client": {"app_title": "t"}}).encode())
    info = json.loads(lam.invoke(FunctionName="context", ClientContext=context.decode())["Payload"].read())
    assert info["custom"] == {"user": "u1"} and info["client"]["app_title"] == "t"
    assert info["invoked_function_arn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:context"

    failed = lam.invoke(FunctionName="boom", Payload=b"{}")
    assert failed["StatusCode"] == 200 and failed["FunctionError"] == "Unhandled"
    error = json.loads(failed["Payload"].read())
    assert error["errorType"] and error["errorMessage"]

    assert lam.invoke(FunctionName="echo", InvocationType="DryRun")["StatusCode"] == 204

    queued = lam.invoke(FunctionName="later", InvocationType="Event", Payload=json.dumps({"Records": [{"n": 7}]}))
    assert queued["StatusCode"] == 202
    records = tmp_path / "async.jsonl"
    wait_for(lambda: records.exists() and records.read_text().strip() != "", timeout=20, what="Event invoke ran")
    assert json.loads(records.read_text().splitlines()[0])["event"] == {"Records": [{"n": 7}]}

    with pytest.raises(lam.exceptions.ResourceNotFoundException) as missing:
        lam.invoke(FunctionName="nope")
    assert "function:nope" in missing.value.response["Error"]["Message"]
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="echo", Qualifier="live")
    with pytest.raises(lam.exceptions.InvalidRequestContentException) as bad:
        lam.invoke(FunctionName="echo", Payload=b"{not json")
    assert bad.value.response["Error"]["Message"].startswith("Could not parse request body into json")
    with pytest.raises(lam.exceptions.RequestTooLargeException):
        lam.invoke(FunctionName="later", InvocationType="Event", Payload=b'"' + b"x" * (1024 * 1024) + b'"')

    with pytest.raises(ClientError) as forged:
        client(daemon, secret="wrong").invoke(FunctionName="echo")
    assert forged.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert forged.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as stranger:
        client(daemon, key="AKIDSTRANGER").list_functions()
    assert stranger.value.response["Error"]["Code"] == "UnrecognizedClientException"

    functions = lam.list_functions()["Functions"]
    assert sorted(f["FunctionName"] for f in functions) == ["boom", "context", "echo", "later", "recorder"]
    got = lam.get_function(FunctionName="echo")
    assert got["Configuration"]["Handler"] == "basic.echo" and got["Configuration"]["Version"] == "$LATEST"
    assert lam.get_function_configuration(FunctionName="boom")["FunctionArn"].endswith(":function:boom")
    pages = lam.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 2})
    paged = [f["FunctionName"] for page in pages for f in page["Functions"]]
    assert paged == ["boom", "context", "echo", "later", "recorder"]
    logged = [line for line in daemon.log_lines() if line.get("event") == "lambda_api.request"]
    assert any(line["operation"] == "Invoke" and line["status"] == 200 for line in logged)
    assert SECRET not in daemon.log_path.read_text()


# -- event source mappings ----------------------------------------------------------------------


@pytest.mark.usefixtures("kafka_client")
def test_mapping_lifecycle_moves_records_in_tansu(tmp_path: Path, kafka: Tansu, topic: Callable[..., str],
                                                   router_daemon: Callable[..., Daemon]) -> None:
    stream = topic(1)
    send(kafka, stream, ["before-1", "before-2"])
    config = api_config(tmp_path, kafka)
    daemon = router_daemon(config)
    lam = client(daemon)

    created = lam.create_event_source_mapping(
        FunctionName="recorder", EventSourceArn=stream_arn(stream), StartingPosition="TRIM_HORIZON", BatchSize=10,
        MaximumRetryAttempts=1,
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert created["State"] == "Creating"
    uuid = created["UUID"]
    assert created["FunctionArn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:recorder"
    assert created["EventSourceArn"] == stream_arn(stream)
    wait_state(lam, uuid, "Enabled")
    wait_for(lambda: data_seen(tmp_path) == ["before-1", "before-2"], timeout=30, what="records before create")
    wait_for(lambda: lam.get_event_source_mapping(UUID=uuid)["LastProcessingResult"] == "OK", timeout=15,
               what="LastProcessingResult OK")

    with pytest.raises(lam.exceptions.ResourceConflictException):
        lam.create_event_source_mapping(FunctionName="recorder", EventSourceArn=stream_arn(stream),
                                        StartingPosition="LATEST")
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as invalid:
        lam.create_event_source_mapping(FunctionName="recorder", EventSourceArn=stream_arn("other"),
                                        StartingPosition="LATEST", BatchSize=20000)
    assert "BatchSize" in invalid.value.response["Error"]["Message"]

    updated = lam.update_event_source_mapping(UUID=uuid, Enabled=False)
    assert updated["State"] == "Disabling"
    wait_state(lam, uuid, "Disabled")
    send(kafka, stream, ["while-disabled"])
    time.sleep(3)
    assert data_seen(tmp_path) == ["before-1", "before-2"]

    assert lam.update_event_source_mapping(UUID=uuid, Enabled=True, BatchSize=5)["State"] == "Enabling"
    assert wait_state(lam, uuid, "Enabled")["BatchSize"] == 5
    wait_for(lambda: len(data_seen(tmp_path)) >= 3, timeout=30, what="record held while disabled")
    assert data_seen(tmp_path) == ["before-1", "before-2", "while-disabled"]  # from the checkpoint, once

    # The registry survives a restart: the mapping comes back and goes on from its checkpoint.
    assert daemon.stop() == 0
    daemon = router_daemon(config)
    lam = client(daemon)
    assert wait_state(lam, uuid, "Enabled")["BatchSize"] == 5
    send(kafka, stream, ["after-restart"])
    wait_for(lambda: len(data_seen(tmp_path)) >= 4, timeout=30, what="record after restart")
    assert data_seen(tmp_path) == ["before-1", "before-2", "while-disabled", "after-restart"]
    listed = lam.list_event_source_mappings(FunctionName="recorder")["EventSourceMappings"]
    assert [m["UUID"] for m in listed] == [uuid]
    assert lam.list_event_source_mappings(EventSourceArn=stream_arn("nothing"))["EventSourceMappings"] == []

    deleted = lam.delete_event_source_mapping(UUID=uuid)
    assert deleted["State"] == "Deleting"
    wait_gone(lam, uuid)
    send(kafka, stream, ["after-delete"])
    time.sleep(3)
    assert "after-delete" not in data_seen(tmp_path)
    assert lam.list_event_source_mappings()["EventSourceMappings"] == []


def test_file_mappings_are_listed_with_stable_uuids_and_belong_to_the_file(
        tmp_path: Path, kafka: Tansu, topic: Callable[..., str], router_daemon: Callable[..., Daemon]) -> None:
    stream = topic(1)
    config = api_config(tmp_path, kafka, file_mappings={"clicks": {
        "function_name": "recorder", "kafka_topic": stream, "starting_position": "TRIM_HORIZON"}})
    daemon = router_daemon(config)
    lam = client(daemon)
    (listed,) = lam.list_event_source_mappings()["EventSourceMappings"]
    assert listed["EventSourceArn"] == stream_arn(stream) and listed["State"] == "Enabled"
    with pytest.raises(lam.exceptions.ResourceConflictException) as conflict:
        lam.update_event_source_mapping(UUID=listed["UUID"], BatchSize=3)
    assert "config file" in conflict.value.response["Error"]["Message"]
    with pytest.raises(lam.exceptions.ResourceConflictException):
        lam.delete_event_source_mapping(UUID=listed["UUID"])
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_event_source_mapping(UUID="00000000-0000-4000-8000-000000000000")
    send(kafka, stream, ["from-file"])
    wait_for(lambda: data_seen(tmp_path) == ["from-file"], timeout=30, what="file mapping runs")
    daemon.stop()
    again = client(router_daemon(config))
    assert [m["UUID"] for m in again.list_event_source_mappings()["EventSourceMappings"]] == [listed["UUID"]]


def test_aws_cli(tmp_path: Path, kafka: Tansu, topic: Callable[..., str], router_daemon: Callable[..., Daemon]) -> None:
    stream = topic(1)
    daemon = router_daemon(api_config(tmp_path, kafka))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION,
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    aws = [str(Path(sys.executable).parent / "aws"), "--endpoint-url", f"http://127.0.0.1:{daemon.port}",
           "--output", "json", "lambda"]

    def run(*args: str) -> Any:
        done = subprocess.run([*aws, *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    out = tmp_path / "out.json"
    result = run("invoke", "--function-name", "echo", "--payload", '{"from": "cli"}', str(out))
    assert result["StatusCode"] == 200
    assert json.loads(out.read_text())["event"] == {"from": "cli"}
    created = run("create-event-source-mapping", "--function-name", "recorder", "--event-source-arn",
                  stream_arn(stream), "--starting-position", "TRIM_HORIZON", "--batch-size", "3")
    assert created["State"] == "Creating" and created["BatchSize"] == 3
    listed = run("list-event-source-mappings", "--function-name", "recorder")
    assert [m["UUID"] for m in listed["EventSourceMappings"]] == [created["UUID"]]
    send(kafka, stream, ["via-cli"])
    wait_for(lambda: data_seen(tmp_path) == ["via-cli"], timeout=30, what="CLI-created mapping runs")


def test_two_replicas_share_a_kafka_registry(tmp_path: Path, kafka: Tansu, topic: Callable[..., str],
                                             router_daemon: Callable[..., Daemon]) -> None:
    stream = topic(4)
    registry = f"kafka://{topic(1)}-registry"
    one = router_daemon(api_config(tmp_path, kafka, registry=registry, replica="one"), tmp_path / "one")
    two = router_daemon(api_config(tmp_path, kafka, registry=registry, replica="two"), tmp_path / "two")
    first, second = client(one), client(two)

    created = first.create_event_source_mapping(FunctionName="recorder", EventSourceArn=stream_arn(stream),
                                                StartingPosition="TRIM_HORIZON", BatchSize=5)
    uuid = created["UUID"]
    wait_state(second, uuid, "Enabled")  # the other replica read it from the topic and runs it
    wait_state(first, uuid, "Enabled")
    values = [f"r{i}" for i in range(40)]
    import asyncio

    asyncio.run(produce(kafka.bootstrap_servers, stream, [(None, v.encode(), i % 4) for i, v in enumerate(values)]))
    wait_for(lambda: sorted(set(data_seen(tmp_path))) == sorted(values), timeout=60, what="both replicas consume")
    replicas = {c["replica"] for c in calls(tmp_path)}
    assert replicas == {"one", "two"}, "the group of both replicas shares the shards"

    second.delete_event_source_mapping(UUID=uuid)
    wait_gone(first, uuid)
    wait_gone(second, uuid)
    time.sleep(2)  # let the runners drain
    before = len(calls(tmp_path))
    send(kafka, stream, ["after-delete"])
    time.sleep(3)
    assert len(calls(tmp_path)) == before and "after-delete" not in data_seen(tmp_path)


# -- auth, limits and reloads ---------------------------------------------------------------------


def _raw(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


async def test_signed_api_on_a_non_loopback_listener(tmp_path: Path) -> None:
    import asyncio

    from test_push_support import make_config, running

    from router.devstack import free_port

    port = free_port()
    config = make_config({
        "region": REGION, "account_id": ACCOUNT, "state_dir": str(tmp_path / "state"),
        "http": {"listen": f"0.0.0.0:{port}", "admin_token": "admin-token"},
        "lambda_api": {"credentials": [{"access_key_id": KEY, "secret_access_key": SECRET}]},
        "functions": {"echo": {"handler": "basic.echo", "code_path": str(TESTS / "handlers")},
                      "off": {"handler": "basic.echo", "code_path": str(TESTS / "handlers"),
                              "reserved_concurrent_executions": 0}},
    })

    class Port:
        def __init__(self, port: int) -> None:
            self.port = port

    async with running(config):
        lam = client(Port(port))  # type: ignore[arg-type]
        answer = await asyncio.to_thread(lam.invoke, FunctionName="echo", Payload=b'{"signed": true}')
        assert json.loads(answer["Payload"].read())["event"] == {"signed": True}
        status, headers, _ = await asyncio.to_thread(_raw, port, "POST", "/2015-03-31/functions/echo/invocations",
                                                        b"{}")
        assert (status, headers["x-amzn-ErrorType"]) == (403, "MissingAuthenticationTokenException")
        status, headers, _ = await asyncio.to_thread(
            _raw, port, "GET", "/2015-03-31/functions", None,
            {"Authorization": f"AWS4-HMAC-SHA256 Credential={KEY}/20260101/{REGION}/lambda/aws4_request, "
                              f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
             "X-Amz-Date": "20260101T000000Z"})
        assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
        with pytest.raises(lam.exceptions.TooManyRequestsException) as throttled:
            await asyncio.to_thread(lam.invoke, FunctionName="off")
        assert throttled.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
        with pytest.raises(ClientError) as unknown:
            await asyncio.to_thread(lam.list_aliases, FunctionName="echo")
        assert unknown.value.response["Error"]["Code"] == "UnknownOperationException"


def test_unsigned_requests_on_loopback_without_credentials_and_reloads_keep_api_mappings(
        tmp_path: Path, kafka: Tansu, topic: Callable[..., str], router_daemon: Callable[..., Daemon]) -> None:
    import yaml

    stream = topic(1)
    config = api_config(tmp_path, kafka)
    config["lambda_api"] = {}
    daemon = router_daemon(config)
    status, _, body = _raw(daemon.port, "POST", "/2015-03-31/event-source-mappings", json.dumps({
        "FunctionName": "recorder", "EventSourceArn": stream_arn(stream), "StartingPosition": "TRIM_HORIZON",
    }).encode(), {"Content-Type": "application/json"})
    assert status == 202, body
    uuid = body["UUID"]
    lam = client(daemon)  # signed requests are accepted too: nothing checks them without credentials
    wait_state(lam, uuid, "Enabled")
    send(kafka, stream, ["one"])
    wait_for(lambda: data_seen(tmp_path) == ["one"], timeout=30, what="API mapping runs")

    # A reload of the file (a new function) leaves the API's mapping running.
    edited = yaml.safe_load(daemon.config_path.read_text())
    edited["functions"]["extra"] = {"handler": "basic.echo", "code_path": str(TESTS / "handlers")}
    daemon.config_path.write_text(yaml.safe_dump(edited))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(line.get("event") == "reload.applied" for line in daemon.log_lines()), timeout=20,
             what="reload applied")
    assert lam.get_function(FunctionName="extra")["Configuration"]["Handler"] == "basic.echo"
    send(kafka, stream, ["two"])
    wait_for(lambda: data_seen(tmp_path) == ["one", "two"], timeout=30, what="API mapping survives the reload")

    # Its function removed from the file: held back (and said so), back when the function returns.
    del edited["functions"]["recorder"]
    daemon.config_path.write_text(yaml.safe_dump(edited))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: lam.get_event_source_mapping(UUID=uuid)["StateTransitionReason"].startswith("Held back"),
             timeout=20, what="mapping held back")
    send(kafka, stream, ["three"])
    time.sleep(3)
    assert data_seen(tmp_path) == ["one", "two"]
    daemon.config_path.write_text(yaml.safe_dump(config | {"state_dir": edited["state_dir"],
                                                           "http": edited["http"]}))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: data_seen(tmp_path) == ["one", "two", "three"], timeout=30, what="mapping back")
