"""The PyTorch peer of bench/train-step.ts: the same Llama step on Debian's python3-torch.

Same model (RMSNorm, rotary positions, causal attention, SwiGLU MLP, untied head), same
LoRA (r 8, alpha 16, all seven projections, base frozen), same batch (8 x 64 random tokens,
every position labelled), AdamW (weight decay 0.1) with global-norm clipping at 1, Vaccine
with rho 2 (pass 1: gradient of the loss w.r.t. a zero delta on every layer's attention
output; pass 2: the update under the scaled perturbation). Median of 10 steps after 30 of
warm-up; prints one JSON line. Around each step, a 1024^3 torch.mm on the same threads (the
same OpenBLAS sgemm): the sgemm rate paired with that step, so load that comes and goes on the
shared machine falls on both.

<threads> is the cores the case uses, as OpenBLAS threads under one intra-op thread: the split
of bench/train-step.ts's native-2t. Two intra-op threads over two OpenBLAS threads (torch's
default here: Debian's OpenBLAS takes OMP_NUM_THREADS when OPENBLAS_NUM_THREADS is unset) ran
3-4x slower than one thread, four spinning threads on two cores; two intra-op threads over one
OpenBLAS thread ran as fast as one OpenBLAS thread or slower (bench/README.md).

With the method `ratio`, SFT and Vaccine steps alternate on one model (the first of each round
changing) and it prints Vaccine's step time over SFT's: each round's, so load falls on both.

Usage: /usr/bin/python3 bench/train_step_torch.py <4x128|6x256> <sft|vaccine|ratio> <threads>
"""
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

CONFIGS = {"4x128": (128, 384, 4, 4), "6x256": (256, 768, 6, 8)}
BATCH, TOKENS, VOCAB, RANK, RHO, STEPS, WARMUP = 8, 64, 2048, 8, 2.0, 10, 30  # warm-up as bench/train-step.ts's
# The ratio mode: SFT and Vaccine steps alternating, the first of each round changing.
RATIO_ROUNDS = 20


class Lora(torch.nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(d_out, d_in) * 0.02, requires_grad=False)
        self.a = torch.nn.Parameter(torch.randn(RANK, d_in) / math.sqrt(d_in))
        self.b = torch.nn.Parameter(torch.zeros(d_out, RANK))

    def forward(self, x):
        return F.linear(x, self.w) + F.linear(F.linear(x, self.a), self.b) * 2.0


def rms_norm(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotary(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class Model(torch.nn.Module):
    def __init__(self, d, f, layers, heads):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, d) * 0.02, requires_grad=False)
        names = ["q", "k", "v", "o", "gate", "up", "down"]
        shapes = [(d, d), (d, d), (d, d), (d, d), (d, f), (d, f), (f, d)]
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict({n: Lora(i, o) for n, (i, o) in zip(names, shapes)}) for _ in range(layers)
        )
        self.norms = [(torch.ones(d), torch.ones(d)) for _ in range(layers)]
        self.final_norm = torch.ones(d)
        self.head = torch.nn.Parameter(torch.randn(VOCAB, d) * 0.02, requires_grad=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.outer(torch.arange(TOKENS).float(), inv)
        ang = torch.cat([ang, ang], -1)
        self.cos, self.sin = ang.cos(), ang.sin()
        self.mask = torch.full((TOKENS, TOKENS), -1e9).triu(1)

    def forward(self, ids, deltas):
        b, t = ids.shape
        x = self.embed[ids]
        for layer, (n1, n2), delta in zip(self.layers, self.norms, deltas):
            h = rms_norm(x, n1)
            split = lambda y: y.view(b, t, self.heads, self.hd).transpose(1, 2)
            q = rotary(split(layer["q"](h)), self.cos, self.sin)
            k = rotary(split(layer["k"](h)), self.cos, self.sin)
            v = split(layer["v"](h))
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hd) + self.mask, -1)
            out = layer["o"]((probs @ v).transpose(1, 2).reshape(b, t, -1))
            x = x + out + delta
            h2 = rms_norm(x, n2)
            x = x + layer["down"](F.silu(layer["gate"](h2)) * layer["up"](h2))
        return F.linear(rms_norm(x, self.final_norm), self.head)


def loss_of(model, ids, deltas):
    logits = model(ids, deltas)
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def training_step(model, opt, params, d, layers):
    """One step of SFT or Vaccine on random tokens; returns its loss."""

    def step(method):
        ids = torch.randint(3, VOCAB, (BATCH, TOKENS))
        zeros = [torch.zeros(BATCH, TOKENS, d) for _ in range(layers)]
        if method == "vaccine":
            probes = [z.clone().requires_grad_(True) for z in zeros]
            grads = torch.autograd.grad(loss_of(model, ids, probes), probes)
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            deltas = [g * (RHO / (norm + 1e-7)) for g in grads]
        else:
            deltas = zeros
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model, ids, deltas)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return step


def main():
    config, method, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    if os.environ.get("OPENBLAS_NUM_THREADS") != str(threads):
        sys.exit(f"OPENBLAS_NUM_THREADS must be {threads}: OpenBLAS reads it once, at load")
    torch.manual_seed(0)
    d, f, layers, heads = CONFIGS[config]
    model = Model(d, f, layers, heads)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    step = training_step(model, opt, params, d, layers)
    if method == "ratio":
        return print_ratio(config, threads, step)
    times, cpu_times, losses, rates = [], [], [], []
    a, b, c = torch.rand(1024, 1024) - 0.5, torch.rand(1024, 1024) - 0.5, torch.empty(1024, 1024)

    def sgemm_ms():
        t = time.perf_counter()
        torch.mm(a, b, out=c)  # into the same output each time, as the addon's sgemm
        return (time.perf_counter() - t) * 1000

    for _ in range(WARMUP + STEPS):
        before = sgemm_ms()
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step(method))
        times.append((time.perf_counter() - t0) * 1000)
        cpu_times.append((time.process_time() - c0) * 1000)
        rates.append(2 * 1024**3 / (min(before, sgemm_ms()) / 1000) / 1e9)
    timed = times[WARMUP:]
    print(json.dumps({
        "variant": f"torch-{threads}t", "config": config, "method": method, "threads": threads,
        "backend": f"pytorch {torch.__version__}", "stepMs": statistics.median(timed),
        "cpuMs": statistics.median(cpu_times[WARMUP:]),
        "stepMsAll": timed, "pairedSgemmGflops": rates[WARMUP:],
        "minMs": min(timed), "maxMs": max(timed), "firstLoss": losses[0], "lastLoss": losses[-1],
        "peakRssMb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def print_ratio(config, threads, step):
    """Vaccine's step over SFT's, the two alternating on one model (bench/train-step.ts ratioCase)."""
    rounds = []
    for i in range(WARMUP + RATIO_ROUNDS):
        ms = {}
        for method in (("sft", "vaccine") if i % 2 else ("vaccine", "sft")):
            t0 = time.perf_counter()
            step(method)
            ms[method] = (time.perf_counter() - t0) * 1000
        if i >= WARMUP:
            rounds.append(ms)
    print(json.dumps(ratio_summary(f"torch-{threads}t", config, threads, f"pytorch {torch.__version__}", rounds)))


def ratio_summary(variant, config, threads, backend, rounds):
    sft, vaccine = [r["sft"] for r in rounds], [r["vaccine"] for r in rounds]
    return {
        "variant": variant, "config": config, "threads": threads, "backend": backend, "rounds": len(rounds),
        "sftMs": statistics.median(sft), "vaccineMs": statistics.median(vaccine),
        "ratioOfMedians": statistics.median(vaccine) / statistics.median(sft),
        "ratioMedianOfRounds": statistics.median(r["vaccine"] / r["sft"] for r in rounds),
    }


if __name__ == "__main__":
    main()
