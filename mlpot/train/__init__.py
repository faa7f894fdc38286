"""``mlpot train``: fit a model kind to labelled structures (see docs/training.md).

Modules, one concept each: ``config`` (YAML + overrides + validation), ``units``, ``data``
(reading, labels, checks, splits, reference energies), ``batch`` (neighbour lists once, batched
graphs, torch edge sums), ``loss``, ``ema``, ``model_setup`` (new model or fine-tuning),
``distributed`` (data parallel), ``loop`` (epochs, checkpoints, resume, final stage), ``report``
(progress bar, log, CSV, tables, plots). Only the standard library is imported here, so that the
``mlpot`` command starts fast.
"""

import os


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?",
                        help="YAML training config (optional with --resume: the checkpoint's)")
    parser.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="overrides",
                        help="override a config value, e.g. --set training.epochs=50 "
                             "--set model.hyperparameters.cutoff=5.0 (repeatable)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                        help="continue exactly from a checkpoint (default: "
                             "<output.directory>/checkpoints/last.pt)")
    parser.add_argument("--export", metavar="MODEL_FILE",
                        help="deployable model file to write at the end (overrides output.export; "
                             "relative to the current directory)")
    parser.add_argument("--output", metavar="DIR",
                        help="output directory (overrides output.directory)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel training processes to spawn (or launch with torchrun)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after", type=int, metavar="EPOCHS",
                        help="stop after this many epochs of this run, leaving a checkpoint to "
                             "--resume from (e.g. for time-limited queues)")


def _overrides(args):
    overrides = list(args.overrides)
    if args.export:
        overrides.append(f"output.export={os.path.abspath(args.export)}")
    if args.output:
        overrides.append(f"output.directory={os.path.abspath(args.output)}")
    if args.no_progress:
        overrides.append("output.progress=false")
    return overrides


def run(args) -> dict:
    """Entry point of ``mlpot train`` (also usable from Python with an argparse namespace)."""
    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        import copy

        from .distributed import spawn

        worker_args = copy.copy(args)
        worker_args.nproc = 1  # each spawned worker runs the plain path
        spawn(args.nproc, _train, worker_args)
        return {"world_size": args.nproc}
    return _train(args)


def _config_folder(args):
    """The config file's folder (paths in the model's provenance are recorded relative to it)."""
    from pathlib import Path

    return str(Path(args.config).resolve().parent) if args.config is not None else None


def _train(args) -> dict:
    from pathlib import Path

    from .config import load_config
    from .distributed import from_environment, shutdown
    from .loop import check_resumable, run_training

    overrides = _overrides(args)
    if args.config is not None:
        committee_config = load_config(args.config, overrides)
        if committee_config["training"]["committee"]["members"] > 1:
            return _train_committee(args, committee_config)
    resume_state = None
    if args.resume is not None:
        from ..checkpoint import load_checkpoint

        if args.resume:
            checkpoint = Path(args.resume)
        else:
            if args.config is None:
                raise ValueError("--resume without a checkpoint path needs the config file")
            directory = load_config(args.config, overrides)["output"]["directory"]
            checkpoint = Path(directory) / "checkpoints" / "last.pt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist")
        _, resume_state = load_checkpoint(checkpoint)
        if "training_state" not in resume_state:
            raise ValueError(f"{str(checkpoint)!r} has no training state (it is a best-model "
                             "checkpoint); resume from checkpoints/last.pt, or fine-tune from it "
                             "with model.init_from")
        saved = resume_state["config"]
        config = load_config(args.config, overrides, base=saved)
        check_resumable(saved, config)
        resume = str(checkpoint)
    else:
        if args.config is None:
            raise ValueError("give a config file (mlpot train config.yaml), or --resume CHECKPOINT")
        config = load_config(args.config, overrides)
        resume = None

    context = from_environment(config["training"]["device"])
    try:
        return run_training(config, context, resume=resume, stop_after=args.stop_after,
                            resume_state=resume_state, config_folder=_config_folder(args))
    finally:
        shutdown()


def _train_committee(args, config) -> dict:
    """``training.committee.members > 1``: members one after the other (see ``committee``)."""
    from .committee import run_committee
    from .config import ConfigError
    from .distributed import from_environment, shutdown

    if args.resume:
        raise ConfigError("a committee resumes from its config (mlpot train CONFIG --resume, no "
                          "checkpoint path): every member continues from its own directory")
    context = from_environment(config["training"]["device"])
    try:
        return run_committee(config, context, resume=args.resume is not None,
                             stop_after=args.stop_after, config_folder=_config_folder(args))
    finally:
        shutdown()
