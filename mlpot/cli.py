"""``mlpot`` command line: a thin layer over the library (see ``mlpot --help``)."""

import argparse
import json
import math
import sys
from pathlib import Path


class CommandFailed(Exception):
    """A command that ran to the end but did not succeed (e.g. parts of a validation report
    failed): exit code 1 and the message, instead of 0 that scripts would take for success."""


def bounded(kind: type, low: float, high: float = math.inf, strict: bool = False):
    """An argparse ``type``: a finite ``kind`` (int or float) in [low, high], or in (low, high)
    when ``strict``. A bad value is then refused by its option name before any work, instead of
    surfacing mid-run (a negative time step as a numpy casting error, a negative step count as a
    silent no-op)."""
    noun = "an integer" if kind is int else "a number"
    lower, upper = (">", "<") if strict else ("≥", "≤")
    wanted = f"{noun} {lower} {low:g}" + (f" and {upper} {high:g}" if high < math.inf else "")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        inside = low < value < high if strict else low <= value <= high
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def model_file(text: str) -> Path:
    """The model file a command-line argument names: a file, or a shipped potential's name.

    A missing file is reported as such, not as an unknown shipped name (and vice versa)."""
    from .potentials import SHIPPED, potential_path

    path = Path(text)
    if path.is_file():
        return path
    if text.lower() in (name.lower() for name in SHIPPED):
        return potential_path(text)
    if path.exists():
        raise ValueError(f"{text!r} is a folder, not a model file; give the model file in it")
    shipped = ", ".join(SHIPPED)
    if path.suffix or path.name != text:  # model.pt, dir/model: meant as a file
        raise FileNotFoundError(f"model file {text!r} does not exist; check the path (or name a "
                                f"shipped potential: {shipped})")
    raise ValueError(f"{text!r} is neither a model file nor a shipped potential; give a model "
                     f"file or one of: {shipped}")


def read_structures(path, what: str, index=":"):
    """``ase.io.read`` of a file named on the command line, with a clear error naming ``what``
    and the file when it is missing, unreadable (ASE's readers raise OSError, ValueError,
    KeyError, ... for a malformed file) or holds no atoms."""
    import ase.io

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        images = ase.io.read(str(path), index=index)
    except Exception as error:  # noqa: BLE001 (any parser error means: not a readable file)
        raise ValueError(f"cannot read {what} {str(path)!r} ({type(error).__name__}: "
                         f"{str(error).strip()}); give a structure file ASE reads, e.g. extxyz "
                         "(the format is taken from the file extension)") from error
    frames = images if isinstance(images, list) else [images]
    if not frames or not all(len(atoms) for atoms in frames):
        raise ValueError(f"{what} {str(path)!r} holds no atoms")
    return images


def output_folder(path) -> Path:
    """``--out`` as a folder to create (later, once the input is checked); an existing file
    there is a clear error instead of a FileExistsError after the work."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {str(folder)!r} is an existing file, not a folder; give a "
                         "folder name (it is created)")
    return folder


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

    md_parser = commands.add_parser("md", help="short MD run with a shipped potential or a "
                                    "model file")
    md.add_arguments(md_parser)
    md_parser.set_defaults(run=md.run)

    neighbours = commands.add_parser("neighbours", help="neighbour-list summary of a crystal")
    neighbours.add_argument("--element", default="Si")
    neighbours.add_argument("--repeat", type=int, default=3)
    neighbours.add_argument("--cutoff", type=float, default=5.0)
    neighbours.set_defaults(run=_neighbours)
    return parser


def _input_errors():
    """What bad input raises: ValueError (mlpot's own checks), OSError (files: missing,
    unreadable, in the way) and the errors of ASE's file readers."""
    from ase.io import ParseError
    from ase.io.formats import UnknownFileTypeError

    return ValueError, OSError, ParseError, UnknownFileTypeError


def main(argv=None) -> int:
    """Run a command; the exit status: 0 success, 1 the command failed (it says what), 2 bad
    input (usage errors, from argparse, included), printed without a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # argparse: --help (0) or a usage error it has printed (2)
        return exit.code
    try:
        args.run(args)
    except CommandFailed as error:
        print(f"mlpot {args.command}: {error}", file=sys.stderr)
        return 1
    except _input_errors() as error:
        print(f"mlpot {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
