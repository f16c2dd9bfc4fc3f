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

The same machinery serves any other pinned set of jars (a :class:`JarSet`: Maven coordinates,
a cache folder, a checksum file), e.g. the Kafka Connect runtime and Debezium connector of the
change-data-capture test tier (``tests/cdc/stack_jars.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The Apache Kafka release the launcher runs (Scala 2.13 build, KRaft only).
KAFKA_VERSION = "4.4.0"
#: SLF4J 1.7 binding for log4j2, so the broker writes its log (Kafka ships none).
LOG4J_VERSION = "2.25.5"

CHECKSUMS = Path(__file__).with_name("kafka-jars.sha256")


class KafkaJarsError(RuntimeError):
    """The broker's jars cannot be had: no Java or Maven, a failed fetch, a checksum mismatch."""


@dataclass(frozen=True)
class JarSet:
    """One pinned set of jars: what Maven resolves for ``dependencies`` (``group:artifact:
    version``, with their runtime dependencies, less ``exclusions`` (``group:artifact``, ``*``
    allowed) into ``<cache>/<folder>/libs``, checked against ``checksums``."""

    title: str
    folder: str
    dependencies: Sequence[str]
    checksums: Path
    exclusions: Sequence[str] = ()

    def libs_dir(self) -> Path:
        return cache_root() / self.folder / "libs"

    def pom(self) -> str:
        excluded = "".join(
            "<exclusion><groupId>{}</groupId><artifactId>{}</artifactId></exclusion>".format(
                *item.split(":", 1)
            )
            for item in self.exclusions
        )
        exclusions = f"<exclusions>{excluded}</exclusions>" if excluded else ""
        dependencies = "".join(
            "\n    <dependency><groupId>{}</groupId><artifactId>{}</artifactId>"
            "<version>{}</version>{}</dependency>".format(*item.split(":", 2), exclusions)
            for item in self.dependencies
        )
        return (
            '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            "  <modelVersion>4.0.0</modelVersion>\n"
            "  <groupId>kafkaconsole</groupId>\n"
            f"  <artifactId>{self.folder}</artifactId>\n"
            "  <version>0</version>\n"
            "  <packaging>pom</packaging>\n"
            f"  <dependencies>{dependencies}\n  </dependencies>\n"
            "</project>\n"
        )


def broker_jars() -> JarSet:
    """The pinned Apache Kafka broker (with a log4j2 binding so it writes its log)."""
    return JarSet(
        title=f"Apache Kafka {KAFKA_VERSION}",
        folder=f"kafka-{KAFKA_VERSION}",
        dependencies=(
            f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
            f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
        ),
        checksums=CHECKSUMS,
    )


def cache_root() -> Path:
    """Where big downloads are kept across runs and checkouts."""
    configured = os.environ.get("KAFKACONSOLE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kafkaconsole"


def libs_dir() -> Path:
    return broker_jars().libs_dir()


def java_binary() -> str | None:
    """The ``java`` to run the broker with: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def missing_tools(*, need_maven: bool, what: str = "the Apache Kafka broker") -> str | None:
    """Why ``what`` cannot run here (one line), or None when it can."""
    if java_binary() is None:
        return f"Java is not installed ({what} needs Java 17 or newer)"
    if need_maven and shutil.which("mvn") is None:
        return f"Maven is not installed (it fetches the jars of {what} from Maven Central)"
    return None


def digest_set(folder: Path) -> dict[str, str]:
    """SHA-256 of every jar in ``folder``, by file name."""
    out = {}
    for jar in sorted(folder.glob("*.jar")):
        out[jar.name] = hashlib.sha256(jar.read_bytes()).hexdigest()
    return out


def recorded_digests(jars: JarSet | None = None) -> dict[str, str]:
    out = {}
    for line in (jars or broker_jars()).checksums.read_text().splitlines():
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


def _resolve(jars: JarSet, into: Path) -> None:
    """Resolve the set's runtime jars with Maven into ``into``."""
    pom = into.parent / "pom.xml"
    pom.write_text(jars.pom())
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
        raise KafkaJarsError(f"Maven could not resolve {jars.title}: " + " | ".join(tail))


def ensure_jars(jars: JarSet | None = None) -> Path:
    """The verified jar folder of a pinned set (default: the broker), fetched with Maven on
    first use."""
    jars = jars or broker_jars()
    target = jars.libs_dir()
    expected = recorded_digests(jars)
    if target.is_dir():
        problems = _differences(digest_set(target), expected)
        if not problems:
            return target
        shutil.rmtree(target)  # a damaged or foreign cache: fetch again
    if missing_tools(need_maven=True, what=jars.title):
        raise KafkaJarsError(str(missing_tools(need_maven=True, what=jars.title)))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=target.parent) as work:
        staging = Path(work) / "libs"
        _resolve(jars, staging)
        problems = _differences(digest_set(staging), expected)
        if problems:
            raise KafkaJarsError(
                f"the jars resolved for {jars.title} differ from "
                f"{jars.checksums.name}: " + "; ".join(problems[:5])
            )
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # another process won the race with the same set
                raise
    return target


def record(jars: JarSet | None = None) -> Path:
    """Fetch afresh and write the set's checksum file from what Maven resolved."""
    jars = jars or broker_jars()
    target = jars.libs_dir()
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _resolve(jars, target)
    lines = [
        f"# SHA-256 of the runtime jars of {jars.title}, as Maven resolves them from:",
        *(f"#   {item}" for item in jars.dependencies),
        *(f"#   (without {item})" for item in jars.exclusions),
    ]
    lines += [f"{digest}  {name}" for name, digest in digest_set(target).items()]
    jars.checksums.write_text("\n".join(lines) + "\n")
    return target


def cli(jars: JarSet, prog: str, argv: list[str] | None = None) -> int:
    """``prog [--record]``: fetch (or record) and verify ``jars``, print their folder."""
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Fetch and verify the jars of {jars.title}, print their folder."
    )
    parser.add_argument(
        "--record", action="store_true", help="fetch afresh and rewrite the checksum file"
    )
    args = parser.parse_args(argv)
    try:
        folder = record(jars) if args.record else ensure_jars(jars)
    except KafkaJarsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli(broker_jars(), "python -m kafkaconsole.kafka_jars", argv)


if __name__ == "__main__":
    sys.exit(main())
