"""The MLX thread's waiting for a draft (runner/serve/model_draft.py MlxWork): work submitted for that thread while
it waits runs at once on it, so two runners drafting for each other's requests do not wait for each other."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from services.worker.runner.serve.model_draft import MlxWork


def test_a_job_submitted_while_the_thread_waits_runs_on_it_and_can_answer_the_wait() -> None:
    mlx = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    work = MlxWork(mlx)
    answer: concurrent.futures.Future = concurrent.futures.Future()  # what the other runner would send back
    ran_on: list[str] = []

    def other_runners_proposal() -> str:  # it answers only once its own proposal (this job) was served
        ran_on.append(threading.current_thread().name)
        answer.set_result("drafts")
        return "served"

    def waiting_cycle() -> str:
        threading.Timer(0.05, lambda: served.append(work.submit(other_runners_proposal))).start()
        return work.wait(answer, timeout=5.0)

    served: list[concurrent.futures.Future] = []
    mlx_name = mlx.submit(lambda: threading.current_thread().name).result()
    assert mlx.submit(waiting_cycle).result(10) == "drafts"
    assert served[0].result(1) == "served" and ran_on == [mlx_name]
    mlx.shutdown()


def test_the_wait_times_out_and_a_failing_job_fails_its_submitter() -> None:
    mlx = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    work = MlxWork(mlx)
    never: concurrent.futures.Future = concurrent.futures.Future()
    with pytest.raises(concurrent.futures.TimeoutError):
        mlx.submit(work.wait, never, 0.1).result(5)
    failing = work.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    mlx.shutdown()
