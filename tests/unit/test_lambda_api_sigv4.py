"""SigV4 verification against requests signed by botocore itself, as boto3 and the CLI send them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from router.lambda_api.errors import LambdaApiError
from router.lambda_api.sigv4 import SigV4Verifier

KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = datetime(2024, 3, 12, 19, 3, 58, tzinfo=UTC).timestamp()


def signed(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None,
           secret: str = SECRET, token: str | None = None) -> tuple[str, str, CIMultiDictProxy[str]]:
    """Signed by botocore's add_auth, the call boto3 makes, at the current time."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    SigV4Auth(Credentials(KEY, secret, token), "lambda", "us-east-1").add_auth(request)
    parts = urlsplit(url)
    received = CIMultiDict(request.headers.items())
    received["Host"] = parts.netloc
    received["User-Agent"] = "Boto3/1.43"  # unsigned, as botocore leaves it
    return parts.path, parts.query, CIMultiDictProxy(received)


def verifier(offset: float = 0.0) -> SigV4Verifier:
    return SigV4Verifier({KEY: SECRET}, clock=lambda: time.time() + offset)


def test_reference_wire_example_verifies() -> None:
    h = CIMultiDict([("Host", "localhost:9000"), ("X-Amz-Invocation-Type", "RequestResponse"),
                     ("X-Amz-Log-Type", "Tail"), ("X-Amz-Date", "20240312T190358Z"),
                     ("Authorization",
                      "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240312/us-east-1/lambda/aws4_request, "
                      "SignedHeaders=host;x-amz-date;x-amz-invocation-type;x-amz-log-type, "
                      "Signature=8ebe576e2ecc1d01032d4977aac47a040ffbeb727fb6fb79d4f9398cf9e8764c")])
    body = b'{"bucket": "photos", "key": "cat.jpg"}'
    at_the_time = SigV4Verifier({KEY: SECRET}, clock=lambda: NOW)
    assert at_the_time.verify(method="POST", raw_path="/2015-03-31/functions/thumbnail%3Alive/invocations",
                              raw_query="", headers=CIMultiDictProxy(h), body=body) == KEY
    with pytest.raises(LambdaApiError) as err:  # the decoded path is not what was signed
        at_the_time.verify(method="POST", raw_path="/2015-03-31/functions/thumbnail:live/invocations",
                          raw_query="", headers=CIMultiDictProxy(h), body=body)
    assert err.value.code == "InvalidSignatureException"


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000/2015-03-31/event-source-mappings?EventSourceArn=arn%3Aaws%3Akinesis%3Aus-east-1%3A000000000000%3Astream%2Fa%2Bb&MaxItems=5",
    "http://127.0.0.1:9000/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Af/invocations?Qualifier=%24LATEST",
])
def test_signed_requests_verify_and_tampering_fails(url: str) -> None:
    path, query, headers = signed("GET", url, headers={"X-Amz-Client-Context": "e30="}, token="session")
    assert verifier().verify(method="GET", raw_path=path, raw_query=query, headers=headers, body=b"") == KEY
    with pytest.raises(LambdaApiError):
        verifier().verify(method="GET", raw_path=path, raw_query=query + "&x=1", headers=headers, body=b"")
    with pytest.raises(LambdaApiError):
        verifier().verify(method="DELETE", raw_path=path, raw_query=query, headers=headers, body=b"")


def test_body_is_covered_and_wrong_secret_or_key_refused() -> None:
    url = "http://127.0.0.1:9000/2015-03-31/event-source-mappings"
    path, query, headers = signed("POST", url, b'{"BatchSize": 5}', {"Content-Type": "application/json"})
    assert verifier().verify(method="POST", raw_path=path, raw_query=query, headers=headers,
                             body=b'{"BatchSize": 5}') == KEY
    with pytest.raises(LambdaApiError) as err:
        verifier().verify(method="POST", raw_path=path, raw_query=query, headers=headers, body=b'{"BatchSize": 6}')
    assert (err.value.status, err.value.code) == (403, "InvalidSignatureException")
    path, query, headers = signed("POST", url, b"{}", secret="wrong")
    with pytest.raises(LambdaApiError) as err:
        verifier().verify(method="POST", raw_path=path, raw_query=query, headers=headers, body=b"{}")
    assert err.value.code == "InvalidSignatureException"
    with pytest.raises(LambdaApiError) as err:
        SigV4Verifier({"OTHER": SECRET}).verify(
            method="POST", raw_path=path, raw_query=query, headers=headers, body=b"{}")
    assert err.value.code == "UnrecognizedClientException"


def test_clock_skew_and_missing_or_garbled_authorization() -> None:
    path, query, headers = signed("GET", "http://127.0.0.1:9000/2015-03-31/functions")
    with pytest.raises(LambdaApiError) as err:
        verifier(301).verify(method="GET", raw_path=path, raw_query=query, headers=headers, body=b"")
    assert err.value.message.startswith(f"Signature expired: {headers['X-Amz-Date']} is now earlier than")
    with pytest.raises(LambdaApiError) as err:
        verifier(-301).verify(method="GET", raw_path=path, raw_query=query, headers=headers, body=b"")
    assert err.value.message.startswith("Signature not yet current")
    for auth in (None, "Bearer x", "AWS4-HMAC-SHA256 Credential=\udcff"):
        h = CIMultiDict(headers)
        del h["Authorization"]
        if auth is not None:
            h["Authorization"] = auth
        with pytest.raises(LambdaApiError) as err:
            verifier().verify(method="GET", raw_path=path, raw_query=query, headers=CIMultiDictProxy(h), body=b"")
        assert err.value.status == 403
