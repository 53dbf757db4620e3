"""Where the SD-Turbo real-time path's time goes on the GPU (run on the lent machine, writes to $OUT):
host-side Python per call (cProfile), the compiled UNet and decoder alone, and the path with the UNet's
attention projections fused and its activations in channels-last layout."""

import cProfile
import io
import os
import pstats
import statistics
import time

import torch

from bench.layouts import sd_turbo, tiny_autoencoder
from engines.realtime import RealtimeSD

out = os.environ.get("OUT", "/tmp")
device = torch.device("cuda")
torch.manual_seed(0)
pipe = sd_turbo("real", dtype=torch.float16).to(device)
taesd = tiny_autoencoder("real", dtype=torch.float16).to(device)
prompt = "a photograph of an astronaut riding a horse"


def p50(fn, n=100) -> float:
    for i in range(5):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def report(name: str, rt: RealtimeSD, profile: bool = True) -> None:
    rt.generate([prompt], [0])
    total = p50(lambda i: rt.generate([prompt], [i]))
    latents = torch.randn(1, 4, 64, 64, device=device, dtype=torch.float16)
    embeds, _ = rt.embed([prompt], cfg=False)
    t = torch.tensor(999.0, device=device)

    def unet(i):
        torch.compiler.cudagraph_mark_step_begin()
        return rt.unet(latents, t, encoder_hidden_states=embeds, timestep_cond=None, return_dict=False)[0]

    def decode(i):
        torch.compiler.cudagraph_mark_step_begin()
        return rt.decode(latents)

    print(f"{name}: generate p50 {total:.2f} ms; UNet alone {p50(unet):.2f} ms; decode alone {p50(decode):.2f} ms", flush=True)
    if not profile:
        return
    profile = cProfile.Profile()
    profile.enable()
    for i in range(50):
        rt.generate([prompt], [i])
    torch.cuda.synchronize()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
    with open(f"{out}/profile-{name}.txt", "w") as f:
        f.write(text.getvalue())
    print(text.getvalue()[:3500], flush=True)


start = time.perf_counter()
report("baseline", RealtimeSD(pipe, decoder=taesd, compile=True, prompt_cache=16), profile=False)
print(f"baseline compile+measure {time.perf_counter() - start:.0f} s", flush=True)

for variant in os.environ.get("VARIANTS", "qkv_cl,qkv_cl_1x1").split(","):
    import torch._inductor.config as inductor

    if variant == "qkv_cl":
        pipe.unet.fuse_qkv_projections()
        pipe.unet.to(memory_format=torch.channels_last)
    elif variant == "qkv_cl_1x1":
        inductor.conv_1x1_as_mm = True
        inductor.epilogue_fusion = False
    torch._dynamo.reset()
    start = time.perf_counter()
    report(variant, RealtimeSD(pipe, decoder=taesd, compile=True, prompt_cache=16), profile=False)
    print(f"{variant} compile+measure {time.perf_counter() - start:.0f} s", flush=True)
