"""``python -m r1v <verb>``: utility commands (the training app is ``python -m r1v.train``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from r1v.core.registry import DISABLE_ENV, RegistryError, get_registry


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every registered component: kind, name, providing package, description (and knobs); then the
    third-party plugins that failed to load or are switched off."""
    import inspect

    reg = get_registry()
    rows = [(e.kind, e.name, e.provider, e.description) for e in reg.entries(args.kind)]
    if getattr(args, "knobs", False):  # the factory's keyword arguments and defaults: what a config node may set

        def knobs(e) -> str:
            params = inspect.signature(e.factory).parameters.values()
            return ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params
                             if p.name in e.knobs())  # fmt: skip

        rows = [(k, n, p, f"{d}  [{knobs(e)}]") for (k, n, p, d), e in zip(rows, reg.entries(args.kind), strict=True)]
    # Third-party plugins that are off, whatever --kind: a broken one's components are missing from every kind.
    rows += [("plugin", f.name, f.provider, f"FAILED to load: {f.error}") for f in reg.failed.values()]
    rows += [("plugin", n, p, f"disabled ({DISABLE_ENV})") for n, p in reg.pm.disabled.items()]
    widths = [max(len(r[i]) for r in [("KIND", "NAME", "PROVIDER", ""), *rows]) for i in range(3)]
    print(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'PROVIDER':<{widths[2]}}  DESCRIPTION")
    for kind, name, provider, desc in rows:
        print(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {provider:<{widths[2]}}  {desc}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Write synthetic samples in the documented JSONL format (a template for your own data)."""
    from r1v.data.synthetic import write_jsonl

    path = write_jsonl(args.out, args.n, args.split, args.seed, args.image_size)
    print(path)
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Every bad row of a dataset (file:line, what is wrong) and a summary, before training; exit 1 if any."""
    from pathlib import Path

    from r1v.core.config import compose
    from r1v.data.check import check

    overrides = list(args.overrides)
    if overrides and "=" not in overrides[0]:  # a JSONL file first: shorthand for data=jsonl data.train=FILE
        path = overrides.pop(0)
        if not Path(path).is_file():
            raise FileNotFoundError(f"data check: {path} does not exist (give a JSONL file or data=... overrides)")
        overrides = ["data=jsonl", f"data.train={path}", *overrides]
    reports = check(compose(overrides), args.max_tokens, args.workers, not args.no_cache)
    for report in reports:
        print("\n".join(report.lines()))
    return 1 if any(r.bad for r in reports) else 0


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    """The model, processor and fastest engine of ``--checkpoint`` (through the Python API's loader)."""
    from r1v.model.handle import load_model

    model = load_model(args.checkpoint, *args.overrides, device=args.device)
    engine, name = model.engine(temperature=args.temperature, top_p=args.top_p)
    return model.vlm, model.processor, engine, name


def cmd_chat(args: argparse.Namespace) -> int:
    """Ask a trained model about images: its <think> reasoning and answer stream to the terminal."""
    from r1v.cli.infer import chat, check_media, load_audios, load_images, load_videos

    images, audios = load_images(args.image or []), load_audios(args.audio or [])
    model, processor, engine, _ = _load(args)
    check_media(processor, audios)
    videos = load_videos(args.video or [], processor.video.frames)
    chat(model, processor, engine, images, args.question, args.max_new_tokens, args.greedy, audios=audios,
         audio_paths=list(args.audio or []), videos=videos, video_paths=list(args.video or []))  # fmt: skip
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Batch inference: one JSON line per completion (prompt, completion, extracted answer, correctness where
    the row has an answer, lengths, timing); rows already in --out are skipped, so a killed run continues."""
    from r1v.cli.infer import generate_file

    model, processor, engine, name = _load(args)
    greedy = args.n == 1 and not args.sample
    summary = generate_file(model, processor, engine, args.data, args.out, max_new_tokens=args.max_new_tokens,
                            greedy=greedy, n=args.n, batch_size=args.batch_size, limit=args.limit,
                            engine_name=name)  # fmt: skip
    acc = "" if summary["accuracy"] is None else f", accuracy {summary['accuracy']:.3f} on {summary['scored']}"
    print(f"generate: {summary['written']} completions written to {summary['out']} ({summary['already_done']} rows "
          f"already there, {summary['skipped_bad_rows']} bad rows skipped{acc}; {summary['tokens_per_s']:.0f} "
          f"tokens/s, rollout={name})")  # fmt: skip
    return 0


def _model_options(p: argparse.ArgumentParser, max_new: int) -> None:
    p.add_argument("--checkpoint", help="a run folder or weights file (default: the untrained default composition)")
    p.add_argument("--max-new-tokens", type=int, default=max_new)
    p.add_argument("--temperature", type=float, default=0.6, help="R1V's recommended 0.6")
    p.add_argument("--top-p", type=float, default=0.95, help="R1V's recommended 0.95")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("overrides", nargs="*", help="python -m r1v.train overrides (e.g. model.max_tiles=6)")


def cmd_report(args: argparse.Namespace) -> int:
    """One self-contained HTML page for runs: metric plots, and for RL runs the logged rollouts per step."""
    from r1v.reports.html import build_report

    out = args.out or str(Path(args.runs[0]) / "report.html")
    print(build_report(args.runs, out))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Build a composition on the meta device: parameters per part, trainable count, per-GPU memory plan."""
    from r1v.cli.describe import inspect

    print("\n".join(inspect(args.overrides)))
    return 0


def _inspect_epilog() -> str:
    from r1v.runtime.planner import KNOBS

    knobs = "\n".join(f"  planner.{k:<15} {v}" for k, v in KNOBS.items())
    return (
        "Overrides are those of python -m r1v.train (group=option, key=value); planner.<knob>=value sets the\n"
        "memory planner (formulas and assumptions: r1v/planner.py):\n"
        f"{knobs}\n\nExamples:\n"
        "  python -m r1v inspect model=r1v38b trainer=deepspeed_z3 stage=align\n"
        "  python -m r1v inspect model=r1v38b planner.gpus=1 planner.seq_len=8192 planner.ckpt=backbone"
    )


def export_source(source: Path) -> tuple[Path | None, Path | None]:
    """(run folder, trainable weights) for a run or a checkpoint in one; (None, None) for an InternVL folder."""
    if source.is_dir() and (source / "config.yaml").is_file():
        from r1v.runtime.runs import trained_weights

        weights = trained_weights(source)
        if not weights.is_file():
            raise FileNotFoundError(f"export: run folder {source} has no final/trainable.safetensors (unfinished? "
                                    f"give one of its checkpoints, e.g. {source}/checkpoints/last.ckpt)")  # fmt: skip
        return source, weights
    if source.is_file() and source.suffix in (".safetensors", ".ckpt"):
        run = next((p for p in source.parents if (p / "config.yaml").is_file()), None)
        if run is None:
            raise FileNotFoundError(f"export: checkpoint {source} is not inside a run folder (no config.yaml above "
                                    f"it), so the model it belongs to is unknown")  # fmt: skip
        return run, source
    if source.is_dir() and (source / "config.json").is_file():
        return None, None
    raise FileNotFoundError(
        f"export: {source} is neither a run folder (config.yaml + final/trainable.safetensors), "
        f"a checkpoint inside one (.safetensors, .ckpt), nor an InternVL-chat folder (config.json)"
    )


def cmd_export(args: argparse.Namespace) -> int:
    """Write a finished run (rebuilt from its config.yaml, trained weights loaded), a checkpoint inside a run,
    or an InternVL-chat folder (re-export, e.g. to re-shard) as a Skywork-R1V / InternVL-chat folder."""
    from r1v.model.handle import load_model
    from r1v.model.internvl import parse_size

    export_source(Path(args.source))  # refuse what has no known composition, in one line
    shard = parse_size(args.shard_size)
    model = load_model(args.source, device="cpu", merge_lora=not args.unmerged)
    print(model.export(args.out, shard_size=shard, overwrite=args.overwrite))
    return 0


EXPORT_EPILOG = """\
The output holds config.json (the source folder's, vocab size etc. updated; generated from the model when
the run was composed from parts), model.safetensors or model-0000i-of-0000n.safetensors + index with
InternVL key names (vision_model.*, mlp1.*, language_model.*), and the tokenizer with the chat template.
Only InternViT -> mlp -> Qwen2 models have this layout. Written to OUT.tmp-<random>, then renamed.

Examples:
  python -m r1v export runs/sft-r1v runs/sft-r1v/internvl
  python -m r1v export runs/sft-r1v/checkpoints/last.ckpt out/step-last
  python -m r1v export /models/Skywork-R1V-38B /models/Skywork-R1V-38B-2GB --shard-size 2GB
  python -m r1v export runs/grpo-lora runs/grpo-lora/internvl --unmerged   # base + OUT/lora (PEFT)

A LoRA run (stage.lora) is exported with its LoRA merged into the weights, unless --unmerged."""


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw loss, reward parts, accuracy and response length of one or more runs (PNG files)."""
    from r1v.reports.plots import plot_runs

    out = args.out or str(Path(args.runs[0]) / "plots")
    for path in plot_runs(args.runs, out):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1v", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("plugins", help=cmd_plugins.__doc__, description=cmd_plugins.__doc__)
    p.add_argument("--kind", help="only this kind (vision, adapter, backbone, reward, ...)")
    p.add_argument("--knobs", action="store_true", help="also list each factory's knobs and defaults")
    p.set_defaults(func=cmd_plugins)
    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_verb", required=True)
    p = data.add_parser("synth", help=cmd_data_synth.__doc__, description=cmd_data_synth.__doc__)
    p.add_argument("--out", required=True, help="output folder (gets <split>.jsonl and images/)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("check", help=cmd_data_check.__doc__, description=" ".join(cmd_data_check.__doc__.split()),
                        epilog="examples:\n  python -m r1v data check data/train.jsonl model=r1v_small\n"
                               "  python -m r1v data check data=jsonl data.train=a.jsonl data.val=b.jsonl stage=sft",
                        formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("overrides", nargs="*", help="a JSONL file and/or python -m r1v.train overrides (model=, data=)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="longest sample after image-token expansion (default: the backbone's max_position_embeddings)",
    )
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1, help="processes checking Parquet / save_to_disk shards in parallel "
                   "(default: the CPUs this process may use)")  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="re-check every shard (default: shards unchanged since "
                   "their last check are read from <shard folder>/.r1v_check/)")  # fmt: skip
    p.set_defaults(func=cmd_data_check)
    p = sub.add_parser(
        "chat",
        help=cmd_chat.__doc__,
        description=cmd_chat.__doc__,
        epilog="example: python -m r1v chat --checkpoint runs/sft --image cat.png --question 'How many?'",
    )
    _model_options(p, 2048)
    p.add_argument("--image", action="append", help="an image file (repeat for several)")
    p.add_argument("--audio", action="append", help="an audio clip (repeat for several; needs an audio encoder)")
    p.add_argument("--video", action="append", help="a video: data.video.frames frames through the vision encoder")
    p.add_argument("--question", help="ask once and exit (default: an interactive loop)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("generate", help=cmd_generate.__doc__, description=" ".join(cmd_generate.__doc__.split()))
    _model_options(p, 1024)
    p.add_argument("--data", required=True, help="JSONL rows (question [+ images, answer]; the training schema)")
    p.add_argument("--out", required=True, help="JSONL file to write (appended to: a killed run continues)")
    p.add_argument("--n", type=int, default=1, help="completions per row (sampled when > 1)")
    p.add_argument("--sample", action="store_true", help="sample even with --n 1 (default: greedy)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="answer at most this many new rows")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("inspect", help=cmd_inspect.__doc__, description=cmd_inspect.__doc__,
                       epilog=_inspect_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("overrides", nargs="*", help="Hydra overrides (key=value) and planner.<knob>=value")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("export", help="write a run or checkpoint as a Skywork-R1V / InternVL-chat folder",
                       description=" ".join(cmd_export.__doc__.split()), epilog=EXPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("source", help="a run folder, a checkpoint inside one (.safetensors/.ckpt), or an InternVL folder")
    p.add_argument("out", help="the folder to write (must not exist, unless --overwrite)")
    p.add_argument("--shard-size", default="5GB", help="largest weight file (default 5GB; e.g. 2GB, 500MB)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (atomically)")
    p.add_argument("--unmerged", action="store_true", help="a LoRA run: write the base and the LoRA weights apart "
                   "(OUT/lora, a PEFT adapter folder) instead of merging them into the weights")  # fmt: skip
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.csv)")
    p.add_argument("--out", default=None, help="the HTML file (default: <first run>/report.html)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("plot", help=cmd_plot.__doc__, description=cmd_plot.__doc__)
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.csv); several are overlaid")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: <first run>/plots)")
    p.set_defaults(func=cmd_plot)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # a user error (config, data, weights, checkpoint ...) is one line and exit 2
        from r1v.core.errors import USER_ERRORS

        if not isinstance(e, (RegistryError, ValueError, FileNotFoundError, FileExistsError, *USER_ERRORS)):
            raise
        print(f"r1v: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
