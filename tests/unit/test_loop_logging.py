"""The training log's window means: a metric that only some steps produce is averaged over those steps."""

import torch

from trainer.loop import WindowMeans


def test_window_means_average_each_metric_over_the_steps_that_made_it_then_start_afresh():
    window = WindowMeans()
    window.add({"loss/critic": torch.tensor(1.0), "grad_norm/critic": 2.0})
    window.add({"loss/critic": torch.tensor(3.0), "loss/dmd": torch.tensor(0.5, requires_grad=True)})
    assert window.means() == {"loss/critic": 2.0, "grad_norm/critic": 2.0, "loss/dmd": 0.5}
    assert window.means() == {}
    window.add({"loss/dmd": torch.tensor(4.0)})
    assert window.means() == {"loss/dmd": 4.0}


def test_an_open_window_survives_a_checkpoint_as_plain_numbers():
    import json

    window = WindowMeans()
    window.add({"loss": torch.tensor(0.25), "grad_norm/model": 1.5})
    restored = WindowMeans(json.loads(json.dumps(window.state())))
    for w in (window, restored):
        w.add({"loss": torch.tensor(0.75)})
    assert restored.means() == window.means() == {"loss": 0.5, "grad_norm/model": 1.5}
