"""``mlpot`` command line: a thin layer over the library (see ``mlpot --help``)."""

import argparse
import json
import sys


def _info(args):
    from .model_file import read_metadata

    record = read_metadata(args.model)
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
        return
    rows = [
        ("model kind", record["model_kind"]),
        ("species", " ".join(record["species"])),
        ("cutoff", f"{record['cutoff']:g} Å"),
        ("message-passing layers", record["num_interactions"]),
        ("interaction range", f"{record['interaction_range']:g} Å (LAMMPS ghost shell)"),
        ("dtype", record["dtype"]),
        ("units", f"{record['units']['energy']}, {record['units']['length']}"),
        ("outputs", ", ".join(record["outputs"])),
        ("format version", record["format_version"]),
        ("exported with", f"mlpot {record['mlpot_version']}, torch {record['torch_version']}"),
        ("exported on", record["exported"]),
    ]
    rows += [(f"metadata: {key}", _short(value)) for key, value in record["metadata"].items()]
    width = max(len(name) for name, _ in rows)
    print(f"{args.model}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def _short(value, limit: int = 100) -> str:
    """One table cell: nested provenance is summarised; `mlpot info --json` shows all of it."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[:limit - 20] + " … (see --json)"


def _export(args):
    from .checkpoint import load_checkpoint
    from .model_file import export_model

    model, state = load_checkpoint(args.checkpoint)
    metadata = {**state.get("metadata", {}), **dict(item.split("=", 1) for item in args.metadata)}
    path = export_model(model, args.output, metadata=metadata, dtype=args.dtype)
    print(f"wrote {path}")


def _neighbours(args):
    import ase.build
    import numpy as np

    from .neighbours import neighbour_list

    atoms = ase.build.bulk(args.element, cubic=True) * (args.repeat, args.repeat, args.repeat)
    i, d = neighbour_list("id", atoms, args.cutoff)
    counts = np.bincount(i, minlength=len(atoms))
    print(f"{atoms.get_chemical_formula()}: {len(atoms)} atoms, cutoff {args.cutoff} Å")
    print(f"  pairs (full list)   {len(i)}")
    print(f"  neighbours per atom {counts.min()}–{counts.max()} (mean {counts.mean():.2f})")
    print(f"  shortest distance   {d.min():.4f} Å")


def build_parser():
    parser = argparse.ArgumentParser(prog="mlpot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print a model file's metadata")
    info.add_argument("model")
    info.add_argument("--json", action="store_true", help="print the raw metadata record")
    info.set_defaults(run=_info)

    export = commands.add_parser("export", help="turn a training checkpoint into a model file")
    export.add_argument("checkpoint")
    export.add_argument("output")
    export.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    export.add_argument("--metadata", nargs="*", default=[], metavar="KEY=VALUE",
                        help="free-form provenance, e.g. author=... data=...")
    export.set_defaults(run=_export)

    from . import train  # the training command lives with the training code

    train_parser = commands.add_parser("train", help="train a model from a YAML config")
    train.add_arguments(train_parser)
    train_parser.set_defaults(run=train.run)

    from . import calibration

    calibrate = commands.add_parser("calibrate",
                                    help="conformal calibration of a committee's force deviation")
    calibration.add_arguments(calibrate)
    calibrate.set_defaults(run=calibration.run)

    from . import validate

    validate_parser = commands.add_parser("validate",
                                          help="validation report of a model against its reference")
    validate.add_arguments(validate_parser)
    validate_parser.set_defaults(run=validate.run)

    from . import md

    md_parser = commands.add_parser("md", help="short MD run with a shipped potential")
    md.add_arguments(md_parser)
    md_parser.set_defaults(run=md.run)

    neighbours = commands.add_parser("neighbours", help="neighbour-list summary of a crystal")
    neighbours.add_argument("--element", default="Si")
    neighbours.add_argument("--repeat", type=int, default=3)
    neighbours.add_argument("--cutoff", type=float, default=5.0)
    neighbours.set_defaults(run=_neighbours)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"mlpot {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
