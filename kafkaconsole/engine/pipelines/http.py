"""The ``http`` pipeline kind: send the trigger record as JSON to a webhook; 2xx is success.

Every request carries ``Idempotency-Key: <consumer_id>:<window_id>`` so a receiver can drop
the duplicate a retry or a re-dispatch may produce. 408, 429 and 5xx answers, connection
errors and timeouts are worth retrying (``Retry-After`` is honoured); other answers are not.
TLS options, proxies, redirects (the method and body are sent again) and the per-request
``timeout`` are :mod:`kafkaconsole.engine.http_client`'s. Header values never appear in
errors: they may be secrets.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from kafkaconsole.config.models import HttpPipeline as HttpPipelineConfig
from kafkaconsole.engine.http_client import HttpClient, RedirectRefused, TlsSetupError
from kafkaconsole.engine.pipelines.base import (
    CallOutcome,
    Pipeline,
    PipelineConfigError,
    PipelineError,
    format_seconds,
    one_line,
)
from kafkaconsole.engine.records import RunStatus, TriggerRecord

BODY_LIMIT = 200
"""Characters of a response body quoted in an error message."""

_PLAIN_HEADERS = frozenset({"content-type", "accept", "user-agent", "content-encoding"})
"""Headers whose values are never secrets (every other configured value is masked in errors)."""

RETRYABLE_STATUSES = frozenset({408, 429})
"""Non-5xx statuses worth another attempt (every 5xx is)."""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or
    unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _body_excerpt(body: bytes) -> str:
    return one_line(body.decode("utf-8", errors="replace"), BODY_LIMIT)


def _run_id_from(body: bytes) -> str | None:
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    for key in ("run_id", "id"):
        value = document.get(key)
        if value is not None and value != "":
            return str(value)
    return None


class HttpPipeline(Pipeline):
    kind = "http"
    cfg: HttpPipelineConfig

    def __init__(self, name: str, cfg: HttpPipelineConfig) -> None:
        super().__init__(name, cfg)
        self.client = HttpClient(cfg, self.timeout)

    async def start(self) -> None:
        try:
            await self.client.start()
        except TlsSetupError as exc:
            raise PipelineConfigError(f"pipeline {self.name!r}: {exc}") from None

    async def close(self) -> None:
        await self.client.close()

    def scrub(self, text: str) -> str:
        """``text`` with every configured header value masked, and the credential of an
        ``Authorization``-like value alone (a 401 body may echo the token it refused)."""
        values = set()
        for name, value in self.cfg.headers.items():
            if name.lower() in _PLAIN_HEADERS:
                continue
            values.add(value)
            _scheme, _, credential = value.partition(" ")
            if credential.strip():
                values.add(credential.strip())
        for value in sorted((v for v in values if len(v) >= 3), key=len, reverse=True):
            text = text.replace(value, "******")
        return text

    def request_headers(self, record: TriggerRecord) -> CIMultiDict[str]:
        """cfg.headers + Content-Type (unless configured) + Idempotency-Key (always ours)."""
        headers: CIMultiDict[str] = CIMultiDict(self.cfg.headers)
        headers.setdefault("Content-Type", "application/json")
        headers["Idempotency-Key"] = record.idempotency_key
        return headers

    async def call(self, record: TriggerRecord, payload: dict[str, Any]) -> CallOutcome:
        await self.start()
        try:
            answer = await self.client.request(
                self.cfg.method,
                self.cfg.url,
                body=orjson.dumps(payload),
                headers=self.request_headers(record),
            )
        except TimeoutError:
            raise PipelineError(
                f"timed out after {format_seconds(self.timeout)}", retryable=True
            ) from None
        except RedirectRefused as exc:
            raise PipelineError(str(exc), retryable=False) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise PipelineError(
                f"TLS: the server's certificate was refused: {exc.certificate_error}",
                retryable=False,
            ) from None
        except aiohttp.InvalidURL:
            raise PipelineError("invalid URL", retryable=False) from None
        except aiohttp.ClientError as exc:
            raise PipelineError(
                f"connection error: {type(exc).__name__}: {self.scrub(str(exc))}", retryable=True
            ) from None
        except ValueError as exc:
            # e.g. a header value aiohttp refuses; its message may quote the (secret) value.
            raise PipelineError(f"invalid request: {type(exc).__name__}", retryable=False) from None
        status, body = answer.status, answer.body
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))

        if 200 <= status < 300:
            return CallOutcome(
                run_id=_run_id_from(body) or record.idempotency_key,
                status=RunStatus.SUCCEEDED,
                detail={"http_status": status},
            )
        excerpt = _body_excerpt(self.scrub(body.decode("utf-8", errors="replace")).encode())
        message = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
        if 300 <= status < 400:
            raise PipelineError(
                f"HTTP {status}: a redirect without a usable Location", retryable=False
            )
        retryable = status >= 500 or status in RETRYABLE_STATUSES
        raise PipelineError(
            message, retryable=retryable, retry_after=retry_after if retryable else None
        )
