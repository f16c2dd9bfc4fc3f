"""The pinned jars of the change-data-capture tier: Kafka Connect and Debezium's PostgreSQL
connector, both from Maven Central through :mod:`kafkaconsole.kafka_jars` (same cache folder,
same checksum pinning as the broker's jars).

- Kafka Connect runs from ``connect-<version>/libs`` (the runtime, the JSON converter and a
  log4j2 binding). Its version is the Apache Kafka release Debezium is built against (its
  POM's ``kafka-clients``), not the broker's: Debezium 3.6.1 calls
  ``org.apache.kafka.common.utils.Sanitizer``, which Kafka 4.4.0 moved to an internal
  package, so on a 4.4.0 Connect runtime its task fails with ``NoClassDefFoundError``. A
  4.3 worker talks to the 4.4 broker as any client of an older version does.
- The connector is a Connect plugin: ``debezium-postgres-<version>/libs`` is given to the
  worker as one plugin folder (``plugin.path``). Kafka's own jars and SLF4J are left out of
  it, as in Debezium's plugin archive: the worker provides them.

``python -m tests.cdc.stack_jars [--record]`` fetches (or re-records) and verifies both sets
and prints their folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kafkaconsole.kafka_jars import LOG4J_VERSION, JarSet, cli

DEBEZIUM_VERSION = "3.6.1.Final"
#: The Kafka Connect release of the worker: the one Debezium 3.6.1 is built against.
CONNECT_VERSION = "4.3.0"

HERE = Path(__file__).parent

CONNECT = JarSet(
    title=f"Kafka Connect {CONNECT_VERSION}",
    folder=f"connect-{CONNECT_VERSION}",
    dependencies=(
        f"org.apache.kafka:connect-runtime:{CONNECT_VERSION}",
        f"org.apache.kafka:connect-json:{CONNECT_VERSION}",
        f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
    ),
    checksums=HERE / "connect-jars.sha256",
)

DEBEZIUM_POSTGRES = JarSet(
    title=f"Debezium PostgreSQL connector {DEBEZIUM_VERSION}",
    folder=f"debezium-postgres-{DEBEZIUM_VERSION}",
    dependencies=(f"io.debezium:debezium-connector-postgres:{DEBEZIUM_VERSION}",),
    checksums=HERE / "debezium-postgres-jars.sha256",
    exclusions=("org.apache.kafka:*", "org.slf4j:*"),
)

SETS = (CONNECT, DEBEZIUM_POSTGRES)


def main(argv: list[str] | None = None) -> int:
    status = 0
    for jars in SETS:
        status = status or cli(jars, "python -m tests.cdc.stack_jars", argv)
    return status


if __name__ == "__main__":
    sys.exit(main())
