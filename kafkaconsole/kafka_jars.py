"""Fetch, verify and locate the jars of a pinned Apache Kafka broker.

The launcher (:mod:`kafkaconsole.embedded`) runs a real Apache Kafka broker (KRaft) from its
jars when Java is installed. The jars come from Maven Central through Maven itself, resolved
from a small POM of the project's into a cache folder that later runs reuse (outside any
checkout, so fresh clones share it): ``$KAFKACONSOLE_CACHE_DIR`` or
``~/.cache/kafkaconsole``, then ``kafka-<version>/libs``.

The resolved set is pinned twice: by version here, and by the SHA-256 of every jar, recorded
in ``kafka-jars.sha256`` beside this module. A fetched set that differs from the record is
refused (nothing is put in the cache); a cached set is checked again on each use.

``python -m kafkaconsole.kafka_jars`` fetches (if needed), verifies and prints the folder;
``--record`` rewrites the checksum file from a fresh fetch (when the pinned version changes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The Apache Kafka release the launcher runs (Scala 2.13 build, KRaft only).
KAFKA_VERSION = "4.4.0"
#: SLF4J 1.7 binding for log4j2, so the broker writes its log (Kafka ships none).
LOG4J_VERSION = "2.25.5"

CHECKSUMS = Path(__file__).with_name("kafka-jars.sha256")

_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>kafkaconsole</groupId>
  <artifactId>apache-kafka-broker</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""


class KafkaJarsError(RuntimeError):
    """The broker's jars cannot be had: no Java or Maven, a failed fetch, a checksum mismatch."""


def cache_root() -> Path:
    """Where big downloads are kept across runs and checkouts."""
    configured = os.environ.get("KAFKACONSOLE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kafkaconsole"


def libs_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"


def java_binary() -> str | None:
    """The ``java`` to run the broker with: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def missing_tools(*, need_maven: bool) -> str | None:
    """Why the Apache broker cannot run here (one line), or None when it can."""
    if java_binary() is None:
        return "Java is not installed (the Apache Kafka broker needs Java 17 or newer)"
    if need_maven and shutil.which("mvn") is None:
        return "Maven is not installed (it fetches the Apache Kafka jars from Maven Central)"
    return None


def digest_set(folder: Path) -> dict[str, str]:
    """SHA-256 of every jar in ``folder``, by file name."""
    out = {}
    for jar in sorted(folder.glob("*.jar")):
        out[jar.name] = hashlib.sha256(jar.read_bytes()).hexdigest()
    return out


def recorded_digests() -> dict[str, str]:
    out = {}
    for line in CHECKSUMS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            out[name] = digest
    return out


def _differences(found: dict[str, str], expected: dict[str, str]) -> list[str]:
    problems = [f"missing {name}" for name in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected {name}" for name in sorted(found.keys() - expected.keys())]
    problems += [
        f"checksum of {name} differs"
        for name in sorted(found.keys() & expected.keys())
        if found[name] != expected[name]
    ]
    return problems


def _resolve(into: Path) -> None:
    """Resolve the broker's runtime jars with Maven into ``into``."""
    pom = into.parent / "pom.xml"
    pom.write_text(_POM)
    command = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={into}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise KafkaJarsError(
            f"Maven could not resolve Apache Kafka {KAFKA_VERSION}: " + " | ".join(tail)
        )


def ensure_jars() -> Path:
    """The verified jar folder of the pinned broker, fetched with Maven on first use."""
    target = libs_dir()
    expected = recorded_digests()
    if target.is_dir():
        problems = _differences(digest_set(target), expected)
        if not problems:
            return target
        shutil.rmtree(target)  # a damaged or foreign cache: fetch again
    if missing_tools(need_maven=True):
        raise KafkaJarsError(str(missing_tools(need_maven=True)))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=target.parent) as work:
        staging = Path(work) / "libs"
        _resolve(staging)
        problems = _differences(digest_set(staging), expected)
        if problems:
            raise KafkaJarsError(
                f"the jars resolved for Apache Kafka {KAFKA_VERSION} differ from "
                f"{CHECKSUMS.name}: " + "; ".join(problems[:5])
            )
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # another process won the race with the same set
                raise
    return target


def record() -> Path:
    """Fetch afresh and write the checksum file from what Maven resolved."""
    target = libs_dir()
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _resolve(target)
    lines = [
        f"# SHA-256 of the runtime jars of Apache Kafka {KAFKA_VERSION} (kafka_2.13) and the",
        f"# log4j-slf4j-impl {LOG4J_VERSION} binding, as Maven resolves them.",
        "# Regenerate with: python -m kafkaconsole.kafka_jars --record",
    ]
    lines += [f"{digest}  {name}" for name, digest in digest_set(target).items()]
    CHECKSUMS.write_text("\n".join(lines) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kafkaconsole.kafka_jars",
        description=f"Fetch and verify the jars of Apache Kafka {KAFKA_VERSION}, print their "
        "folder.",
    )
    parser.add_argument(
        "--record", action="store_true", help="fetch afresh and rewrite the checksum file"
    )
    args = parser.parse_args(argv)
    try:
        folder = record() if args.record else ensure_jars()
    except KafkaJarsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
