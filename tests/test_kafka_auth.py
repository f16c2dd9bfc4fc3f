"""Kafka authentication that succeeds, with least-privilege ACLs, on a real Apache Kafka broker.

A broker of its own (module scope) with three client listeners: PLAINTEXT (the tests' admin,
a super user), SASL_PLAINTEXT with SCRAM-SHA-256/512, and SSL requiring a client certificate
(mutual TLS). Kafka's StandardAuthorizer denies everything not granted. SCRAM users and ACLs
are created with Kafka's own Admin client (``tests/java/KafkaSecurityAdmin.java``, run from
the broker's jars), since aiokafka has no ACL calls.

The engine then runs with exactly the ACL set README documents (:func:`documented_acls`),
counts, dead-letters and triggers; without one of those permissions it says which, in one line.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kafkaconsole import kafka_jars
from kafkaconsole.config.models import AppConfig
from kafkaconsole.embedded import (
    EmbeddedServices,
    ManagedProcess,
    apache_unavailable,
    free_port,
    start_apache_kafka,
    stop_all,
)
from kafkaconsole.engine.status import ConsumerState
from tests import pipeline_targets
from tests.engine_support import make_config, running_engine
from tests.helpers import KafkaHelper, wait_for
from tests.tls_support import Certs, make_certs, openssl_available

ADMIN_TOOL = Path(__file__).parent / "java" / "KafkaSecurityAdmin.java"
PASSWORD = "engine-secret-1"


@dataclass
class SecuredKafka:
    plaintext: str
    """The admin listener (ANONYMOUS is a super user there): topics and producing."""
    sasl: str
    ssl: str
    certs: Certs
    libs: Path

    def admin(self, *args: str) -> None:
        """Run ``KafkaSecurityAdmin`` against the broker (``scram ...`` / ``allow ...``)."""
        java = kafka_jars.java_binary()
        assert java is not None
        proc = subprocess.run(
            [java, "-cp", f"{self.libs}/*", str(ADMIN_TOOL), self.plaintext, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("JAVA_TOOL")},
        )
        assert proc.returncode == 0, proc.stderr.strip() or proc.stdout.strip()


def documented_acls(principal: str, topic: str, group: str, dlq: str) -> list[str]:
    """The ACL set README lists for one consumer: what the engine needs, nothing more."""
    grants = [
        ("TOPIC", topic, "READ"),
        ("TOPIC", topic, "DESCRIBE"),
        ("GROUP", group, "READ"),
        ("TOPIC", dlq, "WRITE"),
        ("TOPIC", dlq, "DESCRIBE"),
        ("TOPIC", dlq, "CREATE"),
    ]
    out: list[str] = []
    for kind, name, operation in grants:
        out += ["allow", principal, kind, name, "LITERAL", operation]
    return out


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    if os.environ.get("KAFKACONSOLE_TEST_BROKER", "apache") == "tansu":
        pytest.skip("Kafka authentication is tested on Apache Kafka (Tansu has no SASL or ACLs)")
    if reason := apache_unavailable():
        pytest.skip(f"Apache Kafka cannot run here: {reason}")
    if not openssl_available():
        pytest.skip("openssl is needed for the test certificates")
    home = tmp_path_factory.mktemp("secured-kafka")
    certs = make_certs(home / "certs")
    keystore = home / "broker-keystore.pem"  # the key, then the certificate: Kafka's PEM store
    keystore.write_text(certs.server_key.read_text() + certs.server_cert.read_text())
    sasl_port, ssl_port = free_port(), free_port()
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    properties = {
        "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": scram,
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": scram,
        "listener.name.ssl.ssl.client.auth": "required",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(certs.ca),
        "ssl.principal.mapping.rules": "RULE:^CN=(.*)$/$1/,DEFAULT",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }
    nodes: list[ManagedProcess] = start_apache_kafka(
        1,
        workdir=home / "kafka",
        properties=properties,
        extra_listeners={"SASL_PLAINTEXT": sasl_port, "SSL": ssl_port},
    )
    try:
        yield SecuredKafka(
            plaintext=f"127.0.0.1:{nodes[0].port}",
            sasl=f"127.0.0.1:{sasl_port}",
            ssl=f"127.0.0.1:{ssl_port}",
            certs=certs,
            libs=kafka_jars.ensure_jars(),
        )
    finally:
        stop_all(nodes)


@pytest.fixture
async def admin_kafka(secured: SecuredKafka) -> AsyncIterator[KafkaHelper]:
    """A producer and topic admin on the super-user listener."""
    helper = KafkaHelper(secured.plaintext)
    await helper.start()
    try:
        yield helper
    finally:
        await helper.stop()


def _config(services: EmbeddedServices, unique: str, kafka: dict[str, Any]) -> AppConfig:
    return make_config(
        services,
        unique,
        [{"consumer_id": f"{unique}-c", "kafka_topic": unique, "max_event": 5}],
        kafka=kafka,
    )


def _sasl(secured: SecuredKafka, user: str, mechanism: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": secured.sasl,
        "security_protocol": "SASL_PLAINTEXT",
        "allow_insecure": True,  # loopback only; SASL_SSL is the same login inside TLS
        "sasl_mechanism": mechanism,
        "sasl_username": user,
        "sasl_password": PASSWORD,
    }


def _mtls(secured: SecuredKafka) -> dict[str, Any]:
    return {
        "bootstrap_servers": secured.ssl,
        "security_protocol": "SSL",
        "ssl_cafile": str(secured.certs.ca),
        "ssl_certfile": str(secured.certs.client_cert),
        "ssl_keyfile": str(secured.certs.client_key),
    }


async def _counts_dead_letters_and_triggers(
    services: EmbeddedServices, admin_kafka: KafkaHelper, unique: str, kafka: dict[str, Any]
) -> None:
    cfg = _config(services, unique, kafka)
    cid = f"{unique}-c"
    await admin_kafka.create_topic(unique, 1)
    async with running_engine(cfg) as engine:
        await admin_kafka.produce(unique, [*({"i": i} for i in range(5)), b"{bad"], partitions=1)

        async def triggered() -> bool:
            return any(call["count"] == 5 for call in pipeline_targets.calls_for(cid))

        await wait_for(triggered, 30, what="window of 5 triggered through the secured listener")

        async def running_cleanly() -> bool:
            s = engine.snapshot().consumer(cid)
            return s is not None and s.state == ConsumerState.RUNNING and s.last_error is None

        await wait_for(running_cleanly, 10, what="running with no error")

        async def dead_lettered() -> bool:
            s = engine.snapshot().consumer(cid)
            return s is not None and s.dlq >= 1  # sent: the DLQ topic was created and written

        await wait_for(dead_lettered, 20, what="bad event in the DLQ")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_scram_login_with_exactly_the_documented_acls(
    secured: SecuredKafka,
    admin_kafka: KafkaHelper,
    services: EmbeddedServices,
    unique: str,
    mechanism: str,
) -> None:
    user = f"kc-{unique}"
    cfg = _config(services, unique, _sasl(secured, user, mechanism))
    c = cfg.consumer(f"{unique}-c")
    secured.admin(
        "scram", user, PASSWORD, mechanism,
        *documented_acls(f"User:{user}", unique, c.effective_group_id, c.dlq_topic),
    )  # fmt: skip
    await _counts_dead_letters_and_triggers(
        services, admin_kafka, unique, _sasl(secured, user, mechanism)
    )


async def test_mutual_tls_with_exactly_the_documented_acls(
    secured: SecuredKafka, admin_kafka: KafkaHelper, services: EmbeddedServices, unique: str
) -> None:
    cfg = _config(services, unique, _mtls(secured))
    c = cfg.consumer(f"{unique}-c")
    # the client certificate's CN is the principal (ssl.principal.mapping.rules)
    secured.admin(*documented_acls("User:kafkaconsole-client", unique, c.effective_group_id,
                                   c.dlq_topic))  # fmt: skip
    await _counts_dead_letters_and_triggers(services, admin_kafka, unique, _mtls(secured))


async def test_a_missing_permission_is_named_in_one_line(
    secured: SecuredKafka, admin_kafka: KafkaHelper, services: EmbeddedServices, unique: str
) -> None:
    """Everything but READ on the group: the consumer shows the error state with one line
    naming the permission, the group and the user; the instance stays up; granting the ACL is
    enough for it to join and count (no restart)."""
    user = f"kc-{unique}"
    cfg = _config(services, unique, _sasl(secured, user, "SCRAM-SHA-512"))
    c = cfg.consumer(f"{unique}-c")
    acls = documented_acls(f"User:{user}", unique, c.effective_group_id, c.dlq_topic)
    at = acls.index("GROUP")
    acls = acls[: at - 2] + acls[at + 4 :]  # drop "allow User:x GROUP g LITERAL READ"
    secured.admin("scram", user, PASSWORD, "SCRAM-SHA-512", *acls)
    await admin_kafka.create_topic(unique, 1)
    async with running_engine(cfg) as engine:

        async def refused() -> bool:
            s = engine.snapshot().consumer(c.consumer_id)
            return s is not None and s.state == ConsumerState.ERROR

        await wait_for(refused, 30, what="the consumer refused by the group ACL")
        s = engine.snapshot().consumer(c.consumer_id)
        assert s is not None and s.last_error is not None
        assert "\n" not in s.last_error
        assert f"READ on group {c.effective_group_id!r} to User:{user}" in s.last_error
        assert engine.started and not engine.stopping
        secured.admin("allow", f"User:{user}", "GROUP", c.effective_group_id, "LITERAL", "READ")
        await admin_kafka.produce(unique, ({"i": i} for i in range(5)), partitions=1)

        async def triggered() -> bool:
            return any(x["count"] == 5 for x in pipeline_targets.calls_for(c.consumer_id))

        await wait_for(triggered, 40, what="counting once the group ACL is granted")

        async def cleared() -> bool:
            s = engine.snapshot().consumer(c.consumer_id)
            return s is not None and s.last_error is None and s.state == ConsumerState.RUNNING

        await wait_for(cleared, 10, what="the refusal cleared")


def test_readme_lists_exactly_the_acls_the_tests_grant() -> None:
    """README's kafka-acls lines grant what :func:`documented_acls` grants, no more."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith("kafka-acls.sh ")]
    listed = set()
    for line in lines:
        words = line.split()
        ops = [words[i + 1].upper() for i, w in enumerate(words) if w == "--operation"]
        kind = "GROUP" if "--group" in words else "TOPIC"
        name = words[words.index("--group" if kind == "GROUP" else "--topic") + 1]
        listed |= {(kind, name, op) for op in ops}
    acl = documented_acls("User:x", "TOPIC", "GROUP", "DLQ")
    granted = {(acl[i + 2], acl[i + 3], acl[i + 5]) for i in range(0, len(acl), 6)}
    assert listed == granted
