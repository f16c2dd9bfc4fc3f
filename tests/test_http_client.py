"""TLS, proxies, redirects and timeouts of every remote kind (http, airbyte, airflow, webhooks).

Real servers on 127.0.0.1: aiohttp apps behind real TLS (certificates from a throw-away CA made
with openssl, as in the security tests), a forward proxy that relays plain requests and
CONNECT tunnels, and the Airbyte and Airflow stand-ins of :mod:`tests.remote_fakes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from kafkaconsole.config.models import AirbytePipeline as AirbyteConfig
from kafkaconsole.config.models import AirflowPipeline as AirflowConfig
from kafkaconsole.config.models import (
    AlertRule,
    AppConfig,
    HttpPipeline,
    MonitoringConfig,
    RetryPolicy,
)
from kafkaconsole.engine.alerts import AlertEvent, AlertNotifier, AlertStatus
from kafkaconsole.engine.clients import security_warnings
from kafkaconsole.engine.http_client import MAX_REDIRECTS, HttpClient
from kafkaconsole.engine.pipelines import PipelineConfigError, build_pipeline
from kafkaconsole.engine.records import (
    RunResult,
    RunStatus,
)
from kafkaconsole.engine.retry import run_pipeline
from tests.remote_fakes import FakeAirbyte, FakeAirflow
from tests.test_pipelines_remote import PAYLOAD, RECORD
from tests.tls_support import Certs, make_certs

FAST = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.05, jitter=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("http-certs"))


def server_tls(certs: Certs, *, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


@dataclass
class Hit:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    client_subject: str | None


@dataclass
class Site:
    """An aiohttp server on 127.0.0.1 (plain or TLS) whose routes the test writes."""

    tls: ssl.SSLContext | None = None
    hits: list[Hit] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def start(self, routes: dict[str, Callable[[web.Request], Awaitable[Any]]]) -> Site:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, self._recording(handler))
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    def _recording(
        self, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> Callable[[web.Request], Awaitable[Any]]:
        async def record(request: web.Request) -> Any:
            subject = None
            transport = request.transport
            peer = transport.get_extra_info("peercert") if transport is not None else None
            for rdn in (peer or {}).get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        subject = value
            self.hits.append(
                Hit(
                    request.method,
                    str(request.url),
                    dict(request.headers),
                    await request.read(),
                    subject,
                )
            )
            return await handler(request)

        return record

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@contextlib.asynccontextmanager
async def site(
    routes: dict[str, Callable[[web.Request], Awaitable[Any]]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[Site]:
    server = await Site(tls).start(routes)
    try:
        yield server
    finally:
        await server.stop()


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"run_id": "run-1"})


def redirect(status: int, location: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": location})

    return handler


def http_pipeline(url: str, **kwargs: Any) -> Any:
    return build_pipeline("web", HttpPipeline(kind="http", url=url, **kwargs))


async def run_http(url: str, **kwargs: Any) -> RunResult:
    """One trigger through an ``http`` pipeline to ``url``, retries and all."""
    async with http_pipeline(url, **kwargs) as pipeline:
        return await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)


# --------------------------------------------------------------------------------------------
# TLS


async def test_ca_file_verifies_a_private_ca(certs: Certs) -> None:
    async with site({"/hook": ok}, server_tls(certs)) as server:
        result = await run_http(f"{server.url}/hook", ca_file=str(certs.ca))
        assert result.status == RunStatus.SUCCEEDED
        async with http_pipeline(f"{server.url}/hook") as pipeline:  # the system's CAs
            refused = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
        rogue = await run_http(f"{server.url}/hook", ca_file=str(certs.rogue_ca))
    for failed in (refused, rogue):
        assert failed.status == RunStatus.FAILED
        assert failed.attempts == 1  # a refused certificate is not retried
        assert failed.error is not None
        assert failed.error.startswith("TLS: the server's certificate was refused: ")
        assert "certificate verify failed" in failed.error
    assert len(server.hits) == 1


async def test_verify_false_accepts_any_certificate_and_is_warned_about(certs: Certs) -> None:
    async with site({"/hook": ok}, server_tls(certs)) as server:
        result = await run_http(f"{server.url}/hook", verify=False)
    assert result.status == RunStatus.SUCCEEDED
    config = AppConfig.model_validate(
        {
            "pipelines": {
                "hook": {"kind": "http", "url": "https://x.example", "verify": False},
                "dag": {"kind": "airflow", "url": "https://y", "dag_id": "d", "verify": False},
                "safe": {"kind": "airbyte", "url": "https://z"},
            },
            "monitoring": {
                "alerts": [
                    {
                        "verdict": "stalled",
                        "channel": "webhook",
                        "url": "https://a.example",
                        "verify": False,
                    }
                ]
            },
        }
    )
    warnings = [w for w in security_warnings(config) if "verify = false" in w]
    assert warnings == [
        "pipeline hook: verify = false: the server's certificate is not checked, so anyone on "
        "the path can read or change what is sent (credentials included)",
        "pipeline dag: verify = false: the server's certificate is not checked, so anyone on "
        "the path can read or change what is sent (credentials included)",
        "alert stalled: verify = false: the server's certificate is not checked, so anyone on "
        "the path can read or change what is sent (credentials included)",
    ]


async def test_client_certificate_for_mutual_tls(certs: Certs) -> None:
    async with site({"/hook": ok}, server_tls(certs, client_ca=certs.ca)) as server:
        async with http_pipeline(
            f"{server.url}/hook",
            ca_file=str(certs.ca),
            cert_file=str(certs.client_cert),
            key_file=str(certs.client_key),
        ) as pipeline:
            result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
        without = await run_http(f"{server.url}/hook", ca_file=str(certs.ca))
    assert result.status == RunStatus.SUCCEEDED
    assert [hit.client_subject for hit in server.hits] == ["kafkaconsole-client"]
    assert without.status == RunStatus.FAILED  # the server ended the handshake


async def test_unreadable_tls_files_fail_at_start_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    pipeline = http_pipeline("https://127.0.0.1:9/hook", ca_file=str(missing))
    with pytest.raises(PipelineConfigError) as caught:
        await pipeline.start()
    assert str(caught.value) == (
        f"pipeline 'web': cannot load TLS files (ca_file {missing}): No such file or directory"
    )
    await pipeline.close()


def test_tls_keys_are_checked_in_the_config(certs: Certs) -> None:
    with pytest.raises(ValueError, match="key_file needs cert_file"):
        HttpPipeline(kind="http", url="https://x", key_file=str(certs.client_key))
    with pytest.raises(ValueError, match="ca_file has no use with verify = false"):
        HttpPipeline(kind="http", url="https://x", ca_file=str(certs.ca), verify=False)
    with pytest.raises(ValueError, match="key_file needs cert_file"):
        AlertRule(verdict="stalled", channel="webhook", url="https://x", key_file="k.pem")


@pytest.mark.parametrize("kind", ["airbyte", "airflow"])
async def test_airbyte_and_airflow_over_tls_with_a_private_ca(certs: Certs, kind: str) -> None:
    fake: FakeAirbyte | FakeAirflow = FakeAirbyte() if kind == "airbyte" else FakeAirflow()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls(certs)).start()
    base = f"https://localhost:{runner.addresses[0][1]}"
    try:
        if isinstance(fake, FakeAirbyte):
            cfg: Any = AirbyteConfig(
                kind="airbyte",
                url=f"{base}/api/public",
                client_id="kc-client",
                client_secret="kc-client-s3cret",
                poll_interval=0.05,
                ca_file=str(certs.ca),
            )
        else:
            cfg = AirflowConfig(
                kind="airflow",
                url=base,
                dag_id="load_orders",
                api_version="v2",
                username=fake.username,
                password=fake.password,
                poll_interval=0.05,
                ca_file=str(certs.ca),
            )
        async with build_pipeline(kind, cfg) as pipeline:
            result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    finally:
        await runner.cleanup()
    assert result.status == RunStatus.SUCCEEDED, result.error
    assert len(fake.token_requests) == 1  # the credential exchange went over TLS too


async def test_alert_webhook_uses_its_tls_settings(certs: Certs) -> None:
    event = AlertEvent(
        status=AlertStatus.FIRING,
        rule="stalled",
        consumer_id="orders",
        channel="webhook",
        message="orders is stalled",
        since_ms=1_717_243_170_000,
        at_ms=1_717_243_200_000,
    )
    async with site({"/alert": ok}, server_tls(certs, client_ca=certs.ca)) as server:
        rule = AlertRule(
            verdict="stalled",
            channel="webhook",
            url=f"{server.url}/alert",
            ca_file=str(certs.ca),
            cert_file=str(certs.client_cert),
            key_file=str(certs.client_key),
        )
        notifier = AlertNotifier(MonitoringConfig(alerts=[rule], webhook_attempts=1))
        try:
            delivered = await notifier.post(rule, event)
        finally:
            await notifier.close()
    assert delivered is True
    [hit] = server.hits
    assert hit.client_subject == "kafkaconsole-client"
    assert orjson.loads(hit.body)["consumer_id"] == "orders"


# --------------------------------------------------------------------------------------------
# proxies from the environment


@dataclass
class ForwardProxy:
    """An HTTP proxy on 127.0.0.1: relays absolute-form requests and CONNECT tunnels, and
    remembers each request line it was given."""

    lines: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None
    url: str = ""

    async def start(self) -> ForwardProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, _, rest = head.partition(b"\r\n")
        method, target, version = request_line.decode().split(" ")
        self.lines.append(f"{method} {target}")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            url = URL(target)
            assert url.host is not None and url.port is not None
            up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
            # one request per connection, so that every request line is seen here
            headers = [
                line
                for line in rest.split(b"\r\n")
                if line and not line.lower().startswith((b"connection:", b"proxy-connection:"))
            ]
            headers.append(b"Connection: close")
            up_writer.write(
                f"{method} {url.raw_path_qs} {version}\r\n".encode()
                + b"\r\n".join(headers)
                + b"\r\n\r\n"
            )
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    forward = await ForwardProxy().start()
    try:
        yield forward
    finally:
        await forward.stop()


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def test_http_proxy_from_the_environment(
    proxy: ForwardProxy, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
    async with site({"/hook": ok}) as server, http_pipeline(f"{server.url}/hook") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert proxy.lines == [f"POST {server.url}/hook"]
    assert len(server.hits) == 1


async def test_https_proxy_tunnels_tls(
    certs: Certs, proxy: ForwardProxy, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    clean_proxy_env.setenv("HTTPS_PROXY", proxy.url)
    async with site({"/hook": ok}, server_tls(certs)) as server:
        result = await run_http(f"{server.url}/hook", ca_file=str(certs.ca))
    assert result.status == RunStatus.SUCCEEDED
    assert proxy.lines == [f"CONNECT {URL(server.url).host}:{URL(server.url).port}"]


async def test_no_proxy_goes_direct(
    proxy: ForwardProxy, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
    clean_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    async with site({"/hook": ok}) as server, http_pipeline(f"{server.url}/hook") as pipeline:
        result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    assert result.status == RunStatus.SUCCEEDED
    assert proxy.lines == []
    assert len(server.hits) == 1


async def test_airflow_goes_through_the_proxy(
    proxy: ForwardProxy, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
    fake = FakeAirflow()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    cfg = AirflowConfig(
        kind="airflow",
        url=base,
        dag_id="load_orders",
        api_version="v2",
        username=fake.username,
        password=fake.password,
        poll_interval=0.05,
    )
    try:
        async with build_pipeline("af", cfg) as pipeline:
            result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    finally:
        await runner.cleanup()
    assert result.status == RunStatus.SUCCEEDED
    assert proxy.lines[:3] == [
        f"POST {base}/auth/token",
        f"POST {base}/api/v2/dags/load_orders/dagRuns",
        f"GET {base}/api/v2/dags/load_orders/dagRuns/orders:7",
    ]


# --------------------------------------------------------------------------------------------
# redirects


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_repeats_the_method_and_body(status: int) -> None:
    async with site({"/old": redirect(status, "/new"), "/new": ok}) as server:
        result = await run_http(f"{server.url}/old", method="PUT")
    assert result.status == RunStatus.SUCCEEDED
    old, new = server.hits
    assert (old.method, new.method) == ("PUT", "PUT")
    assert new.url.endswith("/new") and new.body == old.body
    assert orjson.loads(new.body) == PAYLOAD
    assert new.headers["Idempotency-Key"] == "orders:7"


async def test_303_continues_with_a_get() -> None:
    async with site({"/old": redirect(303, "/status"), "/status": ok}) as server:
        result = await run_http(f"{server.url}/old")
    assert result.status == RunStatus.SUCCEEDED
    assert [(hit.method, hit.body) for hit in server.hits][1] == ("GET", b"")
    assert "Content-Type" not in server.hits[1].headers


async def test_http_to_https_upgrade_is_followed_with_the_credentials(certs: Certs) -> None:
    async with (
        site({"/hook": ok}, server_tls(certs)) as secure,
        site({"/hook": redirect(301, f"{secure.url}/hook")}) as plain,
    ):
        headers = {"Authorization": "Bearer s3cret"}
        result = await run_http(f"{plain.url}/hook", ca_file=str(certs.ca), headers=headers)
    assert result.status == RunStatus.SUCCEEDED
    [hit] = secure.hits
    assert hit.method == "POST" and hit.headers["Authorization"] == "Bearer s3cret"


async def test_https_to_http_downgrade_is_refused(certs: Certs) -> None:
    async with (
        site({"/hook": ok}) as plain,
        site({"/hook": redirect(307, f"{plain.url}/hook")}, server_tls(certs)) as tls,
    ):
        result = await run_http(f"{tls.url}/hook", ca_file=str(certs.ca))
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error == (
        f"redirect from https to http refused ({tls.url}/hook -> {plain.url}/hook)"
    )
    assert plain.hits == []


async def test_credentials_stay_with_the_configured_host() -> None:
    async with site({"/hook": ok}) as other:
        elsewhere = f"http://localhost:{URL(other.url).port}/hook"  # same server, other name
        async with site({"/hook": redirect(307, elsewhere)}) as first:
            headers = {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y", "X-Team": "data"}
            result = await run_http(f"{first.url}/hook", headers=headers)
    assert result.status == RunStatus.SUCCEEDED
    [hit] = other.hits
    assert "Authorization" not in hit.headers and "X-Api-Key" not in hit.headers
    assert hit.headers["X-Team"] == "data"
    assert hit.headers["Idempotency-Key"] == "orders:7"


async def test_redirect_loop_stops_after_the_limit() -> None:
    async with site({"/loop": redirect(307, "/loop")}) as server:
        result = await run_http(f"{server.url}/loop")
    assert result.status == RunStatus.FAILED
    assert result.attempts == 1
    assert result.error == f"more than {MAX_REDIRECTS} redirects (last to {server.url}/loop)"
    assert len(server.hits) == MAX_REDIRECTS + 1


async def test_airflow_behind_an_https_redirect(certs: Certs) -> None:
    fake = FakeAirflow()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls(certs)).start()
    secure = f"https://127.0.0.1:{runner.addresses[0][1]}"

    async def upgrade(request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": secure + request.path_qs})

    try:
        async with site({"/{tail:.*}": upgrade}) as plain:
            cfg = AirflowConfig(
                kind="airflow",
                url=plain.url,
                dag_id="load_orders",
                api_version="v2",
                username=fake.username,
                password=fake.password,
                poll_interval=0.05,
                ca_file=str(certs.ca),
            )
            async with build_pipeline("af", cfg) as pipeline:
                result = await run_pipeline(pipeline, RECORD, PAYLOAD, FAST)
    finally:
        await runner.cleanup()
    assert result.status == RunStatus.SUCCEEDED, result.error
    [trigger] = fake.triggers
    assert trigger.body["dag_run_id"] == "orders:7"
    assert trigger.headers["Authorization"].startswith("Bearer ")


# --------------------------------------------------------------------------------------------
# timeouts


async def test_timeout_bounds_one_request_redirects_included() -> None:
    async def slow_hop(request: web.Request) -> web.Response:
        await asyncio.sleep(0.4)
        hop = int(request.match_info["n"])
        return web.Response(status=307, headers={"Location": f"/hop/{hop + 1}"})

    # each hop is well within the timeout, all of them together are not: a per-hop timeout
    # would end in "more than 5 redirects" instead
    async with site({"/hop/{n}": slow_hop}) as server:
        client = HttpClient(HttpPipeline(kind="http", url=server.url), timeout=1.0)
        try:
            with pytest.raises(TimeoutError):
                await client.request("POST", f"{server.url}/hop/1", body=b"{}")
        finally:
            await client.close()
    assert 1 <= len(server.hits) < MAX_REDIRECTS + 1


async def test_redirects_are_logged_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with site({"/old": redirect(307, "/new?token=s3cret"), "/new": ok}) as server:
        result = await run_http(f"{server.url}/old")
    assert result.status == RunStatus.SUCCEEDED
    ours = "\n".join(
        record.getMessage() for record in caplog.records if record.name.startswith("kafkaconsole")
    )
    assert f"{server.url}/old -> {server.url}/new" in ours
    assert "s3cret" not in ours
