"""engines/graphs.py: every CUDA-graph call runs on one thread of the process, with the caller's grad mode."""

import threading

import pytest
import torch

from engines.graphs import THREAD_NAME, graph_worker, is_graph_thread, on_graph_thread


def where() -> str:
    return threading.current_thread().name


def test_calls_run_on_the_one_graph_thread_from_any_thread():
    names = []
    threads = [threading.Thread(target=lambda: names.append(on_graph_thread(where))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names.append(on_graph_thread(where))
    assert len(set(names)) == 1 and names[0].startswith(THREAD_NAME)
    assert graph_worker() is graph_worker() and not is_graph_thread()


def test_a_call_from_the_graph_thread_runs_in_place_not_deadlocked():
    assert on_graph_thread(lambda: (is_graph_thread(), on_graph_thread(where))) == (True, on_graph_thread(where))


def test_the_callers_grad_and_inference_modes_go_with_the_call():
    x = torch.ones(2, requires_grad=True)
    with torch.no_grad():
        assert on_graph_thread(lambda: (x * 2).requires_grad) is False
    assert on_graph_thread(lambda: (x * 2).requires_grad) is True
    with torch.inference_mode():
        assert on_graph_thread(torch.is_inference_mode_enabled) is True
    assert on_graph_thread(torch.is_inference_mode_enabled) is False


def test_exceptions_come_back_to_the_caller():
    def fail():
        raise ValueError("bad chunk")

    with pytest.raises(ValueError, match="bad chunk"):
        on_graph_thread(fail)
    assert on_graph_thread(lambda: 3) == 3  # the thread survives
