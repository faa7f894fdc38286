"""Committee training (``training.committee.members > 1``): M members, one after the other.

Member k is an ordinary ``mlpot train`` run of the same config in ``<directory>/member_k`` with
``training.seed + k`` (other initial weights and batch order) and, with
``training.committee.bootstrap``, on a bootstrap resample of the training set drawn from that
seed (validation and test sets are the same for every member). Then the members' best EMA weights
form one ``Committee``: its mean is evaluated on every set (``metrics.md``/``metrics.json``), it
is checkpointed (``checkpoints/best.pt``) and exported as ONE committee file (``output.export``).

``--resume`` reuses finished members, resumes an unfinished one from its ``last.pt`` and starts
the others; ``--stop-after N`` limits each member's run to N epochs and stops at the first member
that has not finished.
"""

import copy
from pathlib import Path
from typing import Dict, Optional

from ..checkpoint import load_checkpoint, save_checkpoint
from ..model_file import DTYPES, resolve_device
from . import report
from .batch import build_graphs
from .config import ConfigError
from .distributed import Context, rank_device
from .loop import CHECKPOINT_DIR, Trainer, _atomic_save, _split, _to_training_dtype
from .loop import check_resumable, export_if_asked, read_datasets, rmse_summary, run_training


def member_config(config: Dict, k: int) -> Dict:
    """The config of member ``k``: a plain run (one member) with its own seed and directory."""
    member = copy.deepcopy(config)
    member["training"]["seed"] = config["training"]["seed"] + k
    member["training"]["committee"] = {"members": 1,
                                       "bootstrap": config["training"]["committee"]["bootstrap"]}
    member["output"]["directory"] = str(Path(config["output"]["directory"]) / f"member_{k}")
    member["output"]["export"] = None
    return member


def run_committee(config: Dict, context: Context, resume: bool = False,
                  stop_after: Optional[int] = None, config_folder: Optional[str] = None) -> Dict:
    """Train the members, then evaluate, checkpoint and export the committee."""
    spec = config["training"]["committee"]
    count = spec["members"]
    if count < 2:
        raise ConfigError(f"training.committee.members must be at least 2 for a committee, got "
                          f"{count}")
    directory = Path(config["output"]["directory"])
    if context.is_main:
        (directory / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    log = report.Log(directory / "train.log", context.is_main)
    members = [member_config(config, k) for k in range(count)]
    summaries = []
    for k, member in enumerate(members):
        last = Path(member["output"]["directory"]) / CHECKPOINT_DIR / "last.pt"
        options = {}
        if resume and last.is_file():
            _, state = load_checkpoint(last)
            check_resumable(state["config"], member)
            options = {"resume": str(last), "resume_state": state}
        data = "a bootstrap resample of the training set" if spec["bootstrap"] else \
            "the training set"
        log(f"committee member {k + 1}/{count}: seed {member['training']['seed']}, {data}, "
            f"in {member['output']['directory']}" + (" (resumed)" if options else ""))
        summary = run_training(member, context, stop_after=stop_after,
                               config_folder=config_folder, **options)
        summaries.append(summary)
        if not summary.get("finished", True):
            log(f"committee stopped in member {k + 1}/{count}; continue with `mlpot train "
                "CONFIG --resume` (finished members are kept)")
            return {"directory": str(directory), "members": summaries, "finished": False}

    result = {"directory": str(directory), "members": summaries, "finished": True}
    if context.is_main:
        result.update(_finish(config, members, directory, log))
    context.barrier()
    return result


def _finish(config: Dict, members, directory: Path, log) -> Dict:
    """Committee of the members' best EMA weights → metrics, checkpoint, committee file."""
    from ..models.committee import Committee

    training, output = config["training"], config["output"]
    models, member_metadata = [], []
    for member in members:
        model, state = load_checkpoint(Path(member["output"]["directory"]) / CHECKPOINT_DIR
                                       / "best.pt")
        models.append(model)
        member_metadata.append(state.get("metadata", {}))
    device = rank_device(resolve_device(training["device"]), Context())
    dtype = DTYPES[training["dtype"]]
    committee = _to_training_dtype(Committee(models).to(device), dtype)
    metrics = committee_metrics(committee, config, device, dtype)
    table = report.write_metrics(metrics, directory)
    log(f"committee of {len(models)} members (mean of the best EMA weights); errors of the "
        f"mean:\n{table.rstrip()}")

    metadata = copy.deepcopy(member_metadata[0])
    provenance = metadata.setdefault("training", {})
    for key in ("epochs", "best_epoch", "metrics"):
        provenance.pop(key, None)
    provenance.setdefault("settings", {})["seed"] = training["seed"]
    provenance["metrics"] = metrics
    provenance["committee"] = {
        "members": len(models),
        "bootstrap": training["committee"]["bootstrap"],
        "seeds": [m["training"]["seed"] for m in members],
        "member_directories": [Path(m["output"]["directory"]).name for m in members],
        "member_best_epochs": [m.get("training", {}).get("best_epoch") for m in member_metadata],
        "member_metrics": [m.get("training", {}).get("metrics") for m in member_metadata],
    }
    for key in [k for k in metadata if k.endswith("_rmse")]:
        del metadata[key]
    metadata.update(rmse_summary(metrics, f", committee mean of {len(models)}"))

    _atomic_save(lambda p: save_checkpoint(committee, p, metadata=metadata, config=config),
                 directory / CHECKPOINT_DIR / "best.pt")
    result = {"metrics": metrics, "metadata": metadata,
              "checkpoint": str(directory / CHECKPOINT_DIR / "best.pt")}
    exported = export_if_asked(committee, output, directory, metadata, log)
    if exported:
        result["export"] = exported
    return result


def committee_metrics(committee, config: Dict, device, dtype) -> Dict:
    """Errors of the committee mean on the (full, not resampled) train, validation, test sets."""
    datasets = read_datasets(config)
    sets, _ = _split(config, datasets["train"], datasets["validation"], datasets["test"])
    graphs = {name: build_graphs(structures, committee.species, committee.cutoff, dtype)
              for name, structures in sets.items()}
    single = Context()
    evaluator = Trainer(committee, config, single, graphs["train"], graphs["validation"], device,
                        dtype)
    return {name: evaluator.evaluate(committee, set_graphs, context=single)
            for name, set_graphs in graphs.items() if set_graphs}
