"""The ``--no-ui`` face: the engine under ``asyncio.run`` with signals, logs and the API.

No Textual or Rich is imported here (a subprocess test checks it). SIGTERM or SIGINT asks the
engine to stop gracefully (finish the batch in hand, record counts and offsets, commit, close);
a second SIGINT exits at once. SIGHUP reloads the configuration file (see
:meth:`Engine.reload <kafkaconsole.engine.engine.Engine.reload>`) and logs the result. The
HTTP API starts beside the engine when ``[api] enabled``. ``--workers N`` runs N-1 more
engine processes beside this one (:mod:`kafkaconsole.supervisor`): stopped first on SIGTERM,
SIGHUP forwarded to them.
Consumer state changes are logged (one line, or one JSON object with ``event``), as are
triggers, errors and rebalances by the engine itself.

Redis and the brokers need not be up yet: the engine waits for them (backoff, the reason in
the log, ``/ready`` and the console header), at most ``--wait-timeout`` seconds when given.

Exit codes: 0 after a clean stop, 1 when the engine or the API could not start (or Redis or
the brokers did not answer within ``--wait-timeout``), or when a second interrupt forced the
exit (2, configuration errors, is the CLI's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from kafkaconsole.config.models import AppConfig
from kafkaconsole.config.secrets import mask_text
from kafkaconsole.engine.engine import DependencyUnreachable, Engine
from kafkaconsole.engine.errors import ControlError
from kafkaconsole.engine.redis_sentinel import NoPrimary
from kafkaconsole.engine.status import InstanceSnapshot
from kafkaconsole.supervisor import WorkerSpec, WorkerSupervisor, workers_extra

log = logging.getLogger("kafkaconsole.headless")

EXIT_OK = 0
EXIT_FAILURE = 1

#: Hook for extra services started beside the engine (the HTTP API); returns a closer.
ExtraService = Callable[[Engine], Awaitable[Callable[[], Awaitable[None]]]]


class StateChangeLog:
    """Logs each consumer's state transitions seen in the engine's snapshots."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def __call__(self, snap: InstanceSnapshot) -> None:
        for c in snap.consumers:
            state = str(c.state)
            before = self._last.get(c.consumer_id)
            if before != state:
                self._last[c.consumer_id] = state
                log.log(
                    logging.WARNING if state == "error" else logging.INFO,
                    "%s: state %s -> %s%s",
                    c.consumer_id,
                    before or "none",
                    state,
                    f" ({c.last_error})" if state == "error" and c.last_error else "",
                    extra={"event": "state_change", "consumer_id": c.consumer_id},
                )


class EventTag(logging.Filter):
    """Stamps every record with this process's ``instance_id`` and gives ``event = "error"``
    to error records that carry no event of their own. The other events (trigger,
    pipeline_run, rebalance, state_change, crash) are set where they are logged, with their
    consumer_id, window_id and pipeline, so JSON log lines can be selected by kind and
    subject (``jq 'select(.event == "trigger" and .consumer_id == "orders")'``)."""

    def __init__(self, instance_id: str | None = None) -> None:
        super().__init__()
        self.instance_id = instance_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "event", None) and record.levelno >= logging.ERROR:
            record.event = "error"
        if self.instance_id and not getattr(record, "instance_id", None):
            record.instance_id = self.instance_id
        return True


async def _api_extra(engine: Engine) -> Callable[[], Awaitable[None]]:
    from kafkaconsole.api import start_api

    return await start_api(engine, engine.config)


def default_extras(
    config: AppConfig,
    workers: WorkerSpec | None = None,
    started: Callable[[WorkerSupervisor], None] | None = None,
) -> list[ExtraService]:
    """The services started beside the engine for this config (the API when enabled; the
    worker processes of ``--workers`` when more than one)."""
    extras: list[ExtraService] = [_api_extra] if config.api.enabled else []
    if workers is not None and workers.count > 1:
        extras.append(workers_extra(workers, started))
    return extras


async def serve(
    config: AppConfig,
    *,
    instance_id: str | None = None,
    extras: list[ExtraService] | None = None,
    ready: Callable[[Engine], None] | None = None,
    wait_timeout: float | None = None,
    workers: WorkerSpec | None = None,
) -> int:
    """Run the engine (and its extras) until a signal; returns the exit code.

    ``extras=None`` starts :func:`default_extras` (with ``workers``); pass ``[]`` for the
    engine alone. Redis and the brokers are waited for at start (see :meth:`Engine.start`),
    at most ``wait_timeout`` seconds when given.
    """
    engine = Engine(config, instance_id=instance_id)
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal interrupts
        if sig == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                sys.stderr.write("kafkaconsole: second interrupt, exiting now\n")
                sys.stderr.flush()
                os._exit(EXIT_FAILURE)
        if not engine.stopping:
            log.info("received %s, stopping gracefully (Ctrl-C again to force)", sig.name)
        engine.request_stop()

    reloads: set[asyncio.Task[None]] = set()
    supervisors: list[WorkerSupervisor] = []

    def on_hangup() -> None:
        for supervisor in supervisors:
            supervisor.forward(signal.SIGHUP)
        if not engine.started or engine.stopping:
            log.warning("received SIGHUP before the engine runs (or while it stops): ignored")
            return
        log.info("received SIGHUP: reloading %s", engine.config.source_file or "the configuration")
        task = asyncio.create_task(reload_on_signal(engine), name="reload:SIGHUP")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    tag = EventTag(engine.instance_id)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(tag)
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        # Extras first: the API answers /health (and /ready 503) while the engine connects,
        # and a port already in use fails before the engine joins any consumer group.
        try:
            chosen = default_extras(config, workers, supervisors.append)
            for extra in chosen if extras is None else extras:
                closers.append(await extra(engine))
        except Exception as exc:
            log.error("cannot start: %s", exc if str(exc) else type(exc).__name__)
            await _close_all(closers)
            return EXIT_FAILURE
        try:
            await engine.start(wait_timeout=wait_timeout)
        except DependencyUnreachable as exc:
            stopped = engine.stopping  # a signal while waiting: a clean stop
            await _close_all(closers)
            await engine.stop(timeout=2)
            if stopped:
                log.info("stopped while waiting for %s", exc)
                return EXIT_OK
            # no primary known to Redis Sentinel: the reason says it all
            said = exc if isinstance(exc.__cause__, NoPrimary) else f"{exc} does not answer"
            log.error("cannot start: %s", said)
            return EXIT_FAILURE
        except RedisError as exc:
            log.error(
                "cannot start: Redis at %s: %s",
                mask_text(config.redis.url, config),
                mask_text(str(exc) or type(exc).__name__, config),
            )
            await _close_all(closers)
            await engine.stop(timeout=2)
            return EXIT_FAILURE
        except Exception as exc:
            log.error("cannot start: %s", start_error_text(exc, config))
            await _close_all(closers)
            await engine.stop(timeout=2)
            return EXIT_FAILURE
        engine.subscribe(StateChangeLog())
        log.info(
            "instance %s running %d consumer(s); SIGTERM or Ctrl-C stops it",
            engine.instance_id,
            len(config.consumers),
        )
        if ready:
            ready(engine)
        await engine.wait_stopped()
        await _close_all(closers)
        await engine.stop()
        return EXIT_OK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for h in handlers:
            h.removeFilter(tag)


async def reload_on_signal(engine: Engine) -> None:
    """SIGHUP: this instance reads its configuration file again (the engine logs the result
    in one line, and every problem of a bad file on its own line)."""
    try:
        await engine.reload(via="signal")
    except ControlError as exc:
        log.warning("reload refused: %s", exc, extra={"event": "reload"})
    except Exception as exc:
        log.error("reload failed: %s: %s", type(exc).__name__, exc, extra={"event": "reload"})


async def _close_all(closers: list[Callable[[], Awaitable[None]]]) -> None:
    for close in reversed(closers):
        try:
            await close()
        except Exception as exc:
            log.warning("closing a service failed: %s: %s", type(exc).__name__, exc)
    closers.clear()


def start_error_text(exc: BaseException, config: AppConfig) -> str:
    """Why the engine could not start, in one line, secrets masked. Kafka failures name the
    brokers and the security settings (a failed SASL exchange can surface as a bare KeyError
    from the client library)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    module = type(exc).__module__ or ""
    kafka = config.kafka
    if module.startswith("aiokafka") or (
        kafka.security_protocol.startswith("SASL") and isinstance(exc, KeyError | ValueError)
    ):
        how: str = kafka.security_protocol
        if kafka.security_protocol.startswith("SASL"):
            how += f" {kafka.sasl_mechanism} as user {kafka.sasl_username!r}"
            text += " (authentication failed or refused: check the SASL mechanism and credentials)"
        text = f"Kafka at {kafka.bootstrap_servers} ({how}): {text}"
    return mask_text(text, config)


def crash_text(exc: BaseException, config: AppConfig) -> str:
    """An unexpected exception's traceback, every secret of ``config`` masked."""
    return mask_text("".join(traceback.format_exception(exc)).rstrip(), config)


def run_headless(
    config: AppConfig,
    *,
    instance_id: str | None = None,
    extras: list[ExtraService] | None = None,
    wait_timeout: float | None = None,
    workers: WorkerSpec | None = None,
) -> int:
    """``asyncio.run(serve(...))``; the exit code of ``kafkaconsole run --no-ui``.

    An unexpected exception is logged with its traceback, secrets masked (never Python's raw
    traceback on stderr), and exits 1.
    """
    try:
        return asyncio.run(
            serve(
                config,
                instance_id=instance_id,
                extras=extras,
                wait_timeout=wait_timeout,
                workers=workers,
            )
        )
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        log.critical("crashed: %s", crash_text(exc, config), extra={"event": "crash"})
        return EXIT_FAILURE
