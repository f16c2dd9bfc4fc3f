"""No secret reaches the console's screen: every view of the real app, captured and grepped.

The app runs headless (``run_test``) with a real Engine against the session's broker and Redis,
on a config that takes the sentinel secrets (tests/secrets_support.py) as ``${VAR}``: the Redis
ACL user's password (in the URL), the API token (the HTTP API runs inside the console), and a
pipeline's ``Authorization = "Bearer ${PIPE_TOKEN}"`` header. Then errors are forced where the
engine hands the console unmasked text:

- an http pipeline whose receiver answers 401 and echoes the Authorization header back;
- a python pipeline raising an error that quotes the token and the Redis password: its run
  error reaches the verdict reason (``pipeline-failing``) and the toast of a ``tui`` alert;
- an http pipeline at an unreachable URL with the token as userinfo password;
- log lines (with an exception) quoting the Redis URL with its password.

Every screen is captured (plain text of the screen and the SVG screenshot): the main view
(wide and 80x24), the log panel, the detail view of each consumer on every tab, help, the
confirm dialogs, and every notification's title and message. A second test captures the
console when the engine cannot start because the broker refuses the Kafka SASL password (the
fourth sentinel).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import redis.asyncio as aredis
from aiohttp import web
from rich.console import Console
from textual.pilot import Pilot

from kafkaconsole.config.loader import load_config
from kafkaconsole.embedded import EmbeddedServices, free_port, start_broker
from kafkaconsole.engine.engine import Engine
from kafkaconsole.engine.fleet import Fleet
from kafkaconsole.engine.status import ConsumerState
from kafkaconsole.tui.app import KafkaConsoleApp
from kafkaconsole.tui.screens import ConfirmDialog, DetailScreen, HelpScreen
from kafkaconsole.tui.widgets import ConsumerTable
from tests.helpers import KafkaHelper, wait_for
from tests.secrets_support import (
    SENTINELS,
    assert_no_sentinel,
    assert_no_sentinel_in,
    make_acl_user,
    masked_count,
    sentinel_config,
    sentinel_env,
)

WIDE = (160, 56)  # tall enough for a webhook consumer's whole Config tab
NARROW = (80, 24)


def leaky(payload: dict[str, Any]) -> dict[str, Any]:
    """A python pipeline that fails quoting the credentials it was (wrongly) given."""
    raise PermissionError(
        f"warehouse refused Authorization: Bearer {SENTINELS['PIPE_TOKEN']} "
        f"(redis://kc:{SENTINELS['REDIS_ACL_PASSWORD']}@cache/0)"
    )


class EchoReceiver:
    """An http pipeline target that refuses every call with 401, echoing the token."""

    def __init__(self) -> None:
        self.calls = 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        given = request.headers.get("Authorization", "")
        return web.json_response({"error": f"invalid credentials: {given}"}, status=401)

    async def start(self) -> None:
        webapp = web.Application()
        webapp.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(webapp, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def plain_text(app: KafkaConsoleApp) -> str:
    """The screen as a person reads it (every layer: toasts and dialogs included)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        record=True,
        color_system=None,
        legacy_windows=False,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


class Captures:
    """Every screen captured, by name: plain text and the SVG screenshot."""

    def __init__(self, app: KafkaConsoleApp) -> None:
        self.app = app
        self.items: dict[str, str | bytes | Path] = {}

    async def take(self, pilot: Pilot[Any], name: str) -> str:
        await self.app.refresh_now()
        await pilot.pause()
        text = plain_text(self.app)
        self.items[f"{name} (text)"] = text
        self.items[f"{name} (svg)"] = self.app.export_screenshot(title=name)
        return text


def _extra_toml(cid: str, topic_leaky: str, topic_down: str) -> str:
    closed = free_port()  # nothing listens there
    return f"""
[monitoring]
sample_interval = 0.3
failing_runs = 1

[[monitoring.alerts]]
verdict = "pipeline-failing"
for = 0
channel = "tui"

[pipelines.leaky]
kind = "python"
target = "tests.test_tui_secrets:leaky"
retry_policy = {{ max_attempts = 1 }}

[pipelines.down]
kind = "http"
url = "http://kc:${{PIPE_TOKEN}}@127.0.0.1:{closed}/hook"
retry_policy = {{ max_attempts = 1 }}

[[consumers]]
consumer_id = "{cid}-leaky"
kafka_topic = "{topic_leaky}"
pipeline_name = "leaky"
connection_id = "conn-2"
max_event = 3
max_time = 3600
poll_timeout = 0.2

[[consumers]]
consumer_id = "{cid}-down"
kafka_topic = "{topic_down}"
pipeline_name = "down"
connection_id = "conn-3"
max_event = 3
max_time = 3600
poll_timeout = 0.2
"""


async def test_no_secret_reaches_the_console(
    tmp_path: Path, services: EmbeddedServices, kafka: KafkaHelper, unique: str
) -> None:
    assert services.redis is not None
    receiver = EchoReceiver()
    await receiver.start()
    admin = aredis.from_url(services.redis_url)
    user = await make_acl_user(admin, unique, SENTINELS["REDIS_ACL_PASSWORD"])
    cid = f"{unique}-c"
    topics = {cid: unique, f"{cid}-leaky": f"{unique}-l", f"{cid}-down": f"{unique}-d"}
    for topic in topics.values():
        await kafka.create_topic(topic, 1)
    path = sentinel_config(
        tmp_path / "kc.toml",
        bootstrap=services.bootstrap_servers,
        redis_host_port=f"127.0.0.1:{services.redis.port}",
        redis_user=user,
        prefix=unique,
        topic=unique,
        consumer_id=cid,
        hook_url=f"http://127.0.0.1:{receiver.port}/hook",
        api_port=free_port(),
    )
    path.write_text(
        path.read_text() + _extra_toml(cid, topics[f"{cid}-leaky"], topics[f"{cid}-down"])
    )
    cfg = load_config(path, env=sentinel_env())
    engine = Engine(cfg, lease_ms=1500, snapshot_interval=0.2)
    app = KafkaConsoleApp(cfg, engine=engine)
    shots = Captures(app)
    try:
        async with app.run_test(size=WIDE) as pilot:

            async def all_running() -> bool:
                snap = app.source.latest()
                return (
                    engine.started
                    and snap is not None
                    and all(
                        (c := snap.consumer(i)) is not None and c.state == ConsumerState.RUNNING
                        for i in topics
                    )
                )

            await wait_for(all_running, 30, what="every consumer running in the app")
            assert len(app._closers) == 1  # the HTTP API runs inside the console
            for topic in topics.values():
                await kafka.produce(topic, ({"i": i} for i in range(3)), partitions=1)

            # engine log lines quoting a secret (as a library's error message might)
            redis_url = f"redis://{user}:{SENTINELS['REDIS_ACL_PASSWORD']}@127.0.0.1/0"
            engine_log = logging.getLogger("kafkaconsole.engine")
            engine_log.warning("%s: reconnecting to %s", cid, redis_url)
            try:
                raise ConnectionError(f"AUTH {SENTINELS['REDIS_ACL_PASSWORD']} refused")
            except ConnectionError:
                engine_log.error("%s-down: Redis said no", cid, exc_info=True)

            fleet = Fleet(admin, cfg)

            async def every_run_failed() -> bool:
                for i in topics:
                    history = await fleet.history(i)
                    if not history or history[0]["status"] != "failed":
                        return False
                return True

            await wait_for(every_run_failed, 30, interval=0.3, what="every pipeline run failed")
            assert receiver.calls >= 1

            # every toast shown, kept: a toast expires (15 s) before a slow machine ends the test
            toasts: dict[str, None] = {}

            async def alert_toast() -> bool:
                toasts.update(dict.fromkeys(f"{n.title}: {n.message}" for n in app._notifications))
                return any(
                    n.title == "Alert pipeline-failing firing"
                    and n.message.startswith(f"{cid}-leaky:")
                    for n in app._notifications
                )

            await wait_for(alert_toast, 20, what="the tui alert's toast")

            async def failing_shown() -> bool:
                await app.refresh_now()
                return "pipeline-failing" in plain_text(app)

            await wait_for(failing_shown, 10, what="the verdict on screen")
            main = await shots.take(pilot, "main view")
            assert "pipeline-failing" in main

            await pilot.press("l")
            await shots.take(pilot, "main view, log panel")
            book = [line.message for line in app.logbook.lines()]
            assert f"{cid}: reconnecting to redis://{user}:******@127.0.0.1/0" in book

            table = app.main_screen.query_one(ConsumerTable)
            for consumer_id in topics:
                table.select_id(consumer_id)
                await pilot.pause()
                await shots.take(pilot, f"main view, {consumer_id} selected")
                await pilot.press("enter")
                assert isinstance(app.screen, DetailScreen)
                await shots.take(pilot, f"detail {consumer_id} overview")
                await pilot.press("2")
                await shots.take(pilot, f"detail {consumer_id} errors")
                await pilot.press("3")
                config_text = await shots.take(pilot, f"detail {consumer_id} config")
                assert masked_count(config_text) >= 1, config_text
                await pilot.press("1", "escape")
                assert not isinstance(app.screen, DetailScreen)

            leaky_detail = shots.items[f"detail {cid}-leaky overview (text)"]
            assert isinstance(leaky_detail, str) and "warehouse refused" in leaky_detail
            hook_config = shots.items[f"detail {cid} config (text)"]
            assert isinstance(hook_config, str)
            assert 'headers = { Authorization = "******" }' in hook_config

            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await shots.take(pilot, "help")
            await pilot.press("escape")

            for key in ("t", "r"):
                table.select_id(f"{cid}-leaky")
                await pilot.press(key)

                async def dialog() -> bool:
                    return isinstance(app.screen, ConfirmDialog)

                await wait_for(dialog, 10, what="confirm dialog")
                await shots.take(pilot, f"confirm {key}")
                await pilot.press("n")

            await pilot.resize_terminal(*NARROW)
            await shots.take(pilot, "main view 80x24")
            table.select_id(f"{cid}-leaky")
            await pilot.press("enter")
            await shots.take(pilot, "detail 80x24")
            await pilot.press("escape")

            toasts.update(dict.fromkeys(f"{n.title}: {n.message}" for n in app._notifications))
            shots.items["notifications"] = "\n".join(toasts)
            shots.items["log book"] = "\n".join(line.message for line in app.logbook.lines())
            await pilot.press("q")

            async def exited() -> bool:
                return app.return_code is not None

            await wait_for(exited, 20, what="graceful quit")
        # what the engine wrote to Redis (run errors, alerts, heartbeats, history) is masked too
        stored: dict[str, object] = {}
        async for key in admin.scan_iter(match=f"{unique}:*"):
            kind = (await admin.type(key)).decode()
            name = key.decode()
            if kind == "string":
                stored[name] = (await admin.get(key) or b"").decode(errors="replace")
            elif kind == "hash":
                stored[name] = repr(await admin.hgetall(key))
            elif kind == "stream":
                stored[name] = repr(await admin.xrange(key))
        assert any(k.endswith(":runs") for k in stored), sorted(stored)
        assert_no_sentinel_in(stored)
    finally:
        with contextlib.suppress(Exception):
            await app.close_engine()
        await receiver.stop()
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
    assert app.return_code == 0
    assert len(shots.items) >= 30
    assert_no_sentinel_in(shots.items)
    # the console masked what it was given (it did see the secrets)
    notes = shots.items["notifications"]
    assert isinstance(notes, str)
    assert "warehouse refused Authorization: ****** (redis://kc:******@cache/0)" in notes
    assert_no_sentinel(notes, "notifications")


async def test_engine_start_failure_shows_no_kafka_password(
    tmp_path: Path, services: EmbeddedServices, unique: str
) -> None:
    """A broker that refuses the SASL password (the sentinel): the console shows why the engine
    failed (notification and header), with the password nowhere on screen; q exits with 1."""
    assert services.redis is not None
    broker = start_broker(authentication=True)
    admin = aredis.from_url(services.redis_url)
    user = await make_acl_user(admin, unique, SENTINELS["REDIS_ACL_PASSWORD"])
    try:
        path = sentinel_config(
            tmp_path / "sasl.toml",
            bootstrap=f"127.0.0.1:{broker.port}",
            redis_host_port=f"127.0.0.1:{services.redis.port}",
            redis_user=user,
            prefix=unique,
            topic=unique,
            consumer_id=unique,
            hook_url="http://127.0.0.1:9/hook",
            api_port=free_port(),
            kafka='security_protocol = "SASL_PLAINTEXT"\nallow_insecure = true\n'
            'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "kc"\n'
            'sasl_password = "${KAFKA_SASL_PASSWORD}"\n',
        )
        cfg = load_config(path, env=sentinel_env())
        app = KafkaConsoleApp(cfg)
        shots = Captures(app)
        try:
            async with app.run_test(size=WIDE) as pilot:

                async def failed() -> bool:
                    return app.engine_state == "failed"

                await wait_for(failed, 45, what="the engine failing to start")
                text = await shots.take(pilot, "engine failed")
                assert "engine failed" in text
                await pilot.press("l")
                await shots.take(pilot, "engine failed, log panel")
                shots.items["notifications"] = "\n".join(
                    f"{n.title}: {n.message}" for n in app._notifications
                )
                await pilot.press("q")
        finally:
            await app.close_engine()
        assert app.return_code == 1
        notes = shots.items["notifications"]
        assert isinstance(notes, str) and "Engine failed" in notes and "Kafka at" in notes
        assert_no_sentinel_in(shots.items)
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
        broker.stop()
