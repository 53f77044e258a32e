"""Verifying AWS Signature Version 4 on requests boto3, the AWS CLI and other SDKs sign.

The canonical request is built by botocore's own `SigV4Auth`, the code that signed the request on
the client, so the two cannot disagree on encoding details (the path is percent-encoded a second
time, the query is sorted in its encoded form, header values are trimmed and joined). What is ours
is only what a server must add (reference 4.4):

* the request is rebuilt exactly as it arrived: the still-encoded path and query, the raw body,
  and only the headers the client listed in `SignedHeaders`;
* the date must be within 5 minutes of our clock (Lambda's window, and its messages);
* a signed `X-Amz-Content-Sha256` is checked against the body (botocore trusts that header
  verbatim, which would let a signature cover a body it never saw);
* the signatures are compared in constant time.

A session token (`X-Amz-Security-Token`) is part of the signature like any other header; router
issues no temporary credentials, so the token itself is not checked. Nothing here logs a secret or
the Authorization header.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDictProxy

from router.lambda_api.errors import LambdaApiError

MAX_SKEW_SECONDS = 300
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)"
    r"/aws4_request\s*,\s*SignedHeaders=(?P<headers>[a-z0-9;._-]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_MISMATCH = ("The request signature we calculated does not match the signature you provided. Check your AWS "
             "Secret Access Key and signing method. Consult the service documentation for details.")


def _forbidden(code: str, message: str) -> LambdaApiError:
    return LambdaApiError(403, code, message)


class SigV4Verifier:
    def __init__(self, credentials: Mapping[str, str], *, service: str = "lambda",
                 clock: Callable[[], float] = time.time) -> None:
        self._secrets = dict(credentials)
        self._service = service
        self._clock = clock

    def verify(self, *, method: str, raw_path: str, raw_query: str, headers: CIMultiDictProxy[str],
               body: bytes) -> str:
        """The access key that signed the request; raises LambdaApiError (403) otherwise."""
        try:
            authorization = headers.get("Authorization")
            if authorization is not None:
                authorization.encode("ascii")
        except UnicodeError:
            authorization = ""
        if authorization is None:
            raise _forbidden("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTH_RE.match(authorization)
        if match is None:
            raise _forbidden("IncompleteSignatureException",
                             "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
                             "(AWS4-HMAC-SHA256)")
        if match["service"] != self._service:
            raise _forbidden("InvalidSignatureException",
                             f"Credential should be scoped to correct service: '{self._service}'.")
        amz_date = headers.get("X-Amz-Date", "")
        if not amz_date.startswith(match["date"]):
            raise _forbidden("InvalidSignatureException",
                             "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
                             "from HTTP.")
        secret = self._secrets.get(match["key"])
        if secret is None:
            raise _forbidden("UnrecognizedClientException", "The security token included in the request is invalid.")
        self._check_clock(amz_date)
        signed = match["headers"].split(";")
        picked: dict[str, str] = {}
        for name in signed:
            values = headers.getall(name, [])
            if not values:
                raise _forbidden("InvalidSignatureException", _MISMATCH)
            picked[name] = ",".join(values)
        if "x-amz-content-sha256" in picked and picked["x-amz-content-sha256"] != hashlib.sha256(body).hexdigest():
            raise _forbidden("InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not "
                                                          "match what was computed.")
        url = f"http://{picked.get('host', headers.get('Host', ''))}{raw_path}"
        if raw_query:
            url += f"?{raw_query}"
        request = AWSRequest(method=method, url=url, data=body, headers=picked)
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(match["key"], secret), self._service, match["region"])
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, match["signature"]):
            raise _forbidden("InvalidSignatureException", _MISMATCH)
        return match["key"]

    def _check_clock(self, amz_date: str) -> None:
        try:
            signed_at = datetime.strptime(amz_date, _DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise _forbidden("IncompleteSignatureException", "X-Amz-Date must be in the ISO8601 basic format "
                                                             "yyyyMMdd'T'HHmmss'Z'") from None
        now = datetime.fromtimestamp(self._clock(), UTC)
        skew = timedelta(seconds=MAX_SKEW_SECONDS)
        if signed_at < now - skew:
            raise _forbidden("InvalidSignatureException",
                             f"Signature expired: {amz_date} is now earlier than {(now - skew):{_DATE_FORMAT}} "
                             f"({now:{_DATE_FORMAT}} - 5 min.)")
        if signed_at > now + skew:
            raise _forbidden("InvalidSignatureException",
                             f"Signature not yet current: {amz_date} is still later than "
                             f"{(now + skew):{_DATE_FORMAT}} ({now:{_DATE_FORMAT}} + 5 min.)")
