"""Verification latency of the cloud target: eager transformers vs static cache (+ CUDA graphs).

Builds one model (a named random-weight shape from models/shapes.py, or a model folder /
GGUF file) and serves it through realrun.cloud.torch_target.TorchTarget in each mode, sharing the
weights. Per mode and token count n (forward positions: the pending token + n - 1 random
drafts), each of `--warmup` + `--reps` verifications runs on a fresh session whose cache holds
exactly `--context` tokens (the prefill is not timed); the time is the server's
(`VerifyResult.target_ms`: the device is synchronised before the clock starts, and reading the
argmax back waits for the forward). Static mode's n_ctx is context + the largest n: its
attention reads every slot of the static cache, whatever the context, as a server would.

The bound is the issue's: the bytes of weights one forward reads (all parameters but the input
embedding table, of which it reads n rows, unless tied to the LM head) / the device's memory
bandwidth, measured with a large device-to-device copy (read + write bytes / time) unless
`--bandwidth-gbs` is given. The KV cache read (printed) is left out of the bound.

GPU (the issue's measurement):
  python benchmarks/bench_target_verify.py --shape Llama-2-7B --device cuda \\
      --tokens 1,2,4,8,16,32 --context 512
CPU check (small shape, numbers are the CPU's, not a serving GPU's):
  python benchmarks/bench_target_verify.py --shape TinyLlama-1.1B --device cpu --context 128
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from realrun.cloud.torch_target import MODES, TorchTarget, load_model, torch_device, torch_dtype
from simulator.errors import ConfigError

SEED = 1234
COPY_REPS = 20


def parse_counts(text: str) -> tuple[int, ...]:
    """`--tokens`: comma-separated distinct integers >= 1."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError("--tokens", "", f"expected integers like 1,2,4 (got {text!r})") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise ConfigError("--tokens", "", f"expected distinct integers >= 1 (got {text!r})")
    return values


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: Any) -> float:
    """Bytes/s of a large device copy (each byte read once and written once)."""
    import torch

    size = 1 << 30 if device.type == "cuda" else 1 << 28
    if device.type == "cuda":
        size = min(size, torch.cuda.mem_get_info(device)[0] // 4)
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(COPY_REPS):
        dst.copy_(src)
    sync(device)
    elapsed = time.perf_counter() - start
    del src, dst
    return 2 * size * COPY_REPS / elapsed


def weight_bytes(model: Any) -> tuple[int, int]:
    """(bytes of all weights, bytes one forward reads: the untied input embeddings excluded)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    return total, total - (0 if tied else embed.numel() * embed.element_size())


def kv_bytes_per_token(model: Any) -> int:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element


def time_mode(target: TorchTarget, counts: tuple[int, ...], args: argparse.Namespace) -> dict:
    """{n: (median ms, IQR ms)} for one target, each verification on a fresh session."""
    rng = random.Random(SEED)
    vocab = target.n_vocab
    results = {}
    for n in counts:
        times = []
        for i in range(args.warmup + args.reps):
            sid, _ = target.open([rng.randrange(vocab) for _ in range(args.context + 1)])
            target.upload(sid, [rng.randrange(vocab) for _ in range(n - 1)], None)
            result = target.verify(sid)
            target.drop(sid)
            if i >= args.warmup:
                times.append(result.target_ms)
        q25, q50, q75 = np.percentile(times, [25, 50, 75])
        results[n] = (float(q50), float(q75 - q25))
        print(f"  {target.mode}: {n:>3} token(s): median {q50:.3f} ms", file=sys.stderr)
    return results


def run(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    counts = parse_counts(args.tokens)
    modes = tuple(m.strip() for m in args.modes.split(","))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError("--modes", "", f"allowed: {', '.join(MODES)} (got {args.modes!r})")
    if args.context < 1 or args.reps < 1 or args.warmup < 0:
        raise ConfigError("--context/--reps/--warmup", "", "need context >= 1, reps >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch_device(args.device)
    start = time.perf_counter()
    model, name = load_model(args.shape, device, torch_dtype(args.dtype, device))
    load_s = time.perf_counter() - start
    n_ctx = args.context + max(counts)
    total, read = weight_bytes(model)
    if args.bandwidth_gbs:
        bandwidth, how = args.bandwidth_gbs * 1e9, "given"
    else:
        bandwidth, how = measure_bandwidth(device), f"measured: {COPY_REPS} device copies"
    bound_ms = 1e3 * read / bandwidth
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{platform.machine()} CPU"
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    header = [
        f"{name} on {device} ({device_name}), {dtype}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
        + (f", {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""),
        f"weights {total / 1e9:.3f} GB, {read / 1e9:.3f} GB read per forward; KV cache "
        f"{kv_bytes_per_token(model) * args.context / 1e6:.1f} MB at context {args.context}",
        f"bandwidth {bandwidth / 1e9:.1f} GB/s ({how}) -> weight-read bound {bound_ms:.3f} ms",
        f"model built in {load_s:.1f} s; {args.reps} verifications per point after "
        f"{args.warmup} warm-up, each at context {args.context}",
    ]
    timings: dict[str, dict] = {}
    setup_s: dict[str, float] = {}
    compiled: dict[str, str | None] = {}
    for mode in modes:
        start = time.perf_counter()
        compile_mode = None if args.no_compile else "auto"
        target = TorchTarget(
            model,
            mode=mode,
            n_ctx=n_ctx,
            max_verify=max(max(counts) - 1, 1),
            compile_mode=compile_mode if mode == "static" else None,
            compile_backend=args.compile_backend,
            fullgraph=not args.no_fullgraph,
        )
        setup_s[mode] = time.perf_counter() - start
        compiled[mode] = None
        if target.compile_mode:
            inductor = args.compile_backend == "inductor"
            compiled[mode] = args.compile_backend + (f" {target.compile_mode}" if inductor else "")
        print(
            f"{mode}: ready in {setup_s[mode]:.1f} s (compile: {compiled[mode]}, "
            f"buckets {list(target.buckets) or 'exact'})",
            file=sys.stderr,
        )
        timings[mode] = time_mode(target, counts, args)
        target.close()
    header += [
        f"{m}: ready in {setup_s[m]:.1f} s (model shared; compile: {compiled[m] or 'none'})"
        for m in modes
    ]
    return {
        "header": header,
        "model": name,
        "device": str(device),
        "device_name": device_name,
        "dtype": dtype,
        "weights_bytes": total,
        "read_bytes": read,
        "bandwidth_bytes_per_s": bandwidth,
        "bandwidth_source": how,
        "bound_ms": bound_ms,
        "context": args.context,
        "setup_s": setup_s,
        "timings": {m: {str(n): v for n, v in t.items()} for m, t in timings.items()},
        "compile_mode": compiled,
    }


def table(report: dict) -> list[str]:
    """Side by side: per token count, each mode's median ms and its ratio to the bound."""
    modes = list(report["timings"])
    bound = report["bound_ms"]
    head = f"{'tokens':>6}" + "".join(f" {m + ' ms':>11} {'IQR':>7} {'x bound':>8}" for m in modes)
    if len(modes) == 2:
        head += f" {modes[0] + '/' + modes[1]:>13}"
    lines = [*report["header"], head]
    first = report["timings"][modes[0]]
    for n in first:
        row = f"{n:>6}"
        for m in modes:
            median, iqr = report["timings"][m][n][:2]
            row += f" {median:>11.3f} {iqr:>7.3f} {median / bound:>8.2f}"
        if len(modes) == 2:
            row += f" {first[n][0] / report['timings'][modes[1]][n][0]:>13.2f}"
        lines.append(row)
    for m in modes:
        within = [v[0] / bound for n, v in report["timings"][m].items() if int(n) <= 16]
        if within:
            lines.append(
                f"{m}: worst ratio to the bound for <= 16 tokens: {max(within):.2f} "
                f"({'within' if max(within) <= 2 else 'NOT within'} the issue's 2x goal)"
            )
    lines.append("(median and IQR of the verification times, ms; x bound = median / bound)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="Llama-2-7B", help="named shape, HF folder or GGUF")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on cuda, fp32 on cpu), ...")
    parser.add_argument("--tokens", default="1,2,4,8,16,32")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--modes", default="eager,static")
    parser.add_argument("--bandwidth-gbs", type=float, default=None)
    parser.add_argument("--no-compile", action="store_true", help="static cache, no compile")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of static mode: inductor (slow to compile), cudagraphs",
    )
    parser.add_argument("--no-fullgraph", action="store_true", help="allow graph breaks")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print("\n".join(table(report)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
