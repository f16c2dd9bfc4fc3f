"""Configuration: loading, env overrides, ${VAR} secrets, error messages, masking, and the
``kafkaconsole config validate|show`` commands. No Kafka or Redis needed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from kafkaconsole.cli.config_cmd import config_app
from kafkaconsole.config import (
    MASK,
    PIPELINE_KINDS,
    AppConfig,
    ConfigError,
    ConfigProblem,
    dotted_key,
    load_config,
    mask_config,
    mask_text,
    models,
    resolve_config_path,
    secret_values,
)

SENTINEL = "S3CRET-SENTINEL-xyz"
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SAMPLE = REPO / "sample_config.toml"
BAD_DIR = TESTS / "data" / "bad_configs"
BAD_CONFIGS = sorted(BAD_DIR.glob("*.toml"))

SAMPLE_ENV = {
    "KAFKACONSOLE_API_TOKEN": f"{SENTINEL}-api",
    "REDIS_PASSWORD": f"{SENTINEL}-redis",
    "AIRBYTE_CLIENT_SECRET": f"{SENTINEL}-airbyte",
    "AIRFLOW_PASSWORD": f"{SENTINEL}-airflow",
    "WEBHOOK_TOKEN": f"{SENTINEL}-webhook",
    "WAREHOUSE_DSN": f"postgres://etl:{SENTINEL}-dsn@warehouse/analytics",
}

MINIMAL = """
[pipelines.orders_sync]
kind = "kafka"
topic = "windows"

[[consumers]]
consumer_id = "orders"
kafka_topic = "orders"
pipeline_name = "orders_sync"
connection_id = "conn-1"
max_event = 10
max_time = 60
"""

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KAFKACONSOLE_* leaks in from the outside; KC_SECRET holds the sentinel."""
    for name in list(os.environ):
        if name.startswith(("KAFKACONSOLE_", "KC_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KC_SECRET", SENTINEL)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """kafkaconsole (test app)."""

    app.add_typer(config_app, name="config")
    return app


def write(tmp_path: Path, text: str, name: str = "kafkaconsole.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value.problems


def keys_of(problems: list[ConfigProblem]) -> list[str]:
    return [problem.key for problem in problems]


# -- the corpus of bad configuration files ---------------------------------------------------


def expectations(path: Path) -> tuple[list[str], list[str], dict[str, str]]:
    keys: list[str] = []
    messages: list[str] = []
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^#\s*(expect|expect-message|env):\s*(.*?)\s*$", line)
        if not match:
            continue
        kind, value = match.groups()
        if kind == "expect":
            keys.append(value)
        elif kind == "expect-message":
            messages.append(value)
        else:
            name, _, text = value.partition("=")
            env[name] = text
    return keys, messages, env


def test_the_bad_config_corpus_is_large() -> None:
    assert len(BAD_CONFIGS) >= 30
    for path in BAD_CONFIGS:
        keys, _, _ = expectations(path)
        assert keys, f"{path.name} has no '# expect: <key>' line"


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=lambda path: path.stem)
def test_bad_config_is_rejected(app: typer.Typer, path: Path) -> None:
    keys, messages, env = expectations(path)
    result = runner.invoke(app, ["config", "validate", str(path)], env=env)

    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    assert SENTINEL not in output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines
    for line in lines:
        assert line.startswith(f"{path}: "), line
    named = [line for line in lines for key in keys if line.startswith(f"{path}: {key}: ")]
    for key in keys:
        assert any(line.startswith(f"{path}: {key}: ") for line in lines), (key, lines)
    for message in messages:
        assert any(message in line for line in named), (message, named)


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=lambda path: path.stem)
def test_bad_config_error_never_holds_the_secret(path: Path) -> None:
    _, _, env = expectations(path)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"KC_SECRET": SENTINEL, **env})
    assert SENTINEL not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


# -- the file itself ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    problems = problems_of(path)
    assert problems == [ConfigProblem(str(path), "(file)", "not found")]
    assert str(problems[0]) == f"{path}: (file): not found"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    problems = problems_of(tmp_path)
    assert keys_of(problems) == ["(file)"]


def test_not_toml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'a = 1\nb = "x\n')
    (problem,) = problems_of(path)
    assert problem.key == "(toml)"
    assert re.search(r"line 2, column \d+", problem.message)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""), env={})
    assert cfg.api.port == 8000
    assert cfg.redis.key_prefix == "consumer"
    assert cfg.consumers == []


def test_resolve_config_path(tmp_path: Path) -> None:
    assert resolve_config_path("a.toml", env={"KAFKACONSOLE_CONFIG": "b.toml"}) == Path("a.toml")
    assert resolve_config_path(None, env={"KAFKACONSOLE_CONFIG": "b.toml"}) == Path("b.toml")
    assert resolve_config_path(None, env={}) == Path("kafkaconsole.toml")


def test_load_config_finds_file_through_env(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, "elsewhere.toml")
    cfg = load_config(None, env={"KAFKACONSOLE_CONFIG": str(path)})
    assert cfg.consumers[0].consumer_id == "orders"


def test_load_config_defaults_to_kafkaconsole_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}).consumers[0].kafka_topic == "orders"


# -- ${VAR} -----------------------------------------------------------------------------------


def test_env_references_are_resolved(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[kafka]
bootstrap_servers = "${KC_BROKERS}"
[redis]
url = "redis://kc:${KC_PW}@cache:6379/0"
[api]
port = "${KC_PORT}"
[pipelines.run]
kind = "command"
command = ["tool", "--token", "${KC_TOKEN}", "cost: $${NOT_A_VAR}"]
"""
        + MINIMAL,
    )
    env = {"KC_BROKERS": "b1:9092,b2:9092", "KC_PW": "pw-123", "KC_PORT": "8123", "KC_TOKEN": "t0k"}
    cfg = load_config(path, env=env)
    assert cfg.kafka.bootstrap_servers == "b1:9092,b2:9092"
    assert cfg.redis.url == "redis://kc:pw-123@cache:6379/0"
    assert cfg.api.port == 8123
    run = cfg.pipelines["run"]
    assert isinstance(run, models.CommandPipeline)
    assert run.command == ["tool", "--token", "t0k", "cost: ${NOT_A_VAR}"]


def test_escaped_reference_is_literal_and_not_secret(tmp_path: Path) -> None:
    path = write(tmp_path, '[ui]\ntheme = "$${THEME}"\n')
    cfg = load_config(path, env={})
    assert cfg.ui.theme == "${THEME}"
    assert mask_config(cfg)["ui"]["theme"] == "${THEME}"


def test_unset_variable_is_reported_at_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[api]\ntoken = "${KC_MISSING}"\nport = "${KC_MISSING_PORT}"\n'
        '[redis]\npassword = "${KC_SET}"\n',
    )
    problems = problems_of(path, env={"KC_SET": SENTINEL})
    assert [str(problem) for problem in problems] == [
        f"{path}: api.token: environment variable KC_MISSING is not set",
        f"{path}: api.port: environment variable KC_MISSING_PORT is not set",
    ]


def test_empty_variable_counts_as_set(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[api]\ntoken = "${KC_EMPTY}"\n'), env={"KC_EMPTY": ""})
    assert cfg.api.token == ""


# -- env overrides ----------------------------------------------------------------------------


def test_env_overrides_win_and_are_typed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[api]\nport = 8000\ntoken = "${KAFKACONSOLE_API_TOKEN}"\n[ui]\ntheme = "light"\n'
        "[[consumers]]\nconsumer_id = 'orders'\nkafka_topic = 'orders'\n"
        "pipeline_name = 'orders_sync'\nconnection_id = 'c'\nmax_event = 10\nmax_time = 60\n"
        '[pipelines.orders_sync]\nkind = "http"\nurl = "https://example.com/"\n',
    )
    env = {
        "KAFKACONSOLE_CONFIG": "/does/not/matter.toml",
        "KAFKACONSOLE_API_TOKEN": "api-token-value",
        "KAFKACONSOLE_API__PORT": "8001",
        "KAFKACONSOLE_API__ENABLED": "false",
        "KAFKACONSOLE_REDIS__URL": "redis://cache:6380/1",
        "KAFKACONSOLE_REDIS__KEY_PREFIX": "123",
        "KAFKACONSOLE_KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "KAFKACONSOLE_KAFKA__COMMIT_INTERVAL": "2.5",
        "KAFKACONSOLE_UI__THEME": "nord",
        "KAFKACONSOLE_UI__REFRESH_HZ": "10",
        "KAFKACONSOLE_UI__KEYMAP__PAUSE": "space",
        "KAFKACONSOLE_PIPELINES__ORDERS_SYNC__TIMEOUT": "5",
        "KAFKACONSOLE_PIPELINES__ORDERS_SYNC__HEADERS__AUTHORIZATION": "Bearer abc",
        "KAFKACONSOLE_CONSUMERS__ORDERS__MAX_EVENT": "7",
        "KAFKACONSOLE_CONSUMERS__0__JOB_TYPE": '"async"',
    }
    cfg = load_config(path, env=env)
    assert cfg.api.port == 8001
    assert cfg.api.enabled is False
    assert cfg.api.token == "api-token-value"
    assert cfg.redis.url == "redis://cache:6380/1"
    assert cfg.redis.key_prefix == "123"
    assert cfg.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.kafka.commit_interval == 2.5
    assert cfg.ui.theme == "nord"
    assert cfg.ui.refresh_hz == 10.0
    assert cfg.ui.keymap == {"pause": "space"}
    pipeline = cfg.pipelines["orders_sync"]
    assert isinstance(pipeline, models.HttpPipeline)
    assert pipeline.timeout == 5.0
    assert pipeline.headers == {"authorization": "Bearer abc"}
    assert cfg.consumers[0].max_event == 7
    assert cfg.consumers[0].job_type == "async"


def test_env_override_matches_existing_keys_case_insensitively(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[pipelines.Hook]\nkind = "http"\nurl = "https://example.com/"\n'
        'headers = { Authorization = "Bearer old" }\n',
    )
    env = {"KAFKACONSOLE_PIPELINES__HOOK__HEADERS__AUTHORIZATION": "Bearer new"}
    cfg = load_config(path, env=env)
    hook = cfg.pipelines["Hook"]
    assert isinstance(hook, models.HttpPipeline)
    assert hook.headers == {"Authorization": "Bearer new"}


def test_env_override_unknown_key_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    problems = problems_of(path, env={"KAFKACONSOLE_REDIS__URLL": "redis://x"})
    assert [str(problem) for problem in problems] == [
        f"{path}: redis.urll: unknown key (did you mean 'url'?); "
        "set by environment variable KAFKACONSOLE_REDIS__URLL"
    ]


def test_env_override_type_error_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    (problem,) = problems_of(path, env={"KAFKACONSOLE_API__PORT": "http"})
    assert problem.key == "api.port"
    assert problem.message.startswith("expected an integer")
    assert "KAFKACONSOLE_API__PORT" in problem.message


def test_variables_without_double_underscore_are_ignored(tmp_path: Path) -> None:
    env = {"KAFKACONSOLE_API_TOKEN": "x", "KAFKACONSOLE_CONFIG": "y", "KAFKACONSOLE_DEBUG": "1"}
    cfg = load_config(write(tmp_path, MINIMAL), env=env)
    assert cfg.api.token is None


# -- validation messages ----------------------------------------------------------------------


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[kafka]
bootstrap_server = "x:1"
[api]
port = "eighty"
[pipelines.hook]
kind = "http"
url = "ftp://nope"
[[consumers]]
consumer_id = "orders"
kafka_topic = "orders"
pipeline_name = "hook"
connection_id = "c"
max_event = 0
max_time = 60
job_type = "stream"
[[consumers]]
consumer_id = "orders"
kafka_topic = "orders"
pipeline_name = "hok"
connection_id = "c"
max_events = 10
max_time = 60
""",
    )
    problems = {problem.key: problem.message for problem in problems_of(path)}
    assert problems == {
        "kafka.bootstrap_server": "unknown key (did you mean 'bootstrap_servers'?)",
        "api.port": "expected an integer",
        "pipelines.hook.url": "must start with http:// or https://",
        "consumers[0].max_event": "must be greater than 0",
        "consumers[0].job_type": "must be one of: sync, async, batch",
        "consumers[1].max_event": "required key is missing",
        "consumers[1].max_events": "unknown key (did you mean 'max_event'?)",
        "consumers[1].consumer_id": "duplicate consumer_id 'orders' (also consumers[0])",
        "consumers[1].pipeline_name": "no pipeline named 'hok' (did you mean 'hook'?)",
    }


def test_unknown_key_without_a_close_match_has_no_hint(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "[ui]\nzzzzzz = 1\n"))
    assert (problem.key, problem.message) == ("ui.zzzzzz", "unknown key")


def test_pipeline_kind_problems(tmp_path: Path) -> None:
    path = write(tmp_path, '[pipelines.a]\nkind = "spark"\n[pipelines.b]\ntopic = "t"\n')
    expected = f"kind must be one of: {', '.join(PIPELINE_KINDS)}"
    assert [(p.key, p.message) for p in problems_of(path)] == [
        ("pipelines.a.kind", expected),
        ("pipelines.b.kind", expected),
    ]
    assert expected == "kind must be one of: airbyte, airflow, command, http, kafka, python"


def test_pipeline_keys_drop_the_union_tag(tmp_path: Path) -> None:
    path = write(tmp_path, '[pipelines.command]\nkind = "command"\ncommand = "ls"\n')
    assert keys_of(problems_of(path)) == ["pipelines.command.command"]


def test_type_messages_never_quote_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, f'[api]\nport = "{SENTINEL}"\n[ui]\nrefresh_hz = "{SENTINEL}"\n')
    problems = problems_of(path)
    assert [(p.key, p.message) for p in problems] == [
        ("api.port", "expected an integer"),
        ("ui.refresh_hz", "expected a number"),
    ]


def test_config_error_str_lists_all_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "[ui]\nrefresh_hz = 0\n[api]\nport = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).splitlines() == [
        f"{path}: api.port: must be at least 0",
        f"{path}: ui.refresh_hz: must be greater than 0",
    ]


def test_dotted_key() -> None:
    assert dotted_key(("consumers", 0, "max_event")) == "consumers[0].max_event"
    assert dotted_key(("pipelines", "orders.sync", "url")) == 'pipelines."orders.sync".url'
    assert dotted_key(("pipelines", "x", "headers", "X-Api-Key")) == "pipelines.x.headers.X-Api-Key"


def test_loaded_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), env={})
    with pytest.raises(ValidationError):
        cfg.api.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.consumers[0].max_event = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.kafka = cfg.kafka  # type: ignore[misc]


# -- secrets ----------------------------------------------------------------------------------

SECRETS_TOML = """
[kafka]
bootstrap_servers = "${KC_BROKERS}"
sasl_mechanism = "PLAIN"
security_protocol = "SASL_SSL"
sasl_username = "kc"
sasl_password = "kafka-pw-literal"
[redis]
url = "redis://kc:url-pw-literal@cache:6379/0"
password = "${KC_SECRET}"
[api]
token = "${KC_SECRET}-api"
[pipelines.hook]
kind = "http"
url = "https://example.com/hook?token=query-token-literal&x=1"
headers = { Authorization = "Bearer ${KC_WEBHOOK}", X-Api-Key = "apikey-literal", X-Trace = "on" }
[pipelines.ab]
kind = "airbyte"
url = "http://localhost:8000/api/public"
client_id = "kc"
client_secret = "client-secret-literal"
[pipelines.run]
kind = "command"
command = ["tool", "--dsn", "${KC_DSN}"]
env = { DB_PASSWORD = "db-pw-literal", MODE = "fast" }
""" + MINIMAL.replace("[pipelines.orders_sync]", "[pipelines.orders_sync]\ntimeout = 3.0", 1)

SECRETS_ENV = {
    "KC_BROKERS": "broker-from-env:9092",
    "KC_SECRET": SENTINEL,
    "KC_WEBHOOK": "webhook-token-from-env",
    "KC_DSN": "postgres://u:dsn-pw@db/x",
}

LITERAL_SECRETS = [
    "kafka-pw-literal",
    "url-pw-literal",
    "query-token-literal",
    "apikey-literal",
    "client-secret-literal",
    "db-pw-literal",
    SENTINEL,
    "broker-from-env:9092",
    "webhook-token-from-env",
    "dsn-pw",
]


@pytest.fixture
def secret_cfg(tmp_path: Path) -> AppConfig:
    return load_config(write(tmp_path, SECRETS_TOML), env=SECRETS_ENV)


def test_mask_config(secret_cfg: AppConfig) -> None:
    masked = mask_config(secret_cfg)
    text = json.dumps(masked)
    for secret in LITERAL_SECRETS:
        assert secret not in text, secret
    assert masked["kafka"]["bootstrap_servers"] == MASK  # came from ${VAR}
    assert masked["kafka"]["sasl_password"] == MASK
    assert masked["kafka"]["sasl_username"] == "kc"
    assert masked["redis"]["url"] == f"redis://kc:{MASK}@cache:6379/0"
    assert masked["redis"]["password"] == MASK
    assert masked["api"]["token"] == MASK
    hook = masked["pipelines"]["hook"]
    assert hook["url"] == f"https://example.com/hook?token={MASK}&x=1"
    assert hook["headers"] == {"Authorization": MASK, "X-Api-Key": MASK, "X-Trace": "on"}
    assert masked["pipelines"]["ab"]["client_secret"] == MASK
    assert masked["pipelines"]["ab"]["client_id"] == "kc"
    assert masked["pipelines"]["run"]["command"] == ["tool", "--dsn", MASK]
    assert masked["pipelines"]["run"]["env"] == {"DB_PASSWORD": MASK, "MODE": "fast"}
    assert masked["pipelines"]["orders_sync"]["timeout"] == 3.0
    assert masked["consumers"][0]["consumer_id"] == "orders"
    # unset optional secrets stay None, and the config itself is untouched
    assert masked["pipelines"]["ab"]["token"] is None
    assert secret_cfg.redis.password == SENTINEL


def test_secret_values(secret_cfg: AppConfig) -> None:
    values = secret_values(secret_cfg)
    for secret in LITERAL_SECRETS:
        assert secret in values, secret
    assert "Bearer webhook-token-from-env" in values
    assert "" not in values
    assert "fast" not in values
    assert "kc" not in values


def test_mask_text(secret_cfg: AppConfig) -> None:
    line = (
        f"connect failed: password {SENTINEL} rejected; header Bearer webhook-token-from-env; "
        "dsn postgres://u:dsn-pw@db/x; other https://a:b@c.example"
    )
    masked = mask_text(line, secret_cfg)
    for secret in LITERAL_SECRETS:
        assert secret not in masked
    assert "https://a:******@c.example" in masked
    # the longest known secret wins: the whole header value
    assert masked.startswith("connect failed: password ****** rejected; header ******;")
    assert mask_text("nothing secret here", secret_cfg) == "nothing secret here"


def test_mask_config_of_a_config_built_in_code() -> None:
    cfg = AppConfig.model_validate({"redis": {"url": "rediss://:pw@h:1/0", "password": "p"}})
    masked = mask_config(cfg)
    assert masked["redis"] == {
        **masked["redis"],
        "url": f"rediss://:{MASK}@h:1/0",
        "password": MASK,
    }


# -- the CLI ----------------------------------------------------------------------------------


def test_validate_ok(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    result = runner.invoke(app, ["config", "validate", str(path)])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "ok\n", "")
    result = runner.invoke(app, ["config", "validate", "--config", str(path)])
    assert (result.exit_code, result.stdout) == (0, "ok\n")
    result = runner.invoke(app, ["config", "validate"], env={"KAFKACONSOLE_CONFIG": str(path)})
    assert (result.exit_code, result.stdout) == (0, "ok\n")


def test_validate_rejects_two_different_files(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    result = runner.invoke(app, ["config", "validate", str(path), "--config", "other.toml"])
    assert result.exit_code == 2
    assert result.stdout == ""


def test_validate_missing_file(app: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    result = runner.invoke(app, ["config", "validate", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"{path}: (file): not found\n"


def test_help_shows_an_example(app: typer.Typer) -> None:
    for command in ("validate", "show"):
        result = runner.invoke(app, ["config", command, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0
        assert "Example" in result.stdout
        assert f"kafkaconsole config {command}" in result.stdout


def test_show_json_is_effective_and_masked(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, SECRETS_TOML)
    env = {**SECRETS_ENV, "KAFKACONSOLE_API__PORT": "8001"}
    result = runner.invoke(app, ["config", "show", str(path), "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["api"]["port"] == 8001
    assert shown["api"]["token"] == MASK
    assert shown["kafka"]["sasl_password"] == MASK
    assert shown["consumers"][0]["consumer_id"] == "orders"
    for secret in LITERAL_SECRETS:
        assert secret not in result.stdout + result.stderr


def test_show_toml_round_trips(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, SECRETS_TOML)
    original = load_config(path, env=SECRETS_ENV)
    result = runner.invoke(app, ["config", "show", "--config", str(path)], env=SECRETS_ENV)
    assert result.exit_code == 0, result.stderr
    for secret in LITERAL_SECRETS:
        assert secret not in result.stdout
    tomllib.loads(result.stdout)
    shown = write(tmp_path, result.stdout, "shown.toml")
    assert mask_config(load_config(shown, env={})) == mask_config(original)


def test_show_keeps_literal_dollar_brace(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, '[ui]\ntheme = "a$${b}"\n')
    result = runner.invoke(app, ["config", "show", str(path)])
    assert 'theme = "a$${b}"' in result.stdout
    assert load_config(write(tmp_path, result.stdout, "again.toml"), env={}).ui.theme == "a${b}"


def test_show_bad_config_fails_like_validate(app: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 'x'\n")
    result = runner.invoke(app, ["config", "show", str(path), "--json"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"{path}: api.port: expected an integer\n"


# -- sample_config.toml -----------------------------------------------------------------------


def test_sample_config_env_list_is_complete() -> None:
    active = [
        line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        for line in SAMPLE.read_text().splitlines()
    ]
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", "\n".join(active)))
    assert referenced == set(SAMPLE_ENV)


def test_sample_config_loads(app: typer.Typer) -> None:
    cfg = load_config(SAMPLE, env=SAMPLE_ENV)
    kinds = {pipeline.kind for pipeline in cfg.pipelines.values()}
    assert kinds == set(PIPELINE_KINDS)
    used = {cfg.pipeline_for(consumer).kind for consumer in cfg.consumers}
    assert {"command", "python", "http"} <= used
    assert {consumer.job_type for consumer in cfg.consumers} == {"sync", "async", "batch"}

    result = runner.invoke(app, ["config", "validate", str(SAMPLE)], env=SAMPLE_ENV)
    assert (result.exit_code, result.stdout) == (0, "ok\n")
    result = runner.invoke(app, ["config", "show", str(SAMPLE)], env=SAMPLE_ENV)
    assert result.exit_code == 0
    assert SENTINEL not in result.stdout


def test_sample_config_without_env_names_each_missing_variable(app: typer.Typer) -> None:
    result = runner.invoke(app, ["config", "validate", str(SAMPLE)])
    assert result.exit_code == 2
    for name in SAMPLE_ENV:
        assert f"environment variable {name} is not set" in result.stderr


def _sample_blocks() -> list[tuple[str, str]]:
    """(table header, text) for each table of the sample, comments included."""
    blocks: list[tuple[str, str]] = [("", "")]
    for line in SAMPLE.read_text().splitlines():
        header = re.match(r"^\s*(\[\[?[^\]]+\]\]?)\s*$", line)
        if header:
            blocks.append((header.group(1), ""))
        else:
            name, text = blocks[-1]
            blocks[-1] = (name, text + line + "\n")
    return blocks


def _keys_shown(text: str) -> set[str]:
    """Keys written or shown commented out, inline tables included."""
    return set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", text))


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_sample_config_shows_every_key() -> None:
    cfg = load_config(SAMPLE, env=SAMPLE_ENV)
    blocks = _sample_blocks()
    sections: dict[str, set[str]] = {}
    for header, text in blocks:
        sections.setdefault(header, set()).update(_keys_shown(text))
    section_models: list[tuple[str, type[BaseModel]]] = [
        ("kafka", models.KafkaConfig),
        ("redis", models.RedisConfig),
        ("api", models.ApiConfig),
        ("ui", models.UiConfig),
    ]
    for name, model in section_models:
        assert _fields(model) <= sections[f"[{name}]"], name

    by_kind: dict[str, set[str]] = {}
    for header, text in blocks:
        match = re.match(r"^\[pipelines\.([A-Za-z0-9_-]+)(?:\.retry_policy)?\]$", header)
        if match:
            pipeline_kind: str = cfg.pipelines[match.group(1)].kind
            by_kind.setdefault(pipeline_kind, set()).update(_keys_shown(text))
    pipeline_models: dict[str, type[BaseModel]] = {
        "airbyte": models.AirbytePipeline,
        "airflow": models.AirflowPipeline,
        "command": models.CommandPipeline,
        "http": models.HttpPipeline,
        "kafka": models.KafkaPipeline,
        "python": models.PythonPipeline,
    }
    assert set(pipeline_models) == set(PIPELINE_KINDS)
    base = _fields(models.PipelineBase)
    for kind, model in pipeline_models.items():
        assert _fields(model) - base <= by_kind[kind], kind
    all_pipeline_keys = set().union(*by_kind.values())
    assert base | _fields(models.RetryPolicy) <= all_pipeline_keys

    consumer_keys = sections["[[consumers]]"]
    expected = (
        _fields(models.ConsumerConfig) | _fields(models.RetryPolicy) | _fields(models.ErrorHandling)
    )
    assert expected <= consumer_keys


def test_sample_config_mirrors_the_field_docstrings() -> None:
    text = SAMPLE.read_text()
    section_models: list[type[BaseModel]] = [
        models.KafkaConfig,
        models.RedisConfig,
        models.ApiConfig,
        models.UiConfig,
        models.RetryPolicy,
        models.ErrorHandling,
        models.PipelineBase,
        models.CommandPipeline,
        models.PythonPipeline,
        models.HttpPipeline,
        models.AirbytePipeline,
        models.AirflowPipeline,
        models.KafkaPipeline,
        models.ConsumerConfig,
        models.MonitoringConfig,
        models.AlertRule,
    ]
    missing = [
        f"{model.__name__}.{name}"
        for model in section_models
        for name, field in model.model_fields.items()
        if field.description and f"# {field.description}" not in text
    ]
    assert missing == []


# -- boundaries -------------------------------------------------------------------------------


def test_config_package_imports_no_ui_library() -> None:
    code = (
        "import sys, kafkaconsole.config, kafkaconsole.config.loader, kafkaconsole.config.secrets\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_cmd_does_not_import_click_directly() -> None:
    source = (REPO / "kafkaconsole" / "cli" / "config_cmd.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+click\b", source, re.MULTILINE)
