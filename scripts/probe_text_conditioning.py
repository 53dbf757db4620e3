"""Is the answer to colour binding and spatial relations in the text states the image teacher reads?

The shapes teacher scores near chance on relations (0.25) and binding (0.43) while single attributes are
>= 0.95. This trains small probes on frozen all-MiniLM-L6-v2 outputs (what the UNet's cross-attention
sees) to read, from held-out captions:
- binding: the colour of the first object's shape (one of the two colours the caption names);
- relation: the colour of the object that is left of (or above) the other;
- mentioned (a control the probe must pass): which of two colours the caption names at all.
Chance is 0.5 for each. A probe over the pooled vector alone, and an attention probe over the token
states (one learned query, as one cross-attention head reads them). High accuracy from the token states
means the text side carries the answer and the teacher fails to use it; near chance means it does not.

    PYTHONPATH=. python scripts/probe_text_conditioning.py [--captions 2000] [--epochs 15] [--layers -1 0]

Session 6 (2000 captions, 15 epochs, CPU): the control passes (>= 0.97 everywhere) but binding and relation
stay at chance (0.47-0.54) for every probe, from the last layer and equally from layer 0 (the word and
position embeddings, where the answer is certainly present in word order). So at this size the probes are
too weak to decide the question: a readout that solves binding has to be learned from far more examples
than a simple attention probe gets here. Inconclusive; a fair test needs ~50k captions (a GPU run).

Session 8 settled it (18 k captions, 15 epochs, CPU; a 2-block transformer over the token states and
one attention readout per asked shape): colour of the asked shape 1.00 and its relation 1.00 from the
last layer, with or without learned token positions; after 6 epochs both were still at chance. The
answer is in the states; it takes ~1000 supervised steps to learn to read it.
scripts/pretrain_text_refiner.py trains the teacher's own refiner that way.
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from engines.text_encoder import TextEncoder
from trainer.worlds import shapes


def labelled(rng: random.Random, task: str) -> tuple[str, int, tuple[str, str], str]:
    """(caption, index of the answer among the two candidate colours, the candidates in random order, the
    shape asked about). binding: which colour is the asked shape's; relation: which colour is left/above."""
    category = "color_attr" if task == "binding" else "position"
    condition = shapes._condition(rng, category)
    a, b = condition.specs
    if task == "mentioned":  # a control the probe must solve: which candidate colour does the caption name at all
        other = rng.choice([c for c in shapes.COLOR_NAMES if c not in (a.color, b.color)])
        candidates = [a.color, other]
        rng.shuffle(candidates)
        return shapes.caption_for(condition, rng), candidates.index(a.color), tuple(candidates), ""
    if task == "binding":
        asked = rng.choice((a, b))
        answer, shape = asked.color, asked.shape
    else:
        answer, shape = (a.color if condition.relation in ("left_of", "above") else b.color), ""
    candidates = [a.color, b.color]
    rng.shuffle(candidates)
    return shapes.caption_for(condition, rng), candidates.index(answer), tuple(candidates), shape


@torch.no_grad()
def features(encoder: TextEncoder, captions: list[str], layer: int):
    """(states, pooled, mask) of MiniLM's hidden layer `layer` (-1: the last, what the teacher reads; 0: the
    word + position embeddings, before any attention), masked and mean-pooled as the engine does."""
    from engines.text_encoder import pool

    out = []
    for i in range(0, len(captions), 256):
        tokens = encoder.tokenize(captions[i : i + 256])
        hidden = encoder.model(**tokens, output_hidden_states=True).hidden_states[layer].float()
        mask = tokens["attention_mask"].bool()
        out.append((*pool(hidden, mask), mask))
    return tuple(torch.cat(column) for column in zip(*out))


class AttentionProbe(torch.nn.Module):
    """A query (learned, plus the asked shape's embedding) attends over the token states; the read vector
    scores each candidate colour (embedded by the same encoder). Pooled-only: the pooled vector and the
    asked shape replace the read."""

    def __init__(self, dim: int, pooled_only: bool, refiner_layers: int = 0) -> None:
        super().__init__()
        self.pooled_only = pooled_only
        # optional trained self-attention over the tokens first (as a text refiner in front of the UNet would be)
        layer = torch.nn.TransformerEncoderLayer(dim, 6, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.refiner = torch.nn.TransformerEncoder(layer, refiner_layers) if refiner_layers else None
        self.query = torch.nn.Parameter(torch.randn(dim) / dim**0.5)
        self.key = torch.nn.Linear(dim, dim)
        self.asked = torch.nn.Linear(dim, dim)
        self.read = torch.nn.Sequential(torch.nn.Linear(2 * dim, dim), torch.nn.GELU(), torch.nn.Linear(dim, dim))

    def forward(self, states, pooled, mask, candidates, asked):  # candidates: (B, 2, D); asked: (B, D)
        if self.pooled_only:
            summary = pooled
        else:
            if self.refiner is not None:
                states = self.refiner(states, src_key_padding_mask=~mask.bool())
            query = self.query + self.asked(asked)  # (B, D)
            scores = (self.key(states) * query.unsqueeze(1)).sum(-1) / states.shape[-1] ** 0.5
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
            summary = (scores.softmax(-1).unsqueeze(-1) * states).sum(1)
        return (self.read(torch.cat([summary, asked], -1)).unsqueeze(1) * candidates).sum(-1)  # (B, 2) logits


PROBES = {"pooled": (True, 0), "token_states": (False, 0), "refined_2_layers": (False, 2)}


def run(task: str, encoder: TextEncoder, colour_vectors: dict, n: int, epochs: int, seed: int, layer: int) -> dict:
    rng = random.Random(seed)
    rows = [labelled(rng, task) for _ in range(n)]
    states, pooled, mask = features(encoder, [r[0] for r in rows], layer)
    labels = torch.tensor([r[1] for r in rows])
    candidates = torch.stack([torch.stack([colour_vectors[c] for c in r[2]]) for r in rows])
    asked = torch.stack([colour_vectors.get(r[3], torch.zeros_like(candidates[0, 0])) for r in rows])
    split = int(0.8 * n)
    result = {}
    for name, (pooled_only, refiner_layers) in PROBES.items():
        torch.manual_seed(seed)
        probe = AttentionProbe(states.shape[-1], pooled_only, refiner_layers)
        optimiser = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-4)
        for _ in range(epochs):
            order = torch.randperm(split)
            for i in range(0, split, 128):
                idx = order[i : i + 128]
                logits = probe(states[idx], pooled[idx], mask[idx], candidates[idx], asked[idx])
                loss = torch.nn.functional.cross_entropy(logits, labels[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            held = slice(split, n)
            predicted = probe(states[held], pooled[held], mask[held], candidates[held], asked[held]).argmax(-1)
        result[name] = round(float((predicted == labels[held]).float().mean()), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, nargs="+", default=[-1, 0], help="MiniLM hidden layers to probe (0: embeddings)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    encoder = TextEncoder()
    names = list(shapes.COLOR_NAMES) + list(shapes.SHAPE_NAMES)  # candidate colours and asked shapes
    colour_vectors = dict(zip(names, encoder.encode(names).pooled))
    tasks = ("mentioned", "binding", "relation")
    report = {}
    for layer in args.layers:
        name = "last layer (what the teacher reads)" if layer == -1 else f"hidden layer {layer}"
        report[name] = {task: run(task, encoder, colour_vectors, args.captions, args.epochs, args.seed, layer) for task in tasks}
        print(json.dumps({name: report[name]}), flush=True)
    report["chance"] = 0.5
    report["held_out_captions"] = args.captions - int(0.8 * args.captions)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
