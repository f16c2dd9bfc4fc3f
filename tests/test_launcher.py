"""The launcher's choices: which broker runs, what a missing Java or Maven says, and the pinned
Apache Kafka jar set (fetched with Maven, refused when a jar differs from the record)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kafkaconsole import kafka_jars
from kafkaconsole.cli.app import app
from kafkaconsole.embedded import EmbeddedError, _java_failure, pick_broker

# a PATH with the Python of this run but without java and mvn
NO_JAVA_PATH = os.path.dirname(sys.executable)


def test_auto_falls_back_to_tansu_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", NO_JAVA_PATH)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    kind, reason = pick_broker("auto")
    assert kind == "tansu"
    assert reason is not None and "Java is not installed" in reason
    assert pick_broker("tansu") == ("tansu", None)
    with pytest.raises(EmbeddedError, match="Java is not installed"):
        pick_broker("apache")
    with pytest.raises(EmbeddedError, match="choose apache, tansu or auto"):
        pick_broker("kafka")


def test_demo_without_java_says_so_in_one_line() -> None:
    env = {"PATH": NO_JAVA_PATH, "JAVA_HOME": ""}
    result = CliRunner().invoke(app, ["demo", "--broker", "apache", "--no-ui"], env=env)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "kafkaconsole demo --broker apache: Java is not installed (the Apache Kafka broker "
        "needs Java 17 or newer)"
    ], result.stderr


def test_demo_refuses_an_unknown_broker() -> None:
    result = CliRunner().invoke(app, ["demo", "--broker", "kafka"])
    assert result.exit_code == 2
    assert "choose tansu or apache" in result.stderr
    assert "Traceback" not in result.stderr


MISSING = kafka_jars.missing_tools(need_maven=True)


def test_without_java_or_maven_a_fetch_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", NO_JAVA_PATH)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("KAFKACONSOLE_CACHE_DIR", str(tmp_path))
    with pytest.raises(kafka_jars.KafkaJarsError, match="Java is not installed"):
        kafka_jars.ensure_jars()


@pytest.mark.skipif(MISSING is not None, reason=f"fetching needs Java and Maven: {MISSING}")
def test_a_damaged_jar_cache_is_fetched_again_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = kafka_jars.ensure_jars()  # the shared verified set
    monkeypatch.setenv("KAFKACONSOLE_CACHE_DIR", str(tmp_path))
    shutil.copytree(good, kafka_jars.libs_dir())
    victim = kafka_jars.libs_dir() / "kafka-clients-4.4.0.jar"
    victim.write_bytes(victim.read_bytes()[:-10])  # truncated on disk
    extra = kafka_jars.libs_dir() / "unexpected.jar"
    extra.write_bytes(b"not a jar")
    folder = kafka_jars.ensure_jars()  # Maven again (from its local repository)
    assert kafka_jars.digest_set(folder) == kafka_jars.recorded_digests()
    assert not extra.exists()


@pytest.mark.skipif(MISSING is not None, reason=f"fetching needs Java and Maven: {MISSING}")
def test_a_fetch_that_differs_from_the_record_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "kafka-jars.sha256"
    lines = kafka_jars.CHECKSUMS.read_text().splitlines()
    lines = [
        ("0" * 64 + line[64:]) if line.endswith("kafka-clients-4.4.0.jar") else line
        for line in lines
    ]
    record.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(kafka_jars, "CHECKSUMS", record)
    monkeypatch.setenv("KAFKACONSOLE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(
        kafka_jars.KafkaJarsError, match=re.escape("checksum of kafka-clients-4.4.0.jar")
    ):
        kafka_jars.ensure_jars()
    assert not kafka_jars.libs_dir().exists()  # nothing unverified is left in the cache


def test_a_failed_java_tool_is_reported_by_its_cause_not_its_last_frame() -> None:
    trace = (
        b"[2026-11-30 18:51:02] INFO Formatting metadata directory /tmp/x\n"
        b'Exception in thread "main" java.lang.RuntimeException: could not format\n'
        b"\tat kafka.tools.StorageTool.main(StorageTool.scala:50)\n"
        b"Caused by: java.nio.file.FileSystemException: /tmp/x/meta.properties: No space left\n"
        b"\tat java.base/sun.nio.fs.UnixException.translateToIOException(UnixException.java:100)\n"
        b"\t... 8 more\n"
    )
    assert (
        _java_failure(trace)
        == "java.nio.file.FileSystemException: /tmp/x/meta.properties: No space left"
    )
    assert _java_failure(b"Error: bad cluster id\n") == "Error: bad cluster id"
    assert _java_failure(b"line one\nline two\n") == "line two"
    assert _java_failure(b"") == "no output"
