"""DAGs of kafkaconsole's integration tier, loaded by a real Airflow 2 or 3.

``kafkaconsole_it_load`` checks that its conf is a trigger record whose ``idempotency_key``
is the DAG run id, and fails otherwise; ``kafkaconsole_it_fails`` always fails.
"""

from __future__ import annotations

import pendulum

try:  # Airflow 3
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task

RECORD_KEYS = {
    "consumer_id",
    "pipeline_name",
    "connection_id",
    "job_type",
    "window_id",
    "idempotency_key",
    "reason",
    "count",
    "opened_at",
    "closed_at",
    "offsets",
}
START = pendulum.datetime(2024, 1, 1, tz="UTC")


@dag(dag_id="kafkaconsole_it_load", schedule=None, start_date=START, catchup=False)
def kafkaconsole_it_load():
    @task
    def check_record(**context):
        run = context["dag_run"]
        record = run.conf
        missing = RECORD_KEYS - set(record)
        if missing:
            raise ValueError(f"conf is not a trigger record: missing {sorted(missing)}")
        if record["idempotency_key"] != run.run_id:
            raise ValueError(f"run id {run.run_id} is not {record['idempotency_key']}")
        print(f"window {record['window_id']} of {record['consumer_id']}: {record['count']} events")

    check_record()


@dag(dag_id="kafkaconsole_it_fails", schedule=None, start_date=START, catchup=False)
def kafkaconsole_it_fails():
    @task
    def fail():
        raise RuntimeError("this DAG always fails")

    fail()


kafkaconsole_it_load()
kafkaconsole_it_fails()
