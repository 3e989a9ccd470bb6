"""The guard on a CUDA GPU: honest residuals of fused/foreach AdamW, tamper residuals, overhead.

Run on a machine with CUDA: python benchmarks/gpu_guard.py [--steps N] [--output FILE]
Without CUDA it runs the same measurements on CPU with small sizes (a smoke test of the
script) and says so in the table; the figures that matter come from a GPU.

Three tables:

1. Honest residuals: a GPT trains with AdamW (single-tensor, foreach, fused; fp32 parameters
   as the fp32 master weights of mixed precision, and bf16 parameters and state) while the
   update check verifies every step. For each: the largest residual against the replayed
   kernels (0 means bit for bit), the largest difference from trainwarden's own single-tensor
   arithmetic in units in the last place of the weight and relative to the update's
   magnitude (the tolerance the fused and foreach kernels are held to), and findings (0).
2. Tamper residuals: the same runs with an update flipped or scaled on 1 % of coordinates:
   the residual the guard sees and whether the step is caught.
3. Overhead at k = 1e3, 1e4, 1e5 coordinates per step: step time without and with the guard
   (CUDA synchronised), and the guard's own time.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _results import median, write_section

OUT = Path(__file__).parent / "_work" / "gpu_guard.md"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _model(device: str, dtype: Any, big: bool) -> tuple[Any, Any]:
    import torch

    from trainwarden.examples.tinygpt import Config, build, make_dataset

    if big:
        cfg = Config(width=1024, layers=8, context=256, batch=16, heads=16, samples=4096)
    else:
        cfg = Config(width=64, layers=2, context=32, batch=8, heads=4, samples=512)
    torch.manual_seed(0)
    model, _, _ = build(cfg)
    model = model.to(device=device, dtype=dtype)
    data = make_dataset(cfg)
    return cfg, (model, data)


def _optimizers() -> dict[str, Callable[[Any], Any]]:
    import torch

    return {
        "AdamW single-tensor": lambda p: torch.optim.AdamW(
            p, lr=1e-3, weight_decay=0.1, foreach=False
        ),
        "AdamW foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1, foreach=True),
        "AdamW fused": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1, fused=True),
    }


def _loss(cfg: Any, model: Any, data: Any, step: int, device: str) -> Any:
    import torch

    batch = cfg.batch
    start = (step * batch) % (len(data) - batch)
    x, y = data[start : start + batch]
    logits = model(x.to(device))
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, cfg.vocab), y.to(device).reshape(-1)
    )


def _own_arithmetic(
    update_module: Any, part: Any, actual: Any, expected: Any, dtype: Any
) -> tuple[float, float] | None:
    """How far the step's weights are from trainwarden's own single-tensor arithmetic.

    In units in the last place of the weight, and relative to the update's magnitude; values
    are decoded from their storage (bf16 as bit patterns) to float64 first.
    """
    import numpy as np

    if expected.approx is None:
        return None
    keep = expected.verify & expected.approx_mask
    if not keep.any():
        return None
    got = update_module._float64(actual[keep], part)
    own = update_module._float64(expected.approx[keep], part)
    before = update_module._float64(expected.before[keep], part)
    diff = np.abs(got - own)
    spacing = update_module._spacing(np.maximum(np.abs(before), np.abs(own)), dtype)
    magnitude = np.maximum(expected.magnitude()[keep], spacing)
    with np.errstate(divide="ignore", invalid="ignore"):
        ulps = float(np.nanmax(diff / np.maximum(spacing, 1e-300)))
        rel = float(np.nanmax(diff / magnitude))
    return ulps, rel


def residuals(
    device: str, steps: int, k: int, big: bool, tamper: str | None = None
) -> list[dict[str, Any]]:
    """Honest (or tampered) runs of each optimizer and dtype, verified every step."""
    import torch

    from trainwarden.guard import GuardConfig
    from trainwarden.guard import _update as update_module
    from trainwarden.guard._sampling import Sampler
    from trainwarden.guard._update import ParamTable, UpdateCheck

    rows = []
    for dtype_name, dtype in (("fp32 (master weights)", torch.float32), ("bf16", torch.bfloat16)):
        for name, factory in _optimizers().items():
            cfg, (model, data) = _model(device, dtype, big)
            optimizer = factory(model.parameters())
            table = ParamTable.build(optimizer, {id(p): n for n, p in model.named_parameters()})
            check = UpdateCheck(
                optimizer,
                table,
                Sampler(b"gpu-benchmark-secret-0123456789", k=k),
                GuardConfig(),
                rank=0,
                verify_updates=True,
                check_weights=True,
            )
            check.prepare()
            assert check.reference is not None
            # Beside the replayed kernels, trainwarden's own single-tensor arithmetic: how far
            # the fused and foreach kernels are from it is what their tolerance must cover.
            reference_compute = check.reference.compute

            def compute(
                kernels: Any, group: Any, bucket: Any, _compute: Any = reference_compute
            ) -> Any:
                outcome = _compute(kernels, group, bucket)
                if outcome.approx is None:
                    single = dict(group, foreach=False, fused=False)
                    outcome.approx = _compute(kernels, single, bucket).variants[0]
                return outcome

            check.reference.compute = compute  # type: ignore[method-assign]
            # What each judgement compared: the weights the step wrote and the reference.
            seen: list[tuple[Any, Any, Any]] = []
            judge = check.judge

            def capture(
                part: Any,
                step: int,
                expected: Any,
                actual: Any,
                state: Any,
                _judge: Any = judge,
                _seen: list[tuple[Any, Any, Any]] = seen,
            ) -> Any:
                _seen.append((part, update_module._host(part, actual).copy(), expected))
                return _judge(part, step, expected, actual, state)

            check.judge = capture  # type: ignore[method-assign]
            worst = ulps = rel = 0.0
            caught = halting = 0
            gen = torch.Generator(device="cpu").manual_seed(1)
            for step in range(1, steps + 1):
                loss = _loss(cfg, model, data, step, device)
                optimizer.zero_grad()
                loss.backward()
                found = check.before_step(step)
                before = [p.detach().clone() for p in model.parameters()] if tamper else None
                optimizer.step()
                if tamper and before is not None:
                    with torch.no_grad():
                        for p, b in zip(model.parameters(), before, strict=True):
                            mask = (torch.rand(p.shape, generator=gen) < 0.01).to(device)
                            factor = -1.0 if tamper == "flip" else float(tamper)
                            p.copy_(torch.where(mask, b + factor * (p - b), p))
                seen.clear()
                found += check.after_step(step, next_step=step + 1).findings
                (result,) = check.collect(step)
                found += result.findings
                halting += sum(f.halts for f in found)
                caught += any(f.rule_id == "guard.update" and f.halts for f in result.findings)
                worst = max(worst, result.residual or 0.0)
                for part, actual, expected in seen:
                    distance = _own_arithmetic(update_module, part, actual, expected, dtype)
                    if distance is not None:
                        ulps, rel = max(ulps, distance[0]), max(rel, distance[1])
            rows.append(
                {
                    "dtype": dtype_name,
                    "optimizer": name,
                    "steps": steps,
                    "k": k,
                    "residual": worst,
                    "ulps": ulps,
                    "rel": rel,
                    "findings": halting,
                    "caught": caught,
                }
            )
            print(rows[-1], flush=True)
    return rows


def overhead(device: str, steps: int, ks: list[int], big: bool) -> list[dict[str, Any]]:
    """Step time with the guard at several k against none, on the device."""
    import torch

    from trainwarden.guard import Guard, GuardConfig

    rows = []
    cfg, (model, data) = _model(device, torch.float32, big)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, weight_decay=0.1, fused=device == "cuda"
    )

    def run(n: int, offset: int) -> list[float]:
        times = []
        for step in range(n):
            _sync(device)
            start = time.perf_counter()
            loss = _loss(cfg, model, data, offset + step, device)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            _sync(device)
            times.append(time.perf_counter() - start)
        return times

    run(5, 0)
    for k in ks:
        bare = run(steps, 100)
        guard = Guard(model, optimizer, config=GuardConfig(k=k).without("code"))
        run(3, 200)
        cost0 = guard.total_cost
        guarded = run(steps, 300)
        own = (guard.total_cost - cost0) / steps
        guard.close()
        row = {
            "k": k,
            "bare": median(bare),
            "guarded": median(guarded),
            "own": own,
            "params": sum(p.numel() for p in model.parameters()),
        }
        rows.append(row)
        print(row, flush=True)
    return rows


def table(device: str, honest: list[Any], tampered: list[Any], costs: list[Any]) -> str:
    import torch

    where = (
        torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"CPU ({platform.machine()}): NO GPU WAS AVAILABLE, figures are a smoke test"
    )
    lines = [
        "## guard on GPU: residuals and overhead (`benchmarks/gpu_guard.py`)",
        "",
        f"Device: {where}; torch {torch.__version__}.",
        "",
        "Honest runs (every step verified):",
        "",
        "| params | optimizer | steps | k | residual vs replayed kernels | "
        "own arithmetic: max ulps | own arithmetic: max diff / update | halting findings |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['dtype']} | {r['optimizer']} | {r['steps']} | {r['k']} | {r['residual']:.3g} "
        f"| {r['ulps']:.3g} | {r['rel']:.3g} | {r['findings']} |"
        for r in honest
    ]
    lines += [
        "",
        "Tampered runs (1 % of coordinates changed after each step):",
        "",
        "| params | optimizer | tampering | residual seen | steps caught |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['dtype']} | {r['optimizer']} | {r['tamper']} | {r['residual']:.3g} "
        f"| {r['caught']}/{r['steps']} |"
        for r in tampered
    ]
    lines += [
        "",
        "Overhead (AdamW, fp32, guard at default settings but k varied):",
        "",
        "| k | params | step, no guard (ms) | step, guard (ms) | guard's own time (ms) | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['k']} | {r['params'] / 1e6:.1f} M | {r['bare'] * 1e3:.2f} | "
        f"{r['guarded'] * 1e3:.2f} | {r['own'] * 1e3:.2f} | {r['own'] / r['bare']:.2%} |"
        for r in costs
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run")
    parser.add_argument("--output", type=Path, default=OUT, help="markdown table file")
    parser.add_argument(
        "--write-results", action="store_true", help="also write benchmarks/RESULTS.md"
    )
    args = parser.parse_args(argv)
    device = _device()
    big = device == "cuda"
    if not big:
        print("no CUDA device: running the CPU path with small sizes (a smoke test)", flush=True)
    steps = args.steps or (50 if big else 6)
    honest = residuals(device, steps, 10_000 if big else 1_000, big)
    tampered = []
    for tamper in ("flip", "1.01", "1.1"):
        rows = residuals(device, max(3, steps // 5), 10_000 if big else 1_000, big, tamper)
        for row in rows:
            row["tamper"] = "sign flipped" if tamper == "flip" else f"update x{tamper}"
        tampered += [r for r in rows if r["optimizer"] != "AdamW single-tensor"]
    costs = overhead(device, 20 if big else 4, [1_000, 10_000, 100_000], big)
    text = table(device, honest, tampered, costs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    if args.write_results:
        write_section("guard-gpu", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
