"""`pipesd calibrate campaign`: the GPU calibration campaign in one resumable command (issue 20).

    pipesd calibrate campaign --device cuda --out runs/campaign [--budget-s 600] [--shapes ...]
    pipesd calibrate campaign --device cpu --tiny --out runs/campaign-tiny   (the CPU rehearsal)

The plan (`calibrate.campaign_plan`: steps in order of value, each with its estimated time) is
printed first; `--budget-s` drops the lowest-value steps that do not fit (by the estimates;
a step that has started runs to its end). Each step writes its
part file (`OUT/parts/<step>.json`) the moment it finishes, and `OUT/manifest.json` records
each finished step (seconds taken, part, date), the plan and where it ran (GPU, driver,
versions, command). A run that is cut off keeps what it finished; running the same command
with the same --out again resumes: finished steps are skipped. A step that fails is recorded
with its one-line reason and the campaign goes on with the next. Served steps also write the
profile assembled from their part (`OUT/profiles/<step>.json`, the rest from --base), which
the validation step simulates with.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibrate.assemble import Part, assemble, load_part, new_part, save_part, write_profile
from calibrate.campaign_plan import (
    DEFAULT_SHAPES,
    DRAFT_SHAPES,
    ENERGY_REL_ERROR,
    ENERGY_WINDOW_S,
    GPU_GRID,
    NVML_UPDATE_S,
    TINY_GRID,
    TINY_SHAPES,
    Grid,
    Step,
    plan,
    plan_lines,
    select,
    validate_args,
)
from calibrate.measure_target import TORCH_VERSIONS, measure_target, served_target_part
from calibrate.options import TargetOptions
from calibrate.target_served_torch import profile_torch_served_target
from models.shape_gguf import build_shape_gguf, default_file_name
from models.shapes import get_shape
from simulator.errors import ConfigError
from simulator.outdir import MANIFEST, claim_out_dir, read_manifest
from simulator.profile import load_profile
from simulator.provenance import package_versions
from simulator.results import write_json

KIND = "calibrate campaign"
REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "scenarios" / "profiles"
BASE_PROFILES = {
    "cuda": PROFILES / "pipesd-tinyllama-1.1b-cpu-edge.json",
    "cpu": PROFILES / "default.json",
}
"""Where a campaign profile's unmeasured sections come from (its draft: TinyLlama on a CPU)."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class CampaignOptions:
    """What `run_campaign` takes; checked at construction (one-line ConfigError)."""

    device: str
    out: Path
    budget_s: float | None = None
    shapes: tuple[str, ...] | None = None
    tiny: bool = False
    plan_only: bool = False
    base: Path | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise ConfigError("--device", str(self.device), "allowed: cuda, cpu")
        if self.budget_s is not None and not (0 < self.budget_s < float("inf")):
            raise ConfigError("--budget-s", str(self.budget_s), "must be a number of seconds > 0")
        for shape in self.shapes or ():
            try:
                get_shape(shape)
            except ValueError as exc:
                raise ConfigError("--shapes", shape, str(exc)) from None

    @property
    def grid(self) -> Grid:
        return TINY_GRID if self.tiny else GPU_GRID

    @property
    def shape_names(self) -> tuple[str, ...]:
        return self.shapes or (TINY_SHAPES if self.tiny else DEFAULT_SHAPES)


def environment(device: str) -> dict[str, Any]:
    """Where the campaign runs: GPU name and driver (cuda), CPU, Python and package versions."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "versions": package_versions([*TORCH_VERSIONS, "llama-cpp-python", "pipesd-kit"]),
    }
    if device == "cuda":
        import torch  # optional (extra 'models'): the GPU's name comes from torch

        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = str(torch.version.cuda)
        try:
            import pynvml  # nvidia-ml-py, optional: the driver version

            pynvml.nvmlInit()
            info["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
        except Exception as exc:  # NVML absent or failing: say why instead
            info["driver"] = f"unknown ({type(exc).__name__})"
    return info


class Campaign:
    """One campaign folder: its manifest (state), parts and profiles (module docstring)."""

    def __init__(self, options: CampaignOptions, command: str, say: Say) -> None:
        self.options = options
        self.command = command
        self.say = say
        self.out = options.out
        self.parts = self.out / "parts"
        self.profiles = self.out / "profiles"
        self.state: dict[str, Any] = {}

    # ---- state -------------------------------------------------------------------------------

    def open(self) -> None:
        """Claim --out (a new or empty folder, or this command's own: then resume)."""
        resume = (self.out / MANIFEST).is_file()
        claim_out_dir(self.out, KIND, resume=resume, resumable=True, command=self.command.split())
        state = read_manifest(self.out / MANIFEST) if resume else {}
        if resume and state.get("device", self.options.device) != self.options.device:
            raise ConfigError(
                "--device", self.options.device, f"{self.out} holds a {state['device']} campaign"
            )
        self.state = {
            "kind": KIND,
            "device": self.options.device,
            "tiny": self.options.tiny,
            "commands": [*state.get("commands", []), self.command],
            "steps": state.get("steps", {}),
            "environment": state.get("environment") or environment(self.options.device),
        }
        self._save()

    def finished(self) -> set[str]:
        """Steps recorded as done whose files are still there."""
        return finished_steps(self.out, self.state)

    def _save(self) -> None:
        write_json(self.out / MANIFEST, self.state)

    def _record(self, step: Step, **record: Any) -> None:
        self.state["steps"][step.name] = {
            **record,
            "estimate_s": round(step.estimate_s, 1),
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        self._save()

    # ---- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Print the plan, then run it; 0 when every step ran."""
        selection = select(_steps(self.options), self.finished(), self.options.budget_s)
        self.state["plan"] = [
            {"step": s.name, "estimate_s": round(s.estimate_s, 1)} for s in selection.run
        ]
        self._save()
        for line in plan_lines(selection, self.options.budget_s):
            print(line)
        failed = 0
        for step in selection.run:
            self.say(f"{step.name}: {step.what()} (~{step.estimate_s:.0f} s)")
            begin = time.perf_counter()
            try:
                written = self._run_step(step)
            except (ConfigError, ValueError, RuntimeError, OSError, MemoryError) as exc:
                _release_memory(self.options.device)
                failed += 1
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._record(step, status="failed", reason=reason)
                print(f"{step.name}: FAILED: {reason}", file=sys.stderr)
                continue
            seconds = time.perf_counter() - begin
            _release_memory(self.options.device)
            self._record(step, status="done", seconds=round(seconds, 1), wrote=written)
            print(f"{step.name}: done in {seconds:.0f} s (estimated {step.estimate_s:.0f} s)")
        return 1 if failed else 0

    def _run_step(self, step: Step) -> list[str]:
        """Run one step; returns the files it wrote (relative to --out)."""
        if step.kind == "served":
            part = self._served(step)
        elif step.kind == "batched":
            part = self._batched(step)
        elif step.kind == "energy":
            part = self._energy(step)
        else:
            return self._validate(step)
        path = self.parts / f"{step.name}.json"
        save_part(part, path)
        written = [str(path.relative_to(self.out))]
        if step.kind == "served":
            profile = self.profiles / f"{step.name}.json"
            base = load_profile(self.options.base or BASE_PROFILES[self.options.device])
            name = f"campaign-{step.name}"
            write_profile(assemble(name, [load_part(path)], base, self.command), profile)
            written.append(str(profile.relative_to(self.out)))
        return written

    def _served(self, step: Step) -> Part:
        measured = self._measure_served(step, energy=False)
        return self._served_part(step, measured)

    def _measure_served(self, step: Step, energy: bool) -> Any:
        """The served TorchTarget measured for `step` (`energy`: one context, windows)."""
        grid = self.options.grid
        tokens = grid.tokens
        contexts = (grid.contexts[len(grid.contexts) // 2],) if energy else grid.contexts
        measured = profile_torch_served_target(
            step.shape,
            self.options.device,
            "bfloat16" if self.options.device == "cuda" else "float32",
            step.mode or "eager",
            token_counts=tokens,
            context_lengths=contexts,
            prompt_lengths=grid.prompts[:1] if energy else grid.prompts,
            repetitions=1 if energy else grid.repetitions,
            warmup=grid.warmup,
            energy_meter="auto" if energy else None,
            min_window_s=ENERGY_WINDOW_S,
            progress=self.say,
        )
        return measured

    def _served_part(self, step: Step, measured: Any) -> Part:
        grid = self.options.grid
        latency, reports = measured.fit()
        tokens = [r.tokens for r in measured.runs]
        contexts = sorted({r.context for r in measured.runs})
        how = (
            f"campaign step {step.name}: measured through {measured.setup()} on "
            f"{measured.device_name} ({measured.device}, {measured.dtype}, torch "
            f"{measured.torch_version}); tokens verified {sorted(set(tokens))}, contexts "
            f"{contexts}, {measured.repetitions} repetitions after {grid.warmup} warm-up"
        )
        return served_target_part(
            measured,
            latency,
            reports,
            step.shape,
            how,
            ("energy over verification windows", "measured"),
            package_versions(TORCH_VERSIONS),
            self.command,
        )

    def _energy(self, step: Step) -> Part:
        """NVML energy per verification (served eager path at the middle context), as a power
        part: the windows' mean power, idle power, and joules per verification per count."""
        eager = Step(step.name, "served", step.shape, "eager", 0.0)
        measured = self._measure_served(eager, energy=True)
        windows = [
            {
                "tokens": r.tokens,
                "context": r.context,
                "energy_j": r.energy_j,
                "mean_w": r.mean_w,
                "window_s": r.window_s,
                "verifications": r.window_count,
            }
            for r in measured.runs
        ]
        values, notes = measured.power_fields("energy over verification windows", "measured")
        versions = package_versions(TORCH_VERSIONS)
        why = (
            f"NVML's energy counter (mJ) advances every 20-100 ms, so each window lasts at "
            f"least {ENERGY_WINDOW_S:g} s of back-to-back verifications: a stale reading "
            f"misplaces at most {NVML_UPDATE_S:g} s of it, <= {100 * ENERGY_REL_ERROR:g}%; "
            f"on the served eager path at context {measured.runs[0].context} (static mode would "
            f"compile the model again)"
        )
        notes["power.energy_window"] = why
        samples = {"energy": windows}
        return new_part("power", values, notes, {}, samples, versions, self.command)

    def _batched(self, step: Step) -> Part:
        grid = self.options.grid
        options = TargetOptions(
            model=step.shape,
            backend="torch",
            device=self.options.device,
            dtype="bfloat16" if self.options.device == "cuda" else "float32",
            token_counts=grid.tokens,
            batch_sizes=grid.batches,
            context_lengths=grid.contexts,
            prompt_lengths=grid.prompts,
            repetitions=grid.repetitions,
            warmup=grid.warmup,
        )
        return measure_target(options, self.say, self.command)

    def _validate(self, step: Step) -> list[str]:
        """`pipesd validate` in a child process (validation sits above calibrate)."""
        device = self.options.device
        draft_shape = DRAFT_SHAPES[device]
        draft = self.out / "models" / default_file_name(draft_shape, "Q4_K_M")
        if not draft.is_file():
            build_shape_gguf(draft_shape, draft, "Q4_K_M", progress=self.say)
        attempt = 1 + sum(1 for _ in self.out.glob("validate-*"))
        out = self.out / f"validate-{attempt}"
        argv = validate_args(device, step.shape, self.profiles, draft, out)
        self.say("pipesd " + " ".join(argv))
        code = subprocess.call(
            [
                sys.executable,
                "-c",
                "import sys; from pipesd.cli import main; sys.exit(main())",
                *argv,
            ]
        )
        if code != 0:
            raise RuntimeError(f"pipesd validate exited with {code} (its output: {out})")
        summary = out / "manifest.json"
        data = json.loads(summary.read_text())
        self.say(
            f"validation: median |TPT error| {data.get('tpt_abs_error_median')}, "
            f"ranking identical {data.get('ranking_identical')}"
        )
        return [str(out.relative_to(self.out)), str(draft.relative_to(self.out))]


def _release_memory(device: str) -> None:
    """Give the finished step's GPU memory back (the next model, or the validation's server in
    another process, needs it)."""
    gc.collect()
    if device == "cuda":
        import torch  # optional (extra 'models'): only a cuda campaign gets here

        torch.cuda.empty_cache()


def _steps(options: CampaignOptions) -> list[Step]:
    return plan(options.device, options.shape_names, options.grid)


def finished_steps(out: Path, state: dict[str, Any]) -> set[str]:
    """Steps `state` records as done whose files under `out` are all still there."""
    return {
        name
        for name, record in state.get("steps", {}).items()
        if record.get("status") == "done"
        and all((out / path).exists() for path in record.get("wrote", []))
    }


def run_campaign(options: CampaignOptions, command: str, say: Say) -> int:
    """Run (or resume) a campaign; see the module docstring. `plan_only`: print the plan
    (finished steps of an existing --out skipped) and write nothing."""
    if options.plan_only:
        manifest = options.out / MANIFEST
        state = read_manifest(manifest) if manifest.is_file() else {}
        selection = select(_steps(options), finished_steps(options.out, state), options.budget_s)
        for line in plan_lines(selection, options.budget_s):
            print(line)
        return 0
    campaign = Campaign(options, command, say)
    campaign.open()
    return campaign.run()


def add_campaign_parser(sub: Any) -> None:
    """Register `pipesd calibrate campaign` (its handler: `handler(args, command, say)`)."""
    parser = sub.add_parser(
        "campaign",
        help="the GPU calibration campaign in one resumable command (plan, budget, parts)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", required=True, choices=("cuda", "cpu"))
    parser.add_argument("--out", dest="campaign_out", type=Path, required=True, help="folder")
    parser.add_argument("--budget-s", type=float, help="drop the lowest-value steps to fit")
    parser.add_argument("--shapes", nargs="+", help=f"target shapes (default {DEFAULT_SHAPES})")
    parser.add_argument("--tiny", action="store_true", help="tiny shape and grids (CPU test)")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and stop")
    parser.add_argument("--base", type=Path, help="base profile for the assembled profiles")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace, command: str, say: Say) -> int:
    options = CampaignOptions(
        device=args.device,
        out=args.campaign_out,
        budget_s=args.budget_s,
        shapes=tuple(args.shapes) if args.shapes else None,
        tiny=args.tiny,
        plan_only=args.plan_only,
        base=args.base,
    )
    return run_campaign(options, command, say)


__all__ = ["CampaignOptions", "add_campaign_parser", "run_campaign"]
