"""The push queue on Kafka through a 30 s Kafka outage: MQTT messages that arrive meanwhile are not
acknowledged (the broker keeps them), none is lost, and the daemon recovers without help.

The outage is real on the wire: Tansu advertises a TCP gate in front of it, and closing the gate
cuts every connection and refuses new ones, as a broker that went away does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiomqtt
import pytest
from gate_support import Gate
from test_push_support import (
    bucket_mapping,
    calls,
    config_data,
    make_config,
    minio_notification,
    running,
    wait_connected,
    wait_until,
)

from router.devstack import Mosquitto, Tansu

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30.0


class GatedTansu(Tansu):
    """Tansu whose advertised listener is a gate, so every client connection goes through it."""

    def __init__(self, workdir: Path, gate_port: int) -> None:
        super().__init__(workdir)
        self.gate_port = gate_port

    def _command(self) -> list[str]:
        command = super()._command()
        at = command.index("--advertised-listener-url")
        command[at + 1] = f"tcp://{self.host}:{self.gate_port}"
        return command


@pytest.mark.timeout(180)
async def test_a_kafka_outage_holds_acknowledgements_and_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    gate = Gate("127.0.0.1", 0)
    with GatedTansu(tmp_path / "tansu", gate.port) as tansu:
        gate.target = ("127.0.0.1", tansu.port)
        await gate.open()
        topic = f"minio/outage-{uuid.uuid4().hex[:8]}"
        data = config_data(tmp_path, {"photos": bucket_mapping("photos", topic=topic)}, broker=mosquitto,
                           client_id=f"outage-{uuid.uuid4().hex[:6]}")
        data["async_queue"] = f"kafka://outage-{uuid.uuid4().hex[:8]}"
        data["kafka"] = {"bootstrap_servers": f"127.0.0.1:{gate.port}", "session_timeout_ms": 3000}
        try:
            async with running(make_config(data)) as app, aiomqtt.Client(
                    mosquitto.host, mosquitto.port, identifier=f"{time.time_ns():x}",
                    protocol=aiomqtt.ProtocolVersion.V311, clean_session=True) as publisher:
                assert app.mqtt is not None
                mqtt = app.mqtt
                await wait_connected(app)

                async def publish(keys: list[str]) -> None:
                    for key in keys:
                        await publisher.publish(topic, minio_notification("photos", key), qos=1)

                before = [f"before/{i:02d}.jpg" for i in range(10)]
                await publish(before)
                await wait_until(lambda: len(calls(tmp_path)) >= 10, 30, "the events before the outage")
                await wait_until(lambda: mqtt.status()["acknowledged"] == 10, 10, "their acknowledgements")

                await gate.close()
                during = [f"during/{i:02d}.jpg" for i in range(20)]
                started = time.monotonic()
                for i in range(0, 20, 4):
                    await publish(during[i:i + 4])
                    await asyncio.sleep(OUTAGE_SECONDS / 6)
                    # Not stored, so not acknowledged: the broker still holds every one of them.
                    assert mqtt.status()["acknowledged"] == 10, mqtt.status()
                await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
                assert mqtt.status()["acknowledged"] == 10
                assert len(calls(tmp_path)) == 10
                await gate.open()

                await wait_until(lambda: {c["key"] for c in calls(tmp_path)} >= set(before) | set(during), 90,
                                 "every event published during the outage", interval=0.2)
                await wait_until(lambda: mqtt.status()["acknowledged"] >= 30, 30, "their acknowledgements")
                after = [f"after/{i:02d}.jpg" for i in range(5)]
                await publish(after)
                await wait_until(lambda: {c["key"] for c in calls(tmp_path)} >= set(after), 30,
                                 "events published after it, as usual")
        finally:
            await gate.close()
