"""s3://BUCKET/PREFIX destinations: PutObject of the JSON record to PREFIX + key.

Path-style addressing because SeaweedFS, MinIO and most self-hosted stores serve buckets under the
endpoint's path rather than as virtual hosts. botocore's own retries are turned off: the caller
keeps the record and retries with its own backoff, and a bounded single attempt keeps `send` prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from router.config import Config
from router.delivery.destination import DestinationError, SharedConnection, encode_record
from router.observability.metrics import Metrics


class _S3Client:
    """An aiobotocore client together with the exit stack that closes it."""

    def __init__(self, client: Any, stack: contextlib.AsyncExitStack) -> None:
        self.client = client
        self.stack = stack


# Answers about the request itself (no such bucket, access denied, a malformed key, too large);
# these codes are the exceptions that a later attempt can cure.
_PERMANENT_STATUS = frozenset({400, 403, 404, 405, 411, 413, 414})
_TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeTooSkewed", "ExpiredToken", "SlowDown"})


def permanent(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = exc.response.get("Error", {}).get("Code")
    return status in _PERMANENT_STATUS and code not in _TRANSIENT_CODES


def s3_connection(
    config: Config, *, timeout: float, metrics: Metrics | None = None, log: Any = None
) -> SharedConnection[_S3Client]:
    s3 = config.s3

    async def connect() -> _S3Client:
        if s3 is None:
            raise DestinationError("s3:// destination needs an s3 section")
        boto_config = BotoConfig(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=s3.endpoint_url,
                region_name=s3.region or config.region,
                aws_access_key_id=s3.access_key_id.get_secret_value() if s3.access_key_id else None,
                aws_secret_access_key=s3.secret_access_key.get_secret_value() if s3.secret_access_key else None,
                config=boto_config,
            )
        )
        return _S3Client(client, stack)

    async def disconnect(holder: _S3Client) -> None:
        await holder.stack.aclose()

    return SharedConnection("s3-destination", connect, disconnect, timeout=timeout, permanent=permanent,
                            metrics=metrics, log=log)


def object_key(prefix: str, key: str) -> str:
    """PREFIX + key, with a '/' between them when the prefix names a folder without one."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return prefix + key


class S3Destination:
    def __init__(self, uri: str, bucket: str, prefix: str, connection: SharedConnection[_S3Client]) -> None:
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix
        self._connection = connection
        self.max_record_bytes: int | None = None  # a PutObject takes 5 GB

    async def send(self, record: Mapping[str, Any], *, key: str, body: bytes | None = None) -> None:
        body = encode_record(record) if body is None else body
        full_key = object_key(self.prefix, key)

        async def put(holder: _S3Client) -> None:
            await holder.client.put_object(
                Bucket=self.bucket, Key=full_key, Body=body, ContentType="application/json"
            )

        await self._connection.run(self.uri, put)
