"""``make gpu-check`` (``python -m profiler.gpucheck``): validate the CUDA paths on a GPU machine.

Without CUDA it prints one line and exits 2. On a CUDA machine it
1. runs the GPU-marked tests (``pytest -m gpu``) and fails if any fails or is skipped;
2. runs the live checks below, each isolated (one failing check does not stop the others);
3. writes ``reports/gpu-check/gpu-check.md`` and ``gpu-check.json`` (atomic writes).
Exit status: 0 when the tests and every check pass, 1 otherwise.

Live checks (``CHECKS``; each returns ``{"ok": bool, ...figures}``):
- environment: torch, CUDA, cuDNN, driver, GPU, MIG, allocator backend;
- categories: a full-mode run on the device; region categories add up with 0 B tolerance;
- syncs: host synchronizations of one forward = lattice steps + 1 (sync debug mode);
- nvml_identity: NVML's handle has the CUDA device's UUID, also under CUDA_VISIBLE_DEVICES;
- nvml_power: power in watts within 10-1500 W while the GPU works;
- oom_full / oom_light: a deliberate OOM gives status ``oom`` with allocator state and a
  snapshot with stacks; history off afterwards; allocated memory back to its baseline;
- light_vs_full: untraced step time, light vs full mode;
- history_cost: training steps with the allocation history on vs off, interleaved;
- presets: one training step of the experiment and optimized presets, time and peak memory;
- bench: the model benchmark (steps/s, flow-steps/s, GRU share of the TF32 peak);
- claims: ``python -m profiler claims --device cuda`` (its table under reports/gpu-check/claims).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

OUT = Path("reports/gpu-check")
NO_CUDA_EXIT = 2
# Dense TF32 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, by a fragment of the
# CUDA device name (first match; the SXM H100 calls itself "H100 80GB HBM3").
TF32_PEAK_TFLOPS = (("H200", 494.7), ("H100 80GB HBM3", 494.7), ("H100 SXM", 494.7),
                    ("H100 PCIe", 378.0), ("A100", 156.0), ("L40S", 183.0), ("L4", 60.0),
                    ("A10", 62.5))
TINY = dict(lattice_width=4, lattice_height=4, lattice_depth=4, batch_size=2,
            carrier_hidden=16, carrier_layers=1, mapper_hidden=32, max_flows=1000)


def tf32_peak(name: str) -> float | None:
    """Dense TF32 peak in TFLOP/s for a device name, or None when not in the table."""
    for fragment, peak in TF32_PEAK_TFLOPS:
        if fragment in name:
            return peak
    return None


def gru_flops_per_flow_step(hidden: int, inputs: int, layers: int) -> float:
    """FLOPs of one GRU row-step, forward + backward (backward ~ 2x forward): 3 gates, each
    an input and a recurrent product (2 FLOPs per multiply-add)."""
    per_layer = []
    for layer in range(layers):
        width = inputs if layer == 0 else hidden
        per_layer.append(2 * 3 * hidden * (width + hidden))
    return 3.0 * sum(per_layer)


class OomWorkload:
    """A workload that keeps ``fraction`` of the device's memory more at every step until
    the allocator fails: a real CUDA OOM, approached gradually so the OOM guard can arm."""

    def __init__(self, config: Any, device: torch.device, pool: str, fraction: float = 0.04):
        self.device = device
        self.blocks: list[torch.Tensor] = []
        _free, total = torch.cuda.mem_get_info(device)
        self.block_bytes = int(total * fraction)

    def step(self, index: int, on_phase: Any) -> dict[str, Any]:
        self.blocks.append(torch.ones(self.block_bytes, dtype=torch.uint8, device=self.device))
        if on_phase is not None:
            for phase in ("forward", "backward", "optimizer"):
                on_phase(phase)
        return {"loss": float(len(self.blocks)), "samples": 1, "skipped": 0}

    def role_tensors(self) -> dict[str, list[torch.Tensor]]:
        return {}

    def pool_stats(self) -> dict[str, dict[str, int]]:
        return {}


def run_session(run_dir: Path, mode: str, steps: int, factory: Callable | None = None,
                overrides: dict[str, Any] | None = None, preset: str = "debug",
                trace: Any = None, tolerance_bytes: int | None = None,
                device: torch.device | None = None) -> dict[str, Any]:
    """One profile run on CUDA (``run.json`` contents returned)."""
    from energy_flow.config import make_config
    from profiler.collect.nvml import NvmlConfig
    from profiler.collect.session import ProfileOptions
    from profiler.collect.tracing import TraceSchedule
    from profiler.collect.workload import make_energy_flow_workload
    from profiler.profiling import run_profile

    overrides = dict(TINY if overrides is None else overrides)
    options = ProfileOptions(
        run_dir=run_dir, name=run_dir.name, preset=preset, variant="after", pool="off",
        mode=mode, steps=steps, warmup=min(2, steps - 1), monitor_interval=max(1, steps),
        overrides=overrides, nvml=NvmlConfig(interval_s=0.5, process_interval_s=0.5),
        trace=trace or TraceSchedule(wait=1, warmup=1, active=2),
        tolerance_bytes=tolerance_bytes, overwrite=True)
    meta = run_profile(options, make_config(preset, **overrides),
                       device or torch.device("cuda:0"), factory or make_energy_flow_workload,
                       log=io.StringIO())
    return meta


def history_is_off(device: torch.device) -> bool:
    """True when a fresh allocation is recorded without stack frames (history off)."""
    probe = torch.empty(3 << 20, dtype=torch.uint8, device=device)
    ptr = probe.untyped_storage().data_ptr()
    snap = torch.cuda.memory._snapshot()
    for seg in snap["segments"]:
        for block in seg["blocks"]:
            if block["address"] == ptr and block["state"] == "active_allocated":
                return not block.get("frames")
    return True  # not found: nothing recorded for it


def snapshot_has_stacks(path: Path) -> bool:
    import pickle

    with open(path, "rb") as f:
        snap = pickle.load(f)
    frames = [fr for seg in snap.get("segments", []) for b in seg.get("blocks", [])
              for fr in b.get("frames", [])]
    traces = [e for dev in snap.get("device_traces", []) for e in dev if e.get("frames")]
    return bool(frames or traces)


# --- live checks --------------------------------------------------------------------------
def check_environment(tmp: Path) -> dict[str, Any]:
    from profiler.collect.nvml import NvmlDevice

    props = torch.cuda.get_device_properties(0)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(), "gpu": props.name,
           "gpu_memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}",
           "devices": torch.cuda.device_count(),
           "allocator_backend": torch.cuda.get_allocator_backend(),
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    nvml = NvmlDevice(torch.device("cuda:0"))
    try:
        nvml.open()
        env.update(driver=nvml.driver, nvml=nvml.version, identity=nvml.identity)
    except Exception as exc:
        env["nvml_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        nvml.close()
    env["ok"] = "nvml_error" not in env
    return env


def check_categories(tmp: Path) -> dict[str, Any]:
    meta = run_session(tmp / "categories", "full", 6, tolerance_bytes=0)
    att = meta.get("attribution") or {}
    return {"ok": meta["status"] == "complete" and bool(att.get("ok")),
            "status": meta["status"], "device": att.get("device"),
            "sum_categories_bytes": att.get("sum_categories_bytes"),
            "allocator_total_bytes": att.get("allocator_total_bytes"),
            "tolerance_bytes": att.get("tolerance_bytes"), "events": att.get("events")}


def count_syncs(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Host synchronizations during ``fn()``, counted by CUDA's sync debug mode warnings."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs), out


def check_syncs(tmp: Path) -> dict[str, Any]:
    from energy_flow.config import make_config
    from energy_flow.data import SyntheticPairs
    from energy_flow.model import EnergyFlowModel

    config = make_config("debug")
    device = torch.device("cuda:0")
    model = EnergyFlowModel(config).to(device)
    data = SyntheticPairs(config.embedding_dim, seed=config.seed)
    inputs, targets = data.batch(config.batch_size, 0, device)
    model(inputs, targets)  # warm-up (lazy initialization syncs)
    syncs, out = count_syncs(lambda: model(inputs, targets))
    steps = out.stats.steps_taken
    return {"ok": syncs == steps + 1, "syncs": syncs, "lattice_steps": steps,
            "budget": steps + 1}


def check_nvml_identity(tmp: Path) -> dict[str, Any]:
    code = ("import json, torch; from profiler.collect.nvml import NvmlDevice; "
            "d = NvmlDevice(torch.device('cuda:0')); d.open(); "
            "print(json.dumps({'cuda': str(torch.cuda.get_device_properties(0).uuid), "
            "'nvml': d.identity['uuid'], 'index': d.index, 'mig': d.identity['mig']})); "
            "d.close()")
    out: dict[str, Any] = {"runs": []}
    variants = [None] + ([str(torch.cuda.device_count() - 1)]
                         if torch.cuda.device_count() > 1 else [])
    ok = True
    for visible in variants:
        env = dict(os.environ)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            out["runs"].append({"visible": visible, "error": proc.stderr.strip()[-500:]})
            ok = False
            continue
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        from profiler.collect.nvml import uuid_text

        match = uuid_text(got["cuda"]) is not None and uuid_text(got["nvml"]) == uuid_text(
            got["cuda"])
        if visible is not None:
            match = match and got["index"] == int(visible)
        ok = ok and match
        out["runs"].append({"visible": visible, **got, "match": match})
    if len(variants) == 1:
        out["note"] = "one GPU: the CUDA_VISIBLE_DEVICES variant needs two"
    out["ok"] = ok
    return out


def check_nvml_power(tmp: Path) -> dict[str, Any]:
    from profiler.collect.nvml import NvmlConfig, NvmlSampler

    device = torch.device("cuda:0")
    sampler = NvmlSampler(NvmlConfig(interval_s=0.5, process_interval_s=0.5), device)
    status = sampler.start()
    if not status.available:
        return {"ok": False, "reason": status.reason}
    a = torch.randn(4096, 4096, device=device)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
    final = sampler.stop()
    watts = [r["power_w"] for r in sampler.rows() if r["power_w"] is not None]
    return {"ok": bool(watts) and all(10.0 <= w <= 1500.0 for w in watts),
            "power_w_max": max(watts) if watts else None, "samples": len(sampler.rows()),
            "metrics": final.metrics, "identity": final.identity}


def _check_oom(tmp: Path, mode: str) -> dict[str, Any]:
    from profiler.collect.tracing import TraceSchedule

    device = torch.device("cuda:0")
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    trace = TraceSchedule(wait=0, warmup=1, active=60) if mode == "full" else None
    meta = run_session(tmp / f"oom_{mode}", mode, 60, factory=OomWorkload, trace=trace)
    gc.collect()
    torch.cuda.empty_cache()
    after = torch.cuda.memory_allocated(device)
    state = meta.get("memory_at_failure") or {}
    snap = tmp / f"oom_{mode}" / "cuda_memory_snapshot.pickle"
    stacks = snap.exists() and snapshot_has_stacks(snap)
    off = history_is_off(device)
    out = {"status": meta["status"], "error": (meta.get("error") or {}).get("type"),
           "allocator_state": bool(state.get("allocator")), "snapshot": snap.exists(),
           "snapshot_has_stacks": stacks, "history_off_after": off,
           "allocated_baseline_bytes": baseline, "allocated_after_bytes": after,
           "memory_history": meta.get("memory_history")}
    out["ok"] = (meta["status"] == "oom" and out["allocator_state"] and stacks and off
                 and after == baseline)
    return out


def check_oom_full(tmp: Path) -> dict[str, Any]:
    return _check_oom(tmp, "full")


def check_oom_light(tmp: Path) -> dict[str, Any]:
    return _check_oom(tmp, "light")


def check_light_vs_full(tmp: Path) -> dict[str, Any]:
    from profiler.collect.tracing import TraceSchedule

    medians: dict[str, list[float]] = {}
    for mode in ("light", "full", "light", "full"):  # alternate: drift cancels
        meta = run_session(tmp / f"timing_{mode}", mode, 40, overrides={},
                           trace=TraceSchedule(wait=5, warmup=1, active=3))
        medians.setdefault(mode, []).append(meta["timings"].get("step_ms_median"))
    light = min(medians["light"])
    full = min(medians["full"])
    return {"ok": True, "light_step_ms_median": light, "full_untraced_step_ms_median": full,
            "full_over_light": full / light if light else None, "runs": medians,
            "note": "debug preset, 40 steps; full's untraced steps exclude the trace window"}


def check_history_cost(tmp: Path) -> dict[str, Any]:
    """Debug training steps with the allocation history (Python stacks) on vs off,
    interleaved step by step: the cost the trace window and the OOM guard pay."""
    import statistics

    from energy_flow.config import make_config
    from energy_flow.data import SyntheticPairs
    from energy_flow.trainer import Trainer

    device = torch.device("cuda:0")
    config = make_config("debug")
    trainer = Trainer(config, device)
    data = SyntheticPairs(config.embedding_dim, seed=config.seed)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(24):
        label = "on" if i % 2 else "off"
        inputs, targets = data.batch(config.batch_size, i, device)
        if label == "on":
            torch.cuda.memory._record_memory_history(stacks="python", max_entries=100_000)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_step(inputs, targets)
        torch.cuda.synchronize()
        elapsed = (time.perf_counter() - t0) * 1e3
        if label == "on":
            torch.cuda.memory._record_memory_history(enabled=None)
        if i >= 4:
            times[label].append(elapsed)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"ok": history_is_off(device), "step_ms_median_history_off": off,
            "step_ms_median_history_on": on, "ratio": on / off, "steps_each": len(times["on"])}


def check_presets(tmp: Path) -> dict[str, Any]:
    from energy_flow.config import make_config
    from energy_flow.data import SyntheticPairs
    from energy_flow.trainer import Trainer

    device = torch.device("cuda:0")
    out: dict[str, Any] = {}
    ok = True
    for preset in ("experiment", "optimized"):
        config = make_config(preset)
        trainer = Trainer(config, device)
        data = SyntheticPairs(config.embedding_dim, seed=config.seed)
        torch.cuda.reset_peak_memory_stats(device)
        inputs, targets = data.batch(config.batch_size, 0, device)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = trainer.train_step(inputs, targets)
        torch.cuda.synchronize()
        out[preset] = {"step_s": time.perf_counter() - t0, "loss": result.loss,
                       "skipped": result.skipped, "flow_steps": result.flow_steps,
                       "peak_allocated_bytes": torch.cuda.max_memory_allocated(device)}
        ok = ok and not result.skipped
        del trainer
        gc.collect()
        torch.cuda.empty_cache()
    out["ok"] = ok
    return out


def check_bench(tmp: Path) -> dict[str, Any]:
    from energy_flow.bench import bench_gru_floor, bench_train
    from energy_flow.config import make_config

    out: dict[str, Any] = {}
    peak = tf32_peak(torch.cuda.get_device_name(0))
    for preset in ("debug", "experiment"):
        config = make_config(preset)
        r = bench_train(config, "cuda:0", steps=5, warmup=2)
        floor = bench_gru_floor(config, "cuda:0")
        flops = gru_flops_per_flow_step(config.carrier_hidden, _gru_inputs(config),
                                        config.carrier_layers)
        achieved = r["flow_steps_per_s"] * flops / 1e12
        out[preset] = {"steps_per_s": r["steps_per_s"], "flow_steps_per_s": r["flow_steps_per_s"],
                       "ratio_to_floor": r["ratio_to_floor"],
                       "floor_flow_steps_per_s": floor["flow_steps_per_s"],
                       "gru_tflops": achieved,
                       "gru_share_of_tf32_peak": achieved / peak if peak else None}
    out["tf32_peak_tflops"] = peak
    out["note"] = ("GRU FLOPs = 3 x forward (2 FLOPs per multiply-add, 3 gates); training runs "
                   "under bf16 autocast, whose dense peak is twice the TF32 one")
    out["ok"] = True
    return out


def _gru_inputs(config: Any) -> int:
    from energy_flow.modules import EnergyCarrier

    carrier = EnergyCarrier(config)
    return int(carrier.gru.input_size)


def check_claims(tmp: Path) -> dict[str, Any]:
    out_dir = OUT / "claims"
    proc = subprocess.run([sys.executable, "-m", "profiler", "claims", "--device", "cuda",
                           "--out", str(out_dir)], capture_output=True, text=True, timeout=3600)
    result: dict[str, Any] = {"ok": proc.returncode == 0, "returncode": proc.returncode,
                              "out": str(out_dir)}
    table = out_dir / "claims.csv"
    if table.exists():
        import pandas as pd

        result["claims"] = pd.read_csv(table).to_dict("records")
    if proc.returncode != 0:
        result["stderr"] = proc.stderr.strip()[-2000:]
    return result


CHECKS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "environment": check_environment, "categories": check_categories, "syncs": check_syncs,
    "nvml_identity": check_nvml_identity, "nvml_power": check_nvml_power,
    "oom_full": check_oom_full, "oom_light": check_oom_light,
    "light_vs_full": check_light_vs_full, "history_cost": check_history_cost,
    "presets": check_presets, "bench": check_bench,
    "claims": check_claims,
}


# --- the GPU-marked tests -----------------------------------------------------------------
def run_gpu_tests(junit: Path) -> dict[str, Any]:
    """``pytest -m gpu``: counts from its JUnit XML; ok only with no failure and no skip."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs",
                           f"--junitxml={junit}"], capture_output=True, text=True)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    skipped, failed = [], []
    if junit.exists():
        root = ET.parse(junit).getroot()
        for case in root.iter("testcase"):
            counts["tests"] += 1
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("skipped") is not None:
                counts["skipped"] += 1
                skipped.append(name)
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failures"] += 1
                failed.append(name)
    ok = proc.returncode == 0 and counts["tests"] > 0 and not skipped and not failed
    return {"ok": ok, "returncode": proc.returncode, **counts, "skipped_tests": skipped,
            "failed_tests": failed, "tail": proc.stdout.strip()[-3000:]}


# --- report -------------------------------------------------------------------------------
def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# gpu-check", "", f"Overall: **{'pass' if report['ok'] else 'FAIL'}** "
             f"({report['finished_at']}, {report['elapsed_s']:.0f} s)", ""]
    tests = report["tests"]
    lines += ["## GPU-marked tests", "",
              f"{tests.get('tests', 0)} run, {tests.get('failures', 0)} failed, "
              f"{tests.get('skipped', 0)} skipped: {'pass' if tests['ok'] else 'FAIL'}", ""]
    for name in tests.get("failed_tests", []) + tests.get("skipped_tests", []):
        lines.append(f"- {name}")
    lines += ["", "## Live checks", "", "| check | result | figures |", "|---|---|---|"]
    for name, result in report["checks"].items():
        figures = {k: v for k, v in result.items() if k != "ok"}
        text = json.dumps(figures, default=str)
        if len(text) > 400:
            text = text[:400] + " ..."
        lines.append(f"| {name} | {'pass' if result.get('ok') else 'FAIL'} | "
                     f"`{text.replace('|', '/')}` |")
    lines += ["", "Full figures: gpu-check.json.", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> None:
    from energy_flow.runtime import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    body = json.dumps(report, indent=2, default=str).encode()
    atomic_write(out / "gpu-check.json", lambda f: f.write(body))
    md = render_markdown(report).encode()
    atomic_write(out / "gpu-check.md", lambda f: f.write(md))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m profiler.gpucheck",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None,
                        help=f"comma-separated checks to run (default all: {', '.join(CHECKS)})")
    parser.add_argument("--skip-tests", action="store_true", help="skip the GPU-marked tests")
    parser.add_argument("--out", default=str(OUT), help="report directory")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); nothing checked", file=sys.stderr)
        return NO_CUDA_EXIT
    names = list(CHECKS) if args.only is None else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"gpu-check: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tests = {"ok": True, "note": "skipped by --skip-tests"} if args.skip_tests else \
        run_gpu_tests(out / "pytest-gpu.xml")
    print(f"gpu-check: GPU-marked tests {'pass' if tests['ok'] else 'FAIL'}", file=sys.stderr)
    checks: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.perf_counter()
            try:
                result = CHECKS[name](Path(tmp))
            except Exception as exc:
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()[-3000:]}
            result["seconds"] = round(time.perf_counter() - t0, 1)
            checks[name] = result
            print(f"gpu-check: {name} {'pass' if result.get('ok') else 'FAIL'} "
                  f"({result['seconds']} s)", file=sys.stderr, flush=True)
            gc.collect()
            torch.cuda.empty_cache()
    report = {"ok": tests["ok"] and all(c.get("ok") for c in checks.values()),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "elapsed_s": time.perf_counter() - started, "tests": tests, "checks": checks}
    write_report(report, out)
    print(f"gpu-check: {'pass' if report['ok'] else 'FAIL'}; report in {out}/gpu-check.md",
          file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
