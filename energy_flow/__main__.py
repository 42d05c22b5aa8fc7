"""Command line: ``python -m energy_flow train|bench ...``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from energy_flow.config import PRESET_NAMES, ConfigError, make_config, parse_override
from energy_flow.runtime import disable_onednn_primitive_cache, resolve_device

disable_onednn_primitive_cache()

# torch is imported inside the commands, so that argument errors answer at once.



def _config(args: argparse.Namespace):
    overrides = dict(parse_override(text) for text in args.set)
    return make_config(args.preset, **overrides)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cmd_train(args: argparse.Namespace) -> int:
    config = _config(args)
    import torch

    from energy_flow import learning
    from energy_flow.data import SyntheticPairs, load_pairs
    from energy_flow.trainer import Trainer

    device = resolve_device(args.device)
    if args.steps <= 0 or args.epoch_steps <= 0:
        raise ConfigError(f"--steps and --epoch-steps must be positive, got {args.steps} and "
                          f"{args.epoch_steps}")
    trainer = Trainer(config, device)
    if args.resume:
        trainer.load_checkpoint(args.resume)
    pairs = None
    if args.data:
        pairs = load_pairs(args.data, config.embedding_dim)
    synthetic = SyntheticPairs(config.embedding_dim, seed=config.seed)
    print(f"train: preset={config.preset} device={device} steps={args.steps} "
          f"lattice={config.lattice_width}x{config.lattice_height}x{config.lattice_depth} "
          f"batch={config.batch_size} flows={config.initial_flows}", file=sys.stderr)
    last_report = time.perf_counter()
    losses: list[float] = []
    records: list[dict] = []
    jsonl_out = open(args.out, "w") if args.out else None  # noqa: SIM115 (closed below)
    # An epoch is one pass over --data, or --epoch-steps synthetic batches; the LR scheduler
    # (ReduceLROnPlateau) sees each epoch's mean loss.
    epoch_steps = args.epoch_steps
    if pairs is not None:
        epoch_steps = -(-pairs[0].shape[0] // config.batch_size)
    for i in range(args.steps):
        if pairs is None:
            inputs, targets = synthetic.batch(config.batch_size, trainer.step, device)
        else:
            n = pairs[0].shape[0]
            idx = torch.arange(i * config.batch_size, (i + 1) * config.batch_size) % n
            inputs, targets = pairs[0][idx].to(device), pairs[1][idx].to(device)
        start = time.perf_counter()
        result = trainer.train_step(inputs, targets)
        _sync(device)
        ms = (time.perf_counter() - start) * 1e3
        if not result.skipped:
            losses.append(result.loss)
        if (i + 1) % epoch_steps == 0 and losses:
            trainer.end_epoch(sum(losses) / len(losses))
            losses.clear()
        loss = result.loss if math.isfinite(result.loss) else None  # strict JSON
        record = {"step": result.step, "loss": loss, "ms": round(ms, 3),
                  "surface_loss": _finite(result.surface_loss),
                  "completion_loss": _finite(result.completion_loss),
                  "flows_created": result.flows_created,
                  "flows_completed": result.flows_completed,
                  "flows_live_peak": result.flows_live_peak,
                  "steps_taken": result.steps_taken, "flow_steps": result.flow_steps,
                  "skipped": result.skipped, "grad_norm": result.grad_norm,
                  "lr": result.lr}
        records.append(record)
        if args.jsonl:
            print(json.dumps(record), flush=True)
        if jsonl_out is not None:
            jsonl_out.write(json.dumps(record) + "\n")
            jsonl_out.flush()
        now = time.perf_counter()
        if now - last_report >= 1.0 or i + 1 == args.steps or i == 0:
            print(_progress(i + 1, args.steps, records, ms, trainer.skipped_steps),
                  file=sys.stderr, flush=True)
            last_report = now
    if jsonl_out is not None:
        jsonl_out.close()
    if trainer.skipped_steps:
        print(f"note: {trainer.skipped_steps} step(s) skipped; the last because "
              f"{trainer.last_cause}", file=sys.stderr)
    if args.summary:
        print(learning.format_summary(config.preset, learning.summarize(records)), flush=True)
    if args.checkpoint:
        trainer.save_checkpoint(args.checkpoint)
        print(f"checkpoint written to {args.checkpoint}", file=sys.stderr)
    return 0


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _progress(step: int, steps: int, records: list[dict], ms: float, skipped: int) -> str:
    """The progress line: this step's loss and completion, and the trend (mean loss of the
    first and the last 10 steps so far)."""
    from energy_flow.learning import completion

    last = records[-1]
    finite = [r["loss"] for r in records if r["loss"] is not None and not r["skipped"]]
    window = 10
    trend = ""
    if len(finite) > window:
        first_mean = sum(finite[:window]) / window
        last_mean = sum(finite[-window:]) / window
        trend = f" (mean of last {window} {last_mean:.4f}, first {window} {first_mean:.4f})"
    loss = "nan" if last["loss"] is None else f"{last['loss']:.4f}"
    return (f"step {step}/{steps} loss {loss}{trend} completed {last['flows_completed']}/"
            f"{last['flows_created']} flows ({completion(last):.0%}) {ms:.0f} ms "
            f"skipped {skipped}")


def cmd_curves(args: argparse.Namespace) -> int:
    from energy_flow import learning

    runs = {}
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        records = learning.read_records(path)
        runs[name or path] = records
        print(learning.format_summary(name or path, learning.summarize(records)))
    if args.out:
        learning.plot_curves(runs, args.out)
        print(f"learning curves written to {args.out}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from energy_flow import bench

    return bench.main(args)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", action="append", choices=PRESET_NAMES,
                        help="preset(s) for the training figures (default: debug, experiment)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--steps", type=int, default=5, help="measured training steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flows", type=int, default=100_000, help="flows for the init figure")
    parser.add_argument("--quantize-preset", default="experiment")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override for the train and quantize figures")
    parser.add_argument("--only", action="append", choices=("train", "flow_init", "quantize"),
                        help="run only these parts (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    prog = name if name and name not in ("__main__.py", "-c", "-m") else "python -m energy_flow"
    parser = argparse.ArgumentParser(prog=prog)  # "energy-flow" from the console script
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train on synthetic pairs (or --data FILE.pt)")
    train.add_argument("--preset", default="debug", choices=PRESET_NAMES)
    train.add_argument("--steps", type=int, default=20)
    train.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    train.add_argument("--jsonl", action="store_true", help="one JSON object per step on stdout")
    train.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a config field (repeatable)")
    train.add_argument("--data", help=".pt file with input_embeddings/target_embeddings")
    train.add_argument("--epoch-steps", type=int, default=100,
                       help="synthetic steps per epoch (LR scheduler period)")
    train.add_argument("--checkpoint", help="write a checkpoint here at the end")
    train.add_argument("--resume", help="load this checkpoint before training")
    train.add_argument("--out", help="also write the per-step JSON records to this file")
    train.add_argument("--summary", action="store_true",
                       help="end with the learning figures: mean loss of the first 20 and last 50 "
                            "steps, their ratio, completion, flows per step, step time")
    train.set_defaults(func=cmd_train)
    curves = sub.add_parser("curves", help="learning figures and a loss / completion plot from "
                                           "train --out (or --jsonl) files")
    curves.add_argument("runs", nargs="+", metavar="[NAME=]FILE.jsonl")
    curves.add_argument("--out", help="write the plot here (PNG)")
    curves.set_defaults(func=cmd_curves)
    bench_parser = sub.add_parser("bench", help="benchmarks: train step vs GRU floor, flow "
                                                "init, quantization")
    _bench_arguments(bench_parser)
    bench_parser.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # ConfigError, DataError, CheckpointError and bad values
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from energy_flow.trainer import TrainingDiverged

        if not isinstance(exc, TrainingDiverged):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. no space left for --checkpoint (written atomically)
        print(f"error: {exc.filename or 'write'}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
