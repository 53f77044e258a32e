"""The five event source mapping operations: Create, Get, List, Update, Delete.

A mapping made through the API is an entry of the registry (its UUID is the mapping's name in the
supervisor); the reconciler runs it. States follow Lambda's: Create answers `Creating`, Update
`Updating` (`Enabling`/`Disabling` when `Enabled` flips), Delete `Deleting`, and the mapping reads
so until the reconciler runs that revision, then `Enabled` or `Disabled` (or, for a delete, it is
gone: 404). Update or Delete while a change is still being applied is Lambda's 400
ResourceInUseException; callers wait for the state to settle, as they do on AWS.

Stream mappings of the config file are listed too, under a UUID derived from their name (stable
across restarts and replicas), but they belong to the file: Update and Delete on them answer 409
ResourceConflictException, since a reload would otherwise silently undo the API's change or the
file's. Bucket and app-event mappings have no Lambda shape (Lambda's S3 and IoT triggers are not
event source mappings) and are not listed.

A second mapping of the same function and stream is refused with 409 ResourceConflictException,
as Lambda does: two consumers of one stream for one function would run every record twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from router.config import StreamMapping
from router.lambda_api.errors import LambdaApiError, invalid_parameter
from router.lambda_api.functions import page
from router.lambda_api.mapping_shapes import (
    create_mapping,
    function_name,
    mapping_document,
    stream_topic,
    update_mapping,
)
from router.lambda_api.reconciler import Reconciler
from router.lambda_api.registry import Entry, Registry
from router.supervisor import MappingSupervisor

MAX_MAPPINGS_PER_PAGE = 100
_FILE_NAMESPACE = uuid.UUID("5f6d1c1e-8f4b-4b8e-9f43-7a3c6c1e0a11")
_NOT_FOUND = "The resource you requested does not exist."


def file_mapping_uuid(name: str) -> str:
    """The UUID a config-file mapping is listed under (stable: derived from its name)."""
    return str(uuid.uuid5(_FILE_NAMESPACE, name))


@dataclass(frozen=True)
class _Listed:
    uuid: str
    mapping: StreamMapping
    state: str
    last_modified: float
    from_file: bool
    reason: str = "User action"


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise LambdaApiError(400, "InvalidRequestContentException",
                             "Could not parse request body into json: the body is not JSON") from None


def _not_found() -> LambdaApiError:
    return LambdaApiError(404, "ResourceNotFoundException", _NOT_FOUND)


class EventSourceMappings:
    def __init__(self, *, reconciler: Reconciler, registry: Registry, supervisor: MappingSupervisor,
                 started: float, clock: Callable[[], float] = time.time) -> None:
        self._reconciler = reconciler
        self._registry = registry
        self._supervisor = supervisor
        self._started = started
        self._clock = clock
        self._deleting: dict[str, tuple[int, Entry]] = {}

    @property
    def _config(self) -> Any:
        return self._reconciler.base

    # -- what exists ------------------------------------------------------------------------------

    def _applied(self, revision: int) -> bool:
        return revision <= self._reconciler.applied_revision

    def _listed(self) -> list[_Listed]:
        items = [
            _Listed(file_mapping_uuid(name), mapping, "Enabled" if mapping.enabled else "Disabled",
                    self._started, from_file=True)
            for name, mapping in sorted(self._config.stream_mappings().items())
        ]
        entries = sorted(self._registry.entries().values(), key=lambda e: (e.last_modified, e.uuid))
        for entry in entries:
            state = "Enabled" if entry.mapping.enabled else "Disabled"
            held = self._reconciler.held_back(entry.uuid)
            if not self._applied(entry.revision):
                state = entry.transition
            items.append(_Listed(entry.uuid, entry.mapping, state, entry.last_modified, from_file=False,
                                 reason=f"Held back: {held[0]}" if held else "User action"))
        for name, (revision, entry) in list(self._deleting.items()):
            if self._applied(revision):
                del self._deleting[name]
            elif name not in self._registry.entries():
                items.append(_Listed(name, entry.mapping, "Deleting", entry.last_modified, from_file=False))
        return items

    def _find(self, mapping_uuid: str) -> _Listed:
        for item in self._listed():
            if item.uuid == mapping_uuid:
                return item
        raise _not_found()

    def _document(self, item: _Listed) -> dict[str, Any]:
        name = next((n for n in self._config.stream_mappings() if file_mapping_uuid(n) == item.uuid), item.uuid)
        return mapping_document(item.uuid, item.mapping, self._config, state=item.state,
                                last_modified=item.last_modified,
                                last_processing_result=self._last_result(name),
                                state_transition_reason=item.reason)

    def _last_result(self, name: str) -> str:
        status = self._supervisor.stream_status(name)
        if status is None:
            return "No records processed"
        if status.get("last_error"):
            return "PROBLEM: Function call failed"
        shards = status.get("shards", {}).values()
        return "OK" if any(shard.get("checkpoint") is not None for shard in shards) else "No records processed"

    def _respond(self, status: int, document: dict[str, Any], request_id: str) -> web.Response:
        return web.json_response(document, status=status, headers={"x-amzn-RequestId": request_id})

    def _changeable(self, item: _Listed) -> None:
        if item.from_file:
            raise LambdaApiError(409, "ResourceConflictException",
                                 f"The event source mapping {item.uuid} is defined in the config file; change it "
                                 f"there and reload (SIGHUP)")
        if item.state not in ("Enabled", "Disabled"):
            raise LambdaApiError(400, "ResourceInUseException",
                                 f"Cannot update the event source mapping {item.uuid} because it is in use "
                                 f"(State {item.state}); try again once it is Enabled or Disabled")

    # -- operations -------------------------------------------------------------------------------

    async def create(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        new_uuid = str(uuid.uuid4())
        mapping = create_mapping(_json_body(body), self._config, new_uuid)
        for item in self._listed():
            if (item.mapping.function_name, item.mapping.kafka_topic) == (mapping.function_name, mapping.kafka_topic):
                raise LambdaApiError(
                    409, "ResourceConflictException",
                    f"The event source arn ({self._config.stream_arn(mapping.kafka_topic)}) and function "
                    f"({mapping.function_name}) provided mapping already exists. Please update or delete the "
                    f"existing mapping with UUID {item.uuid}")
        entry = await self._registry.put(Entry(new_uuid, mapping, self._clock(), "Creating"))
        return self._respond(202, self._document(_Listed(entry.uuid, mapping, "Creating", entry.last_modified,
                                                         from_file=False)), request_id)

    async def get(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        return self._respond(200, self._document(self._find(request.match_info["uuid"])), request_id)

    async def list(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        items = self._listed()
        if "FunctionName" in request.query:
            wanted = function_name(request.query["FunctionName"], self._config)
            items = [i for i in items if i.mapping.function_name == wanted]
        if "EventSourceArn" in request.query:
            topic = stream_topic(request.query["EventSourceArn"], self._config)
            items = [i for i in items if i.mapping.kafka_topic == topic]
        chunk, next_marker = page(items, request, MAX_MAPPINGS_PER_PAGE)
        document: dict[str, Any] = {"EventSourceMappings": [self._document(i) for i in chunk]}
        if next_marker is not None:
            document["NextMarker"] = next_marker
        return self._respond(200, document, request_id)

    async def update(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        item = self._find(request.match_info["uuid"])
        self._changeable(item)
        mapping = update_mapping(_json_body(body), item.mapping, self._config, item.uuid)
        if mapping.kafka_topic != item.mapping.kafka_topic:  # not an update member; kept for safety
            raise invalid_parameter("EventSourceArn: cannot be changed; create a new mapping")
        transition = ("Updating" if mapping.enabled == item.mapping.enabled
                      else "Enabling" if mapping.enabled else "Disabling")
        entry = await self._registry.put(Entry(item.uuid, mapping, self._clock(), transition))
        return self._respond(202, self._document(_Listed(item.uuid, mapping, transition, entry.last_modified,
                                                         from_file=False)), request_id)

    async def delete(self, request: web.Request, body: bytes, request_id: str) -> web.Response:
        item = self._find(request.match_info["uuid"])
        self._changeable(item)
        entry = self._registry.get(item.uuid)
        revision = await self._registry.delete(item.uuid)
        if entry is not None:
            self._deleting[item.uuid] = (revision, entry)
        return self._respond(202, self._document(_Listed(item.uuid, item.mapping, "Deleting", item.last_modified,
                                                         from_file=False)), request_id)
