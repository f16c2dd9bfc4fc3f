"""Outbound HTTP of every remote kind: the ``http``, ``airbyte`` and ``airflow`` pipelines and
the alert webhooks. One place decides TLS, proxies, redirects and timeouts, so they behave the
same everywhere:

- TLS: ``ca_file`` is the CA bundle (PEM) that verifies the server instead of the system's;
  ``cert_file``/``key_file`` present a client certificate (mutual TLS); ``verify = false``
  checks nothing at all, and the engine says so in a warning when it starts.
- Proxies come from the environment, as curl and requests read them: ``HTTPS_PROXY`` for
  https URLs, ``HTTP_PROXY`` for http URLs (either case), hosts in ``NO_PROXY`` go direct.
- Redirects (301, 302, 303, 307, 308) are followed, at most :data:`MAX_REDIRECTS` of them,
  while the scheme stays the same or goes from http to https; a redirect from https to http
  is refused. The method and body are repeated (an API call turned into a body-less GET would
  silently do nothing), except after a 303, which asks for a GET. Credentials (the
  ``Authorization`` header and every header named like a secret) are only sent to the host
  that was configured.
- Timeouts: ``timeout`` bounds one request, from connecting to reading the whole answer,
  redirects included.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from kafkaconsole.config.secrets import is_secret_name

log = logging.getLogger("kafkaconsole.http")

MAX_REDIRECTS = 5
"""Redirects followed for one request before it fails."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

USER_AGENT = "kafkaconsole"


class TlsSettings(Protocol):
    """The TLS keys every remote kind's config has."""

    @property
    def ca_file(self) -> str | None: ...
    @property
    def cert_file(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...
    @property
    def verify(self) -> bool: ...


class RedirectRefused(Exception):
    """A redirect this client will not follow (downgrade to http, too many, bad Location)."""


class TlsSetupError(Exception):
    """A CA bundle or client certificate that cannot be loaded."""


def ssl_context(tls: TlsSettings) -> ssl.SSLContext | bool:
    """The ``ssl`` argument for aiohttp: True (the system's CAs, verified) unless the settings
    ask for something else. Reads files when ``ca_file`` or ``cert_file`` is set: then call it
    off the event loop."""
    if tls.verify and tls.ca_file is None and tls.cert_file is None:
        return True
    try:
        if tls.verify:
            context = ssl.create_default_context(cafile=tls.ca_file)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(
            f"{name} {path}"
            for name, path in (
                ("ca_file", tls.ca_file),
                ("cert_file", tls.cert_file),
                ("key_file", tls.key_file),
            )
            if path is not None
        )
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TlsSetupError(f"cannot load TLS files ({files}): {reason}") from None
    return context


NOT_CREDENTIALS = frozenset({"idempotency-key", "content-type", "accept", "user-agent"})


def is_credential_header(name: str) -> bool:
    """Headers kept from other hosts: Authorization, cookies and every header named like a
    secret (``X-Api-Key``, ``X-Auth-Token``...), but not ``Idempotency-Key``."""
    lowered = name.lower()
    return lowered not in NOT_CREDENTIALS and (lowered == "cookie" or is_secret_name(name))


def insecure_warning(where: str) -> str:
    """The start-up warning for ``verify = false``."""
    return (
        f"{where}: verify = false: the server's certificate is not checked, so anyone on the "
        "path can read or change what is sent (credentials included)"
    )


def shown(url: URL) -> str:
    """``url`` without user info and query (either may hold a secret)."""
    return str(url.with_user(None).with_query(None).with_fragment(None))


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """One HTTP answer, read in full; ``url`` is where it came from (after redirects)."""

    status: int
    body: bytes
    headers: CIMultiDictProxy[str]
    url: URL


class HttpClient:
    """One aiohttp session with the TLS, proxy, redirect and timeout rules above."""

    def __init__(
        self,
        tls: TlsSettings,
        timeout: float,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.tls = tls
        self.timeout = timeout
        self._default_headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool | None = None

    async def start(self) -> None:
        """Load the TLS files (raises :class:`TlsSetupError`) and open the session."""
        if self._ssl is None:
            if self.tls.ca_file is None and self.tls.cert_file is None:
                self._ssl = ssl_context(self.tls)  # reads no file
            else:
                self._ssl = await asyncio.to_thread(ssl_context, self.tls)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": USER_AGENT, **self._default_headers},
                trust_env=True,  # HTTP(S)_PROXY and NO_PROXY
            )

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The open session, if any (for tests and diagnostics)."""
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def request(
        self,
        method: str,
        url: URL | str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HttpAnswer:
        """Send one request, following redirects as the module says.

        Raises TimeoutError after ``timeout``, :class:`RedirectRefused`, or aiohttp's errors.
        """
        if self._session is None or self._session.closed or self._ssl is None:
            await self.start()
        session = self._session
        assert session is not None and self._ssl is not None
        current = URL(url)
        if params:
            current = current.update_query(params)
        origin = (current.host or "").lower()
        sent: CIMultiDict[str] = CIMultiDict(headers or {})
        async with asyncio.timeout(self.timeout):
            for _hop in range(MAX_REDIRECTS + 1):
                async with session.request(
                    method,
                    current,
                    data=body,
                    headers=sent,
                    allow_redirects=False,
                    ssl=self._ssl,
                ) as response:
                    answer = HttpAnswer(
                        response.status, await response.read(), response.headers, current
                    )
                location = answer.headers.get("Location")
                if answer.status not in REDIRECT_STATUSES or not location:
                    return answer
                target = self._redirect_target(current, location)
                log.debug("HTTP %d: %s -> %s", answer.status, shown(current), shown(target))
                if answer.status == 303 and method not in ("GET", "HEAD"):
                    method, body = "GET", None
                    sent.popall("Content-Type", None)
                if (target.host or "").lower() != origin:
                    for name in list(sent):
                        if is_credential_header(name):
                            sent.popall(name, None)
                current = target
        raise RedirectRefused(f"more than {MAX_REDIRECTS} redirects (last to {shown(current)})")

    @staticmethod
    def _redirect_target(current: URL, location: str) -> URL:
        try:
            target = current.join(URL(location))
        except ValueError:
            raise RedirectRefused("redirect with an unreadable Location") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise RedirectRefused(f"redirect to {shown(target)} refused (not http or https)")
        if current.scheme == "https" and target.scheme == "http":
            raise RedirectRefused(
                f"redirect from https to http refused ({shown(current)} -> {shown(target)})"
            )
        return target
