"""The one training loop. Methods compute losses; this owns everything else.

Accelerate (mixed precision, devices, `accelerate launch` for many GPUs), gradient accumulation,
clipping, EMA, exact resume, JSONL metrics, sample grids, judged evaluation, graceful stop, export.
Every step draws its data and noise from (seed, rank, step), so a resumed run repeats exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
import yaml

from engines.devices import pick_device
from engines.text_encoder import TextEncoder
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig, to_dict
from trainer.guard import CollapseGuard, TrainingCollapsed
from trainer.methods import method_class
from trainer.networks import enable_gradient_checkpointing
from trainer.stages import keep_parent_card


def step_progress(config: TrainConfig, step: int) -> float:
    """How far past warm-up the decay is by steps alone, in [0, 1]."""
    return min(1.0, max(0, step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))


def lr_at(config: TrainConfig, step: int, time_progress: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio (or constant).

    A pure function of step, unless `time_progress` (the share of a time budget spent, lr_clock "time") is further
    along than the steps: then the decay follows the clock, so a run its budget stops still ends at the floor.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    progress = max(step_progress(config, step), min(1.0, time_progress))
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN/inf: training stopped before the bad update."""


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 9_176 + step) % (2**63 - 1)


class StopFlag:
    """Set by SIGTERM/SIGINT (or a caller): the loop saves a checkpoint and returns."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self, *_args) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    @contextlib.contextmanager
    def on_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.set) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class StepBatches:
    """Map-style dataset over (step, micro) from `start`: item k is the batch of step
    start + k // accum, micro-batch k % accum, made by `make(step, rank, micro)`."""

    def __init__(self, make, rank: int, start: int, stop: int, accum: int) -> None:
        self.make, self.rank, self.start, self.accum = make, rank, start, accum
        self.length = max(0, stop - start) * accum

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> dict:
        return self.make(self.start + k // self.accum, self.rank, k % self.accum)


class WindowMeans:
    """Each logged metric averaged over the steps since the last log line. A single step's loss says
    little where every step draws its own noise level or step count (Self-Forcing's ODE stage logged
    0.0035 -> 0.0187 from three lone steps). Sums stay on the device until read, so adding costs no sync;
    a metric only some steps produce (a generator loss every third step) is averaged over those steps.
    A checkpoint keeps the open window (`state`), so a run resumed mid-window logs what an unbroken one would."""

    def __init__(self, state: dict | None = None) -> None:
        self.sums: dict[str, torch.Tensor | float] = dict((state or {}).get("sums", {}))
        self.counts: dict[str, int] = dict((state or {}).get("counts", {}))

    def state(self) -> dict:
        """The open window as JSON-ready numbers (float32 sums stay exact as Python floats)."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts)}

    def add(self, metrics: dict) -> None:
        for key, value in metrics.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        """The window's means, and a fresh window."""
        out = {key: float(total) / self.counts[key] for key, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return out


def _trim_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines from steps after the checkpoint: they will be redone."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def train(config: TrainConfig, stop: StopFlag | None = None, text_encoder: TextEncoder | None = None, on_step=None) -> dict:
    """Run (or resume) training; returns a summary with the exported model directory.

    `on_step(step)` is called after each optimiser step (progress displays, tests that stop early).
    """
    from accelerate import Accelerator

    stop = stop if stop is not None else StopFlag()
    device = pick_device(config.device)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=device.type == "cpu")
    device, rank = accelerator.device, accelerator.process_index
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    if accelerator.is_main_process:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        keep_parent_card(config.init_from, run_dir)  # the export reports its earlier stages from this copy
    log_path = run_dir / "metrics.jsonl"

    cls = method_class(config.method)
    if text_encoder is None and getattr(cls, "uses_text_encoder", True):  # text LMs bring their own tokenizer
        text_encoder = TextEncoder(config.text_encoder, device=device, max_tokens=config.max_tokens)
    with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed alone
        torch.manual_seed(config.seed)
        method = cls(config, device, text_encoder)
    networks: dict[str, torch.nn.Module] = method.networks
    ema = {name: copy.deepcopy(networks[name]).requires_grad_(False).eval() for name in method.ema_roles}
    if hasattr(method, "attach_ema"):  # optional hook (trainer/methods/__init__.py): the same networks the
        method.attach_ema(ema)  # checkpoints hold, so a resumed run's targets are exactly the killed run's
    optimizers = {
        name: torch.optim.AdamW(
            [p for p in net.parameters() if p.requires_grad],
            lr=config.lr,
            betas=(0.9, config.adam_beta2),
            weight_decay=config.weight_decay,
        )
        for name, net in networks.items()
    }

    lr_scales: dict[str, float] = getattr(method, "lr_scales", {})  # e.g. a critic learning faster than its generator
    start_step, images_seen, elapsed_before = 0, 0, 0.0
    start_progress = None  # lr_clock "time": where the decay stood when this process began
    window = WindowMeans()  # the metrics since the last log line
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        state = ckpt.load_state(latest)
        for name, net in networks.items():
            ckpt.load_weights(latest, name, net)
        for name, net in ema.items():
            ckpt.load_weights(latest, f"ema-{name}", net)
        for name, opt in optimizers.items():
            ckpt.load_optimizer(latest, name, opt)
        start_step, images_seen, elapsed_before = state["step"], state["images_seen"], state["elapsed_seconds"]
        start_progress = state.get("lr_progress")
        window = WindowMeans(state.get("log_window"))  # older checkpoints have none: the window starts afresh
        if accelerator.is_main_process:
            _trim_log(log_path, start_step)
            print(f"resumed from {latest} at step {start_step}", flush=True)

    if device.type == "cuda":
        # Small convolutions are slow in NCHW; cuDNN picks its fastest kernels for our fixed shapes.
        torch.backends.cudnn.benchmark = True
        for net in [*networks.values(), *ema.values()]:
            net.to(memory_format=torch.channels_last)
    if config.gradient_checkpointing:
        for name, net in networks.items():
            enable_gradient_checkpointing(net, name)
    for name in networks:
        networks[name], optimizers[name] = accelerator.prepare(networks[name], optimizers[name])
    for net in ema.values():
        net.to(device)
    if config.compile:
        for name in networks:
            networks[name] = torch.compile(networks[name])

    def unwrapped(name: str):
        return accelerator.unwrap_model(networks[name], keep_torch_compile=False)

    def save(step: int) -> Path | None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return None
        parts = {name: unwrapped(name) for name in networks} | {f"ema-{name}": net for name, net in ema.items()}
        meta = {"images_seen": images_seen, "elapsed_seconds": elapsed_before + time.perf_counter() - started}
        meta["log_window"] = window.state()
        meta["lr_progress"] = progress
        return ckpt.save_checkpoint(run_dir, step, parts, optimizers, meta, keep=config.keep_checkpoints, protect=last_good)

    def log(record: dict) -> None:
        if accelerator.is_main_process:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    from torch.utils.data import DataLoader

    loader = DataLoader(
        StepBatches(method.data_source(), rank, start_step, config.max_steps, config.grad_accum),
        batch_size=None,
        num_workers=config.num_workers,
        prefetch_factor=4 if config.num_workers else None,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)

    guard = None
    if config.collapse_guard and method.role == "student":
        guard = CollapseGuard(config.guard_diversity_ratio, config.guard_judge_drop)
    last_good: Path | None = None

    def run_eval(at_step: int) -> dict[str, float]:
        network = ema[method.ema_roles[0]]
        scores = method.evaluate(network)
        record = {"step": at_step, **method.eval_settings()}
        record |= {f"eval/{k}": v for k, v in scores.items()}
        if guard is not None:
            record["eval/diversity"] = method.diversity(network)
        log(record)
        print(f"eval at step {at_step}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
        if guard is not None:
            verdict = guard.check(at_step, scores["overall"], record["eval/diversity"])
            if verdict:
                raise TrainingCollapsed(
                    f"{verdict}. Stopped; the last good checkpoint is {last_good or 'none (collapsed at the first evaluation)'}"
                    " — resume from it with a lower lr, more critic updates or a GAN weight."
                )
        return scores

    def budget_spent() -> float:
        """The share of this process's time budget used, read from the main process's clock on every rank: ranks
        that each read their own would stop at different steps (a deadlock under DDP) and step with different lrs."""
        if not config.max_minutes:
            return 0.0
        spent = (time.perf_counter() - started) / (config.max_minutes * 60)
        if accelerator.num_processes == 1:
            return spent
        from accelerate.utils import broadcast

        return float(broadcast(torch.tensor([spent], device=device, dtype=torch.float64), from_process=0))

    if start_progress is None:
        start_progress = step_progress(config, start_step)
    progress = start_progress
    started = time.perf_counter()
    step = start_step
    budget_reached = False
    window_start, window_images = time.perf_counter(), 0
    with stop.on_signals():
        while step < config.max_steps and not stop:
            spent = budget_spent()
            if spent >= 1.0:
                print(f"time budget of {config.max_minutes} min reached at step {step}", flush=True)
                budget_reached = True
                break
            generator = torch.Generator(device=device).manual_seed(step_seed(config.seed, rank, step))
            # lr_clock "time": the budget left to this process carries the decay from where it stood to the end
            time_progress = start_progress + (1 - start_progress) * spent if config.lr_clock == "time" else 0.0
            lr = lr_at(config, step, time_progress)
            progress = max(step_progress(config, step), time_progress)  # the decay's place, kept in checkpoints
            for name, opt in optimizers.items():
                for group in opt.param_groups:
                    group["lr"] = lr * lr_scales.get(name, 1.0)
            totals: dict[str, torch.Tensor] = {}
            micro_batches = [next(batches) for _ in range(config.grad_accum)]
            grad_norms = {}
            for phase in method.phases(step):
                # Each phase updates one network on its own fresh graph, so a loss that flows through
                # another network (a GAN generator loss through the critic) never leaks into its update.
                for opt in optimizers.values():
                    opt.zero_grad(set_to_none=True)
                net = networks[phase]
                for micro, batch in enumerate(micro_batches):
                    sync = micro == config.grad_accum - 1
                    with accelerator.no_sync(net) if not sync else contextlib.nullcontext():
                        with accelerator.autocast():
                            loss, metrics = method.loss(phase, networks, batch, generator)
                        accelerator.backward(loss / config.grad_accum)
                    for key, value in metrics.items():
                        totals[key] = totals.get(key, 0) + value / config.grad_accum
                grad_norms[phase] = accelerator.clip_grad_norm_(net.parameters(), config.grad_clip)
                if not torch.isfinite(grad_norms[phase]):
                    latest = ckpt.latest_checkpoint(run_dir)
                    raise TrainingDiverged(
                        f"the {phase!r} loss or its gradients became NaN/inf at step {step + 1}; weights were not "
                        f"updated. Last good checkpoint: {latest or 'none yet'}. Lower lr or grad_clip, or check "
                        "the teacher."
                    )
                optimizers[phase].step()
                window.add({f"grad_norm/{phase}": grad_norms[phase]})
                if phase in ema:
                    decay = min(config.ema_decay, (1 + step) / (10 + step))
                    with torch.no_grad():
                        source = [p.detach() for p in unwrapped(phase).parameters()]
                        torch._foreach_lerp_(list(ema[phase].parameters()), source, 1 - decay)
            window.add(totals)
            step += 1
            if on_step is not None:
                on_step(step)
            images_seen += config.batch_size * config.grad_accum * accelerator.num_processes
            window_images += config.batch_size * config.grad_accum * accelerator.num_processes

            if step % config.log_every == 0 or step == config.max_steps:
                now = time.perf_counter()
                record = {
                    "step": step,
                    "lr": lr,
                    "images_seen": images_seen,
                    "images_per_s": window_images / max(now - window_start, 1e-9),
                    "elapsed_s": elapsed_before + now - started,
                }
                record |= window.means()
                log(record)
                if accelerator.is_main_process:
                    eta = (config.max_steps - step) * (now - window_start) / max(1, config.log_every)
                    losses = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss"))
                    print(
                        f"step {step}/{config.max_steps} {losses} lr {lr:.2e} "
                        f"{record['images_per_s']:.0f} img/s eta {eta / 60:.1f} min",
                        flush=True,
                    )
                window_start, window_images = time.perf_counter(), 0
            if accelerator.is_main_process and step % config.sample_every == 0:
                preview = method.preview(ema[method.ema_roles[0]])  # a sample grid (image) or rendered text
                preview.save(run_dir / "samples" / f"step-{step:08d}.png")
                preview.save(run_dir / "samples" / "latest.png")
            if accelerator.is_main_process and step % config.eval_every == 0:
                run_eval(step)
                if guard is not None:  # healthy: keep this state as the one to fall back to
                    last_good = save(step)
            if step % config.checkpoint_every == 0 and step < config.max_steps:
                save(step)

    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:  # prefetching workers would otherwise outlive a run stopped early
        shutdown()
    final_ckpt = save(step)
    finished = step >= config.max_steps or budget_reached  # a spent time budget also ends the run
    summary = {
        "step": step,
        "finished": finished,
        "checkpoint": str(final_ckpt) if final_ckpt else None,
        "elapsed_seconds": elapsed_before + time.perf_counter() - started,
        "images_seen": images_seen,
    }
    if finished and accelerator.is_main_process:
        summary["model"] = str(method.export(ema[method.ema_roles[0]], summary, run_eval(step)))
    return summary
