"""TextMethod.diversity reuses the evaluation just run on the same network, once; otherwise it decodes afresh."""

from __future__ import annotations

from types import SimpleNamespace

from trainer.text_task import TextMethod


class Counting(TextMethod):
    def __init__(self) -> None:
        self.config = SimpleNamespace(eval_prompts=4)
        self.calls: list[object] = []

    def _evaluate(self, network):
        self.calls.append(network)
        return SimpleNamespace(accuracy={"overall": 0.5}, nfe=8, outputs=[network.answer] * 3 + ["other"])


def test_diversity_reuses_the_fresh_evaluation_once() -> None:
    method, net = Counting(), SimpleNamespace(answer="7")
    assert method.evaluate(net)["overall"] == 0.5
    assert method.diversity(net) == 0.5 and len(method.calls) == 1  # 2 distinct answers of 4, no second decode
    assert method.diversity(net) == 0.5 and len(method.calls) == 2  # later: decoded afresh (weights may have moved)


def test_diversity_of_another_network_is_decoded() -> None:
    method, a, b = Counting(), SimpleNamespace(answer="1"), SimpleNamespace(answer="2")
    method.evaluate(a)
    method.diversity(b)
    assert method.calls == [a, b]
