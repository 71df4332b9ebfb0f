"""Answer Airflow's human-in-the-loop requests from a test, through the real REST endpoint.

``dag.test()`` runs in the test's main thread and waits forever at a task in ``awaiting_input``; a
:class:`Responder` thread polls the metadata database for such a task of its DAG, reads the request
(``GET .../hitlDetails``) and answers it (``PATCH .../hitlDetails``) through an in-process client of
Airflow's real API app, as the Required Actions page does. Every test using it needs a pytest timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: the request a responder saw: run id, task id, subject, body, and the PATCH's HTTP status
Asked = dict[str, Any]


class Responder(threading.Thread):
    """Answer every request of ``dag_id`` with ``answer`` ("Approve" / "Reject"), or with ``act(ti)``
    (a callable doing something else, e.g. letting the request time out) when given."""

    def __init__(
        self, client: Any, dag_id: str, answer: str = "Approve", act: Callable[[Any], None] | None = None
    ) -> None:
        super().__init__(daemon=True, name=f"hitl-responder-{dag_id}")
        self.client = client
        self.dag_id = dag_id
        self.answer = answer
        self.act = act
        self.asked: list[Asked] = []
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                ti = self._waiting()
                if ti is not None:
                    self._respond(ti)
                time.sleep(0.3)
        except BaseException as exc:  # shown by the test, which would otherwise only time out
            self.errors.append(exc)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def _waiting(self) -> Any:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as s:
            ti = (
                s.query(TaskInstance)
                .filter(TaskInstance.dag_id == self.dag_id, TaskInstance.state == "awaiting_input")
                .first()
            )
            if ti is not None:
                s.expunge(ti)
            return ti

    def _respond(self, ti: Any) -> None:
        url = (
            f"/api/v2/dags/{self.dag_id}/dagRuns/{ti.run_id}/taskInstances/{ti.task_id}/{ti.map_index}"
            "/hitlDetails"
        )
        detail = self.client.get(url)
        detail.raise_for_status()
        seen = {"run_id": ti.run_id, "task_id": ti.task_id, **detail.json()}
        if any(a["run_id"] == ti.run_id and a["task_id"] == ti.task_id for a in self.asked):
            return  # answered already; the task has not resumed yet
        if self.act is not None:
            self.act(ti)
            seen["status"] = None
        else:
            answered = self.client.patch(url, json={"chosen_options": [self.answer], "params_input": {}})
            seen["status"] = answered.status_code
        self.asked.append(seen)


@contextmanager
def responding(
    client: Any, dag_id: str, answer: str = "Approve", act: Callable[[Any], None] | None = None
) -> Iterator[Responder]:
    """A running :class:`Responder` for the block; stopped (and its errors raised) after it."""
    responder = Responder(client, dag_id, answer, act)
    responder.start()
    try:
        yield responder
    finally:
        responder.stop()
    if responder.errors:
        raise responder.errors[0]
