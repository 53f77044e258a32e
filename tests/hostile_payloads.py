"""Hostile push payloads for the intake fuzz tests (unit and over real brokers): random bytes, deep
nesting, huge numbers, lone surrogates, oversize fields, and every MinIO and SeaweedFS fixture with
its leaves mutated. Deterministic per seed."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(name: str) -> bytes:
    return next(FIXTURES.glob(f"*/{name}")).read_bytes()


COUNT = 10_000
HOSTILE: list[Any] = [
    10**400, -(10**30), 1e308, float("inf"), "", "\ud800", "a\udfffb", "x" * 70_000, None, True, [], {},
    [[[[[]]]]], "../../etc/passwd", "%ZZ%", "\x00", 2**63, -1, "9" * 5000,
]


def lone_surrogate_key() -> bytes:
    record = json.loads(fixture("mqtt_put_encoded_key.json"))
    record["Records"][0]["s3"]["object"]["key"] = "photos/a\ud800.jpg"
    record["Key"] = "photos/a\ud800.jpg"
    return json.dumps(record).encode()  # json.dumps escapes it as \\ud800, which json.loads brings back


def _mutate(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        return {k: (rng.choice(HOSTILE) if rng.random() < 0.15 else _mutate(v, rng)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mutate(v, rng) for v in value]
    return rng.choice(HOSTILE) if rng.random() < 0.3 else value


def _encode(document: Any) -> bytes:
    try:
        return json.dumps(document, allow_nan=True).encode()
    except (ValueError, RecursionError):
        return b"{"


def hostile_payloads(seed: int = 2026, count: int = COUNT) -> list[bytes]:
    rng = random.Random(seed)
    shapes = [json.loads(p.read_bytes()) for p in sorted(FIXTURES.glob("*/*.json"))]
    payloads: list[bytes] = [lone_surrogate_key()]
    while len(payloads) < count:
        kind = rng.randrange(6)
        if kind == 0:
            payloads.append(rng.randbytes(rng.randrange(0, 300)))
        elif kind == 1:
            depth = rng.choice([50, 500, 5000, 100_000])
            payloads.append(b'{"Records":' + b"[" * depth + b"]" * depth + b"}")
        elif kind == 2:
            payloads.append(_encode({"Records": [rng.choice(HOSTILE)] * rng.randrange(1, 4)}))
        else:
            payloads.append(_encode(_mutate(rng.choice(shapes), rng)))
    return payloads
