"""Session fixtures of the integration tier: a real Airflow 3 and Airflow 2, started once.

Both servers are launched together when the first test needs one (they boot in parallel) and
stopped at the end of the session. Their virtual environments come from
``scripts/integration.sh`` (``KAFKACONSOLE_AIRFLOW3_BIN``, ``KAFKACONSOLE_AIRFLOW2_BIN``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.airflow_server import AirflowServer

BIN_VARIABLES = {3: "KAFKACONSOLE_AIRFLOW3_BIN", 2: "KAFKACONSOLE_AIRFLOW2_BIN"}


def _bin_dir(major: int) -> Path:
    variable = BIN_VARIABLES[major]
    value = os.environ.get(variable)
    if not value:
        pytest.fail(f"{variable} is not set: run the integration tier with scripts/integration.sh")
    return Path(value)


@pytest.fixture(scope="session")
def airflow_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, AirflowServer]]:
    servers = {
        major: AirflowServer(major, _bin_dir(major), tmp_path_factory.mktemp(f"airflow{major}"))
        for major in BIN_VARIABLES
    }
    started: list[AirflowServer] = []
    try:
        for server in servers.values():
            started.append(server.start())
        yield servers
    finally:
        for server in started:
            server.stop()


def _ready(servers: dict[int, AirflowServer], major: int) -> AirflowServer:
    server = servers[major]
    took = server.wait_ready()
    print(f"\nAirflow {major} ready at {server.url} after {took:.0f}s")
    return server


@pytest.fixture(scope="session")
def airflow3(airflow_servers: dict[int, AirflowServer]) -> AirflowServer:
    return _ready(airflow_servers, 3)


@pytest.fixture(scope="session")
def airflow2(airflow_servers: dict[int, AirflowServer]) -> AirflowServer:
    return _ready(airflow_servers, 2)


@pytest.fixture(params=[3, 2], ids=["airflow3", "airflow2"])
def airflow(request: pytest.FixtureRequest) -> AirflowServer:
    server: AirflowServer = request.getfixturevalue(f"airflow{request.param}")
    return server
