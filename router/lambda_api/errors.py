"""Lambda's error protocol, as botocore parses it.

botocore takes the error code from the `x-amzn-ErrorType` header and the message from the body's
`message` (or `Message`) key; a response without that header would surface as a bare status code
and `except client.exceptions.ResourceNotFoundException` would never match. So every error carries
the header, a request id, and a JSON body with `Type` and the message under the key Lambda's model
uses for that error (reference 3.7).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

# Errors whose modelled message member is `Message` rather than `message`.
_CAPITALISED = {"ResourceNotFoundException", "ResourceInUseException", "ServiceException"}


class LambdaApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, reason: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason
        self.retry_after = retry_after

    def response(self, request_id: str | None = None) -> web.Response:
        body: dict[str, Any] = {"Type": "Service" if self.status >= 500 else "User",
                                "Message" if self.code in _CAPITALISED else "message": self.message}
        if self.reason is not None:
            body["Reason"] = self.reason
        headers = {"x-amzn-ErrorType": self.code, "x-amzn-RequestId": request_id or str(uuid.uuid4())}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return web.Response(status=self.status, text=json.dumps(body), content_type="application/json",
                            headers=headers)


def not_found(message: str) -> LambdaApiError:
    return LambdaApiError(404, "ResourceNotFoundException", message)


def invalid_parameter(message: str) -> LambdaApiError:
    return LambdaApiError(400, "InvalidParameterValueException", message)
