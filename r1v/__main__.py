"""``python -m r1v <verb>``: utility commands (the training app is ``python -m r1v.train``)."""

from __future__ import annotations

import argparse
import sys

from r1v.registry import RegistryError, get_registry


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every registered component: kind, name, providing package, description."""
    reg = get_registry()
    rows = [(e.kind, e.name, e.provider, e.description) for e in reg.entries(args.kind)]
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


def cmd_inspect(args: argparse.Namespace) -> int:
    """Build a composition on the meta device: parameters per part, trainable count, per-GPU memory plan."""
    from r1v.inspect import inspect

    print("\n".join(inspect(args.overrides)))
    return 0


def _inspect_epilog() -> str:
    from r1v.planner import KNOBS

    knobs = "\n".join(f"  planner.{k:<15} {v}" for k, v in KNOBS.items())
    return (
        "Overrides are those of python -m r1v.train (group=option, key=value); planner.<knob>=value sets the\n"
        "memory planner (formulas and assumptions: r1v/planner.py):\n"
        f"{knobs}\n\nExamples:\n"
        "  python -m r1v inspect model=r1v38b trainer=deepspeed_z3 stage=align\n"
        "  python -m r1v inspect model=r1v38b planner.gpus=1 planner.seq_len=8192 planner.ckpt=backbone"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1v", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("plugins", help=cmd_plugins.__doc__, description=cmd_plugins.__doc__)
    p.add_argument("--kind", help="only this kind (vision, adapter, backbone, reward, ...)")
    p.set_defaults(func=cmd_plugins)
    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_verb", required=True)
    p = data.add_parser("synth", help=cmd_data_synth.__doc__, description=cmd_data_synth.__doc__)
    p.add_argument("--out", required=True, help="output folder (gets <split>.jsonl and images/)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.set_defaults(func=cmd_data_synth)
    p = sub.add_parser("inspect", help=cmd_inspect.__doc__, description=cmd_inspect.__doc__,
                       epilog=_inspect_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("overrides", nargs="*", help="Hydra overrides (key=value) and planner.<knob>=value")
    p.set_defaults(func=cmd_inspect)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (RegistryError, ValueError, FileNotFoundError) as e:
        print(f"r1v: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
