"""The Lambda context object: every attribute of awslambdaric's LambdaContext, with its type."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from router.runtime.context import (
    Client,
    ClientContext,
    CognitoIdentity,
    LambdaContext,
    make_client_context,
    new_log_stream_name,
)

REQUEST_ID = "6f1c3c4e-2c8b-4e55-9d3a-1b2c3d4e5f60"
ARN = "arn:aws:lambda:eu-west-1:123456789012:function:thumbnail"


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_context(clock: FakeClock, **overrides: object) -> LambdaContext:
    fields: dict[str, object] = {
        "aws_request_id": REQUEST_ID,
        "deadline_ms": 1_700_000_003_000,
        "invoked_function_arn": ARN,
        "function_name": "thumbnail",
        "memory_limit_in_mb": "256",
        "log_group_name": "/aws/lambda/thumbnail",
        "log_stream_name": "2024/01/02/[$LATEST]0123456789abcdef0123456789abcdef",
        "clock": clock,
    }
    fields.update(overrides)
    return LambdaContext(**fields)  # type: ignore[arg-type]


def test_every_attribute_has_lambdas_value_and_type() -> None:
    ctx = make_context(FakeClock(1_700_000_000.0))
    assert ctx.function_name == "thumbnail"
    assert ctx.function_version == "$LATEST"
    assert ctx.invoked_function_arn == ARN
    assert ctx.memory_limit_in_mb == "256" and isinstance(ctx.memory_limit_in_mb, str)
    assert ctx.aws_request_id == REQUEST_ID
    assert ctx.log_group_name == "/aws/lambda/thumbnail"
    assert ctx.log_stream_name.startswith("2024/01/02/[$LATEST]")
    assert ctx.tenant_id is None
    assert ctx.client_context is None


def test_memory_limit_is_a_str_even_when_given_an_int() -> None:
    ctx = make_context(FakeClock(0.0), memory_limit_in_mb=512)
    assert ctx.memory_limit_in_mb == "512"


def test_identity_is_never_none() -> None:
    ctx = make_context(FakeClock(0.0))
    assert isinstance(ctx.identity, CognitoIdentity)
    assert ctx.identity.cognito_identity_id is None
    assert ctx.identity.cognito_identity_pool_id is None


def test_identity_from_cognito() -> None:
    ctx = make_context(
        FakeClock(0.0), identity={"cognitoIdentityId": "eu-west-1:abc", "cognitoIdentityPoolId": "eu-west-1:pool"}
    )
    assert ctx.identity.cognito_identity_id == "eu-west-1:abc"
    assert ctx.identity.cognito_identity_pool_id == "eu-west-1:pool"


def test_remaining_time_counts_down_from_the_deadline_and_clamps_at_zero() -> None:
    clock = FakeClock(1_700_000_000.0)
    ctx = make_context(clock)
    assert ctx.get_remaining_time_in_millis() == 3000
    assert isinstance(ctx.get_remaining_time_in_millis(), int)
    clock.now += 1.2345
    assert ctx.get_remaining_time_in_millis() == 1766
    clock.now += 10
    assert ctx.get_remaining_time_in_millis() == 0


def test_client_context_with_every_field() -> None:
    data = {
        "client": {
            "installation_id": "inst-1",
            "app_title": "Photos",
            "app_version_name": "1.2.3",
            "app_version_code": "123",
            "app_package_name": "com.example.photos",
        },
        "custom": {"screen": "gallery"},
        "env": {"platform": "Android", "locale": "en_GB"},
    }
    ctx = make_context(FakeClock(0.0), client_context=data)
    cc = ctx.client_context
    assert isinstance(cc, ClientContext)
    assert isinstance(cc.client, Client)
    assert cc.client.installation_id == "inst-1"
    assert cc.client.app_title == "Photos"
    assert cc.client.app_version_name == "1.2.3"
    assert cc.client.app_version_code == "123"
    assert cc.client.app_package_name == "com.example.photos"
    assert cc.custom == {"screen": "gallery"}
    assert cc.env == {"platform": "Android", "locale": "en_GB"}


def test_client_context_without_client_has_none_client() -> None:
    cc = make_client_context({"custom": {"a": 1}})
    assert cc is not None
    assert cc.client is None
    assert cc.custom == {"a": 1}
    assert cc.env is None
    assert make_client_context(None) is None


def test_log_goes_to_the_sink_unchanged() -> None:
    lines: list[str] = []
    ctx = make_context(FakeClock(0.0), log_sink=lines.append)
    ctx.log("hello\n")
    ctx.log(42)
    assert lines == ["hello\n", "42"]


def test_log_stream_name_has_lambdas_shape_and_is_unique() -> None:
    now = datetime(2024, 3, 9, 23, 59, tzinfo=UTC)
    first, second = new_log_stream_name(now), new_log_stream_name(now)
    assert re.fullmatch(r"2024/03/09/\[\$LATEST\][0-9a-f]{32}", first)
    assert first != second


def test_repr_names_the_request_without_failing() -> None:
    ctx = make_context(FakeClock(0.0), client_context={"client": {"app_title": "x"}})
    text = repr(ctx)
    assert REQUEST_ID in text and "app_title=x" in text
