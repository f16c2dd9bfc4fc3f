"""What the REST-driven kinds with remote runs (Airbyte, Airflow) share.

One :class:`~kafkaconsole.engine.http_client.HttpClient` per pipeline (TLS, proxies, redirects,
the per-request ``timeout``); one place that turns a request into either a parsed reply or a
:class:`PipelineError` with the same retry rules as the ``http`` kind (network errors,
timeouts, 408, 429 and 5xx are retryable and honour ``Retry-After``; other 4xx fail at once
with the response body quoted); the access tokens both kinds obtain and renew
(:class:`AccessToken`); and the polling loop behind :meth:`Pipeline.wait`.

Credentials never reach an error message: header values are never quoted, and every configured
secret (and every access token obtained) is masked in quoted bodies and exception texts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import (
    ClientConnectorCertificateError,
    ClientConnectorError,
    ClientError,
    InvalidURL,
)
from yarl import URL

from kafkaconsole.config.models import AirbytePipeline as AirbyteConfig
from kafkaconsole.config.models import AirflowPipeline as AirflowConfig
from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.engine.http_client import HttpClient, RedirectRefused, TlsSetupError
from kafkaconsole.engine.pipelines.base import (
    CallOutcome,
    OnStatus,
    Pipeline,
    PipelineConfigError,
    PipelineError,
    format_seconds,
    one_line,
)
from kafkaconsole.engine.pipelines.http import RETRYABLE_STATUSES, parse_retry_after
from kafkaconsole.engine.records import RunStatus, TriggerRecord
from kafkaconsole.engine.retry import retry_delay

log = logging.getLogger("kafkaconsole.pipelines")

BODY_LIMIT = 200
"""Characters of a response body quoted in an error message."""

MASK = "******"

TOKEN_EARLY = 60.0
"""Seconds before its expiry that an access token is renewed (at least the request timeout,
at most half the token's lifetime), so no request ever leaves with a token about to expire."""


class NotSent(PipelineError):
    """A request that never left (the connection could not be made): retryable, and certain
    to have changed nothing on the far side."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer, read in full."""

    status: int
    body: bytes
    retry_after: float | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None if it is not one."""
        try:
            document = orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None
        return document if isinstance(document, dict) else None


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT (read, not verified: only its times are used), or None if ``token``
    is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = orjson.loads(raw)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def jwt_lifetime(token: str, now: float | None = None) -> float | None:
    """Seconds a JWT lives from its issue (``exp - iat``; ``exp - now`` without ``iat``), or
    None without an ``exp`` claim."""
    claims = jwt_claims(token) or {}
    expires = _number(claims.get("exp"))
    if expires is None:
        return None
    issued = _number(claims.get("iat"))
    return max(expires - (issued if issued is not None else (now or time.time())), 0.0)


class AccessToken:
    """A short-lived access token: obtained on first use, renewed :data:`TOKEN_EARLY` seconds
    (or at least ``early``) before it expires, and renewed at once when a 401 refused it.
    Renewals happen one at a time."""

    def __init__(
        self,
        obtain: Callable[[], Awaitable[tuple[str, float | None]]],
        *,
        clock: Callable[[], float],
        early: float = TOKEN_EARLY,
    ) -> None:
        self._obtain = obtain
        self._clock = clock
        self.early = max(early, TOKEN_EARLY)
        self.value: str | None = None
        self.renew_at: float | None = None
        self.obtained = 0
        self.recent: list[str] = []
        """The last few tokens obtained (masked in errors even after they were replaced)."""
        self._lock: asyncio.Lock | None = None

    async def get(self, *, stale: str | None = None) -> str:
        """The token; renewed if it is about to expire or equals ``stale`` (the one a 401 just
        refused)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            token = self.value
            fresh = self.renew_at is None or self._clock() < self.renew_at
            if token is not None and token != stale and fresh:
                return token
            token, lifetime = await self._obtain()
            self.value = token
            self.obtained += 1
            self.recent = [*self.recent[-3:], token]
            if lifetime is None:
                self.renew_at = None
            else:
                self.renew_at = self._clock() + max(lifetime - self.early, lifetime / 2)
            return token


class RemoteRunPipeline(Pipeline):
    """Base of kinds that start a run over REST and poll it to its end."""

    remote_runs = True
    cfg: AirbyteConfig | AirflowConfig

    def __init__(self, name: str, cfg: AirbyteConfig | AirflowConfig) -> None:
        super().__init__(name, cfg)
        self.base_url = URL(cfg.url.rstrip("/"))
        self.client = HttpClient(cfg, self.timeout, headers={"Accept": "application/json"})
        self.clock: Callable[[], float] = time.monotonic

    # -- session ------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.client.start()
        except TlsSetupError as exc:
            raise PipelineConfigError(f"pipeline {self.name!r}: {exc}") from None

    async def close(self) -> None:
        await self.client.close()

    # -- secrets ------------------------------------------------------------------------------

    @abstractmethod
    def secrets(self) -> Iterable[str | None]:
        """Every credential this pipeline may send (configured or obtained)."""

    def scrub(self, text: str) -> str:
        """``text`` with every secret masked (longest first, so none leaks in part)."""
        for secret in sorted({s for s in self.secrets() if s}, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text

    def excerpt(self, body: bytes) -> str:
        return one_line(self.scrub(body.decode("utf-8", errors="replace")), BODY_LIMIT)

    # -- requests -----------------------------------------------------------------------------

    def url(self, *segments: str) -> URL:
        """``base_url`` joined with ``segments``, each quoted as one path segment."""
        url = self.base_url
        for segment in segments:
            url = url / segment
        return url

    async def send(
        self,
        method: str,
        url: URL,
        *,
        what: str,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request; network errors and timeouts become a retryable PipelineError named
        ``what`` (e.g. "create job"). Any HTTP status comes back as a :class:`Reply`."""
        await self.start()
        try:
            answer = await self.client.request(
                method,
                url,
                body=None if json is None else orjson.dumps(json),
                headers={
                    **({"Content-Type": "application/json"} if json is not None else {}),
                    **(headers or {}),
                },
                params=params,
            )
        except TimeoutError:
            raise PipelineError(
                f"{what}: timed out after {format_seconds(self.timeout)}", retryable=True
            ) from None
        except RedirectRefused as exc:
            raise PipelineError(f"{what}: {exc}", retryable=False) from None
        except ClientConnectorCertificateError as exc:
            raise PipelineError(
                f"{what}: TLS: the server's certificate was refused: {exc.certificate_error}",
                retryable=False,
            ) from None
        except InvalidURL:
            raise PipelineError(f"{what}: invalid URL", retryable=False) from None
        except ClientConnectorError as exc:
            raise NotSent(
                f"{what}: connection error: {type(exc).__name__}: {self.scrub(str(exc))}",
                retryable=True,
            ) from None
        except ClientError as exc:
            raise PipelineError(
                f"{what}: connection error: {type(exc).__name__}: {self.scrub(str(exc))}",
                retryable=True,
            ) from None
        except ValueError as exc:
            # e.g. a header value aiohttp refuses; its message may quote the (secret) value.
            raise PipelineError(
                f"{what}: invalid request: {type(exc).__name__}", retryable=False
            ) from None
        return Reply(
            answer.status, answer.body, parse_retry_after(answer.headers.get("Retry-After"))
        )

    def failure(self, what: str, reply: Reply) -> PipelineError:
        """The error for a non-2xx ``reply``: retryable for 408, 429 and 5xx (with its
        Retry-After), otherwise final with the (scrubbed) body quoted."""
        status = reply.status
        if 300 <= status < 400:
            return PipelineError(
                f"{what}: HTTP {status}: a redirect without a usable Location", retryable=False
            )
        excerpt = self.excerpt(reply.body)
        message = f"{what}: HTTP {status}: {excerpt}" if excerpt else f"{what}: HTTP {status}"
        retryable = status >= 500 or status in RETRYABLE_STATUSES
        return PipelineError(
            message, retryable=retryable, retry_after=reply.retry_after if retryable else None
        )

    def document(self, what: str, reply: Reply) -> dict[str, Any]:
        """The JSON object of a 2xx ``reply``; a final PipelineError if it holds none."""
        document = reply.json()
        if document is None:
            excerpt = self.excerpt(reply.body)
            raise PipelineError(
                f"{what}: HTTP {reply.status}: expected a JSON object, got: {excerpt or 'nothing'}",
                retryable=False,
            )
        return document

    # -- waiting ------------------------------------------------------------------------------

    @abstractmethod
    async def poll(self, run_id: str, record: TriggerRecord) -> CallOutcome:
        """One status check of ``run_id``. Raises :class:`PipelineError` if it fails."""

    async def wait(
        self,
        run_id: str,
        record: TriggerRecord,
        *,
        policy: RetryPolicy | None = None,
        on_status: OnStatus | None = None,
    ) -> CallOutcome:
        """Poll every ``poll_interval`` until the run ends or ``run_timeout`` passes.

        A status check that fails retryably (network, 5xx, 429) is tried again, backing off
        per ``policy`` (and Retry-After), until ``run_timeout``: the run goes on whether we can
        see it or not. A check that fails for good (404, 401 after a token refresh) ends the
        wait as FAILED.
        """
        policy = policy or self.retry_policy
        deadline = self.clock() + self.cfg.run_timeout
        failures = 0
        seen: RunStatus | None = None
        last_error: str | None = None
        while True:
            delay = self.cfg.poll_interval
            try:
                outcome = await self.poll(run_id, record)
            except PipelineError as exc:
                last_error = str(exc)
                if not exc.retryable:
                    return CallOutcome(
                        run_id, RunStatus.FAILED, detail={"error": f"status check failed: {exc}"}
                    )
                failures += 1
                delay = max(delay, retry_delay(failures, exc, policy))
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "pipeline %s: status check %d of run %s failed: %s",
                        self.name,
                        failures,
                        run_id,
                        exc,
                    )
            else:
                failures = 0
                if outcome.status.final:
                    return outcome
                if on_status is not None and outcome.status != seen:
                    try:
                        await on_status(outcome)
                    except Exception:
                        log.exception("pipeline %s: on_status callback failed", self.name)
                seen = outcome.status
            remaining = deadline - self.clock()
            if remaining <= 0:
                error = (
                    f"run {run_id} did not finish within run_timeout "
                    f"{format_seconds(self.cfg.run_timeout)}"
                )
                if last_error and failures:
                    error += f" (last status check: {last_error})"
                return CallOutcome(
                    run_id,
                    RunStatus.FAILED,
                    detail={"error": error, "last_status": str(seen) if seen else None},
                )
            await asyncio.sleep(min(delay, remaining))
