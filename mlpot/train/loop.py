"""The training run: set-up, epochs (optimizer, scheduler, EMA, early stopping, checkpoints),
exact resume, and the final evaluation, plots and export.

Determinism: the weights are initialised from ``training.seed``; the batches of epoch e are a
permutation drawn from ``(seed, e)``, so they do not depend on any RNG state; everything else
that changes during training (weights, optimizer, scheduler, EMA, best weights, early-stopping
counter, history and the RNG states) is in every checkpoint. Resuming from a checkpoint therefore
continues bit for bit where the uninterrupted run would be.
"""

import copy
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..checkpoint import build_model, save_checkpoint
from ..model_file import DTYPES, export_model, resolve_device
from . import report
from .batch import Graph, build_graphs, collate, predict
from .config import (DEFAULTS, RESUMABLE_CHANGES, ConfigError, differences, map_paths, merge,
                     normalise_paths)
from .data import (DataError, check_species, read_dataset, species_of, split_indices)
from .distributed import Context, rank_device
from .ema import EMA
from .loss import Loss, global_counts, new_sums
from .model_setup import create_model, set_normalisation

CHECKPOINT_DIR = "checkpoints"


class TrainingDiverged(ValueError):
    """The monitored loss became NaN or infinite."""


# -------------------------------------------------------------------------------- the trainer


def build_optimizer(model: torch.nn.Module, config: Dict) -> torch.optim.Optimizer:
    options = config["training"]["optimizer"]
    cls = torch.optim.AdamW if options["name"] == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=options["lr"], betas=tuple(options["betas"]),
               weight_decay=options["weight_decay"])


def build_scheduler(optimizer: torch.optim.Optimizer, config: Dict):
    options, epochs = config["training"]["scheduler"], config["training"]["epochs"]
    if options["name"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=options["factor"], patience=options["patience"],
            threshold=options["threshold"], min_lr=options["min_lr"])
    base = config["training"]["optimizer"]["lr"]
    if options["name"] == "cosine":
        warmup, floor = options["warmup_epochs"], min(options["min_lr"] / base, 1.0)

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = min(1.0, (epoch - warmup) / max(1, epochs - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None


class Trainer:
    """Epochs over precomputed graphs, data-parallel over the ranks of ``context``."""

    def __init__(self, model: torch.nn.Module, config: Dict, context: Context,
                 train: List[Graph], validation: List[Graph], device: torch.device,
                 dtype: torch.dtype):
        self.model, self.config, self.context = model, config, context
        self.train_graphs, self.validation_graphs = train, validation
        self.device, self.dtype = device, dtype
        training = config["training"]
        self.loss = Loss(training["loss"])
        self.batch_size = training["batch_size"]
        self.eval_batch_size = training["eval_batch_size"] or training["batch_size"]
        self.seed = training["seed"]
        self.clip = training["gradient_clip"]
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.ema = EMA(model, training["ema_decay"])
        self.epoch = 0              # epochs completed
        self.best = {"epoch": 0, "loss": math.inf,
                     "state": copy.deepcopy(self.ema.model.state_dict())}
        self.bad_epochs = 0
        self.stopped_early = False
        self.history: List[Dict] = []

    # ---- one epoch
    def batches(self, epoch: int) -> List[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_graphs))
        return [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]

    def train_epoch(self, progress) -> Dict[str, float]:
        self.model.train()
        sums = new_sums()
        batches = self.batches(self.epoch)
        bar = report.progress(batches, len(batches), f"epoch {self.epoch + 1}",
                              progress if self.context.is_main else False)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        for indices in bar:
            graphs = [self.train_graphs[i] for i in indices]
            counts = global_counts(graphs, self.loss.needs_stress)
            local = self.context.share(graphs)
            self.optimizer.zero_grad(set_to_none=True)
            if local:
                batch = collate(local, self.dtype).to(self.device)
                prediction = predict(self.model, batch, stress=bool(batch.stress_mask.any()),
                                     create_graph=True)
                errors = self.loss.errors(prediction, batch)
                value = self.loss(errors, counts)
                if value is not None:
                    value.backward()
                self.loss.accumulate(sums, errors)
            for p in parameters:  # a zero, not a missing, gradient: same steps on every rank
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.context.sum_gradients(parameters)
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(parameters, self.clip)
            self.optimizer.step()
            self.ema.update(self.model)
        self.context.sum_(sums)
        return self.loss.metrics(sums)

    def evaluate(self, model: torch.nn.Module, graphs: List[Graph],
                 context: Optional[Context] = None, collect: bool = False) -> Dict:
        """Errors of ``model`` on ``graphs`` (and, with ``collect``, every prediction)."""
        context = context or self.context
        model.eval()
        sums = new_sums()
        collected = {"energy": ([], []), "forces": ([], []), "stress": ([], [])}
        for start in range(0, len(graphs), self.eval_batch_size):
            local = context.share(graphs[start:start + self.eval_batch_size])
            if not local:
                continue
            batch = collate(local, self.dtype).to(self.device)
            prediction = predict(model, batch, stress=bool(batch.stress_mask.any()),
                                 create_graph=False)
            errors = self.loss.errors({k: v.detach() for k, v in prediction.items()}, batch)
            self.loss.accumulate(sums, errors)
            if collect:
                reference = {"energy": batch.energy / batch.num_atoms,
                             "forces": batch.forces[batch.force_mask].reshape(-1),
                             "stress": batch.stress[batch.stress_mask].reshape(-1)}
                for term, error in errors.items():
                    collected[term][0].append(reference[term].cpu().double().numpy())
                    collected[term][1].append((reference[term] + error).cpu().double().numpy())
        context.sum_(sums)
        metrics = self.loss.metrics(sums)
        metrics["structures"] = len(graphs)
        if collect:
            metrics["_predictions"] = {
                term: (np.concatenate(r), np.concatenate(p))
                for term, (r, p) in collected.items() if r and sum(map(len, r))}
        return metrics

    # ---- state
    def state_dict(self) -> Dict:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "ema": self.ema.state_dict(),
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
        }

    def load_state_dict(self, state: Dict) -> None:
        self.epoch = state["epoch"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])
        self.best = state["best"]
        self.bad_epochs = state["bad_epochs"]
        self.stopped_early = state["stopped_early"]
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])


# ------------------------------------------------------------------------------------- set-up


def _to_training_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Parameters in the training dtype; buffers keep theirs (kinds keep e.g. the per-species
    energy shift in float64 and cast it in ``forward``, so that a float64 export is exact)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.to(dtype)
    return model


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _split(config: Dict, train_set, validation_set, test_set):
    split = config["data"]["split"]
    n = len(train_set.structures)
    train_idx, val_idx, test_idx = split_indices(
        n, 0.0 if validation_set else split["validation"], 0.0 if test_set else split["test"],
        split["seed"])
    pick = lambda idx: [train_set.structures[i] for i in idx]  # noqa: E731
    sets = {
        "train": pick(train_idx),
        "validation": validation_set.structures if validation_set else pick(val_idx),
        "test": test_set.structures if test_set else pick(test_idx),
    }
    indices = {"train": train_idx.tolist(),
               "validation": None if validation_set else val_idx.tolist(),
               "test": None if test_set else test_idx.tolist()}
    return sets, indices


def read_datasets(config: Dict) -> Dict:
    """The data sets that ``data.train``/``validation``/``test`` name (None where none is named);
    with a force loss, every structure must have forces."""
    data = config["data"]
    need_forces = config["training"]["loss"]["forces"] > 0
    return {name: read_dataset(data[name], data, need_forces) if data[name] else None
            for name in ("train", "validation", "test")}


def _atomic_save(save, path: Path) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    save(temporary)
    os.replace(temporary, path)


def _relative_inside(path, folder) -> Optional[Path]:
    """``path`` relative to ``folder`` (both resolved) if it lies inside it, else None."""
    try:
        return Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return None


def _portable_path(path: str, folder: Optional[str]) -> str:
    """``path`` relative to ``folder`` (the config file's folder) when it lies inside it, so that a
    shipped model file does not record the trainer's directories; other paths are kept as given."""
    inside = None if folder is None else _relative_inside(path, folder)
    return path if inside is None else inside.as_posix()


def _config_copy(config: Dict, directory: Path, folder: Optional[str]) -> Dict:
    """The config as used, for ``directory/config.yaml``: its paths that lie inside ``folder``
    (the config file's folder) are written relative to ``directory``, where the copy lies, so the
    copy runs as is from there (and from a sibling folder) and records no trainer's directories;
    others, and all when ``directory`` is outside ``folder``, are kept as given."""
    # an output directory elsewhere (e.g. --output /scratch/run) keeps absolute paths
    if folder is None or _relative_inside(directory, folder) is None:
        return config
    here = Path(directory).resolve()

    def relative(path):
        if _relative_inside(path, folder) is None:
            return path
        return Path(os.path.relpath(Path(path).resolve(), here)).as_posix()

    written = map_paths(copy.deepcopy(config), relative)
    if written["output"]["directory"] == ".":
        # "../run" rather than ".": the same folder from here, and the run folder from a sibling
        # copy (potentials/NAME/training/config.yaml next to potentials/NAME/run)
        written["output"]["directory"] = f"../{here.name}"
    return written


def _provenance(config: Dict, datasets: Dict, indices: Dict, normalisation: Dict,
                source: Optional[Dict], species: List[str],
                folder: Optional[str] = None) -> Dict:
    digest = hashlib.sha256(json.dumps(indices, sort_keys=True).encode()).hexdigest()
    files = {name: [{**r, "path": _portable_path(r["path"], folder)} for r in ds.files]
             if ds else None for name, ds in datasets.items()}
    train_files = ", ".join(f"{r['name']} ({r['structures']} structures, sha256 {r['sha256'][:12]})"
                            for r in files["train"])
    training = {
        "data": files,
        "data_keys": config["data"]["keys"],
        "data_units": config["data"]["units"],
        "data_index": config["data"]["index"],
        "split": {"seed": config["data"]["split"]["seed"],
                  "fractions": {k: config["data"]["split"][k] for k in ("validation", "test")},
                  "sizes": indices["sizes"],
                  "indices_sha256": digest},
        "species": species,
        **normalisation,
        "settings": {k: config["training"][k] for k in (
            "seed", "epochs", "batch_size", "dtype", "loss", "optimizer", "scheduler", "ema_decay",
            "early_stopping", "gradient_clip")},
    }
    if source is not None:
        training["finetuned_from"] = {k: v for k, v in source.items() if k != "metadata"}
        training["finetuned_from"]["path"] = _portable_path(source["path"], folder)
        training["finetuned_from"]["provenance"] = source.get("metadata", {})
    return {
        "reference_method": config["data"]["reference_method"] or "unspecified",
        "training_data": train_files,
        "training": training,
    }


def _data_fingerprint(datasets: Dict) -> List:
    return [(name, [r["sha256"] for r in ds.files]) for name, ds in datasets.items() if ds]


# ------------------------------------------------------------------------------------ the run


def run_training(config: Dict, context: Context, resume: Optional[str] = None,
                 stop_after: Optional[int] = None, resume_state: Optional[Dict] = None,
                 config_folder: Optional[str] = None) -> Dict:
    """Train as ``config`` says; returns a summary (paths, best epoch, final metrics).

    ``config_folder``: the config file's folder; data and source-model paths inside it are
    recorded relative to it in the model's provenance (absolute when it is not given).
    """
    training, output = config["training"], config["output"]
    if training["num_threads"]:
        torch.set_num_threads(training["num_threads"])
    device = rank_device(resolve_device(training["device"]), context)
    dtype = DTYPES[training["dtype"]]
    _seed_everything(training["seed"])
    directory = Path(output["directory"])
    checkpoints = directory / CHECKPOINT_DIR
    log = report.Log(directory / "train.log", context.is_main)
    if context.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)

    # data
    data = config["data"]
    datasets = read_datasets(config)
    everything = [s for ds in datasets.values() if ds for s in ds.structures]

    # model
    if resume_state is not None:
        model = build_model(resume_state["model_kind"], resume_state["hyperparameters"])
        source, normalisation = None, {}
    else:
        model, source = create_model(config, species_of(everything))
    check_species(everything, model.species)
    sets, indices = _split(config, datasets["train"], datasets["validation"], datasets["test"])
    if training["committee"]["bootstrap"]:  # a committee member's resample, drawn from its seed
        draw = np.random.default_rng([training["seed"], 1]).integers(0, len(sets["train"]),
                                                                     len(sets["train"]))
        sets["train"] = [sets["train"][k] for k in draw]
        indices["train"] = [indices["train"][k] for k in draw]
    if training["loss"]["stress"] > 0 and not any(s.stress is not None for s in sets["train"]):
        raise DataError(f"training.loss.stress > 0 but no training structure has a stress (looked "
                        f"for data.keys.stress {data['keys']['stress']!r} and data.keys.virial "
                        f"{data['keys']['virial']!r}; non-periodic structures have none)")
    if resume_state is None:
        normalisation = set_normalisation(model, config, sets["train"], source is not None,
                                          source["species"] if source else ())
    model = _to_training_dtype(model.to(device), dtype)
    context.broadcast_module_(model)

    graphs = {name: build_graphs(structures, model.species, model.cutoff, dtype)
              for name, structures in sets.items()}
    indices["sizes"] = {name: len(g) for name, g in graphs.items()}
    trainer = Trainer(model, config, context, graphs["train"], graphs["validation"], device, dtype)

    if resume_state is not None:
        if resume_state.get("data_fingerprint") != _data_fingerprint(datasets):
            raise ConfigError("the data files changed since the checkpoint was written; an exact "
                              "resume needs the same data (fine-tune with model.init_from instead)")
        trainer.load_state_dict(resume_state["training_state"])
        metadata = resume_state["metadata"]
        log(f"resumed from {resume} after epoch {trainer.epoch}")
    else:
        metadata = _provenance(config, datasets, indices, normalisation, source,
                               list(model.species), config_folder)
        sizes = ", ".join(f"{len(g)} {name}" for name, g in graphs.items())
        log(f"{model.kind} model, species {' '.join(model.species)}, cutoff {model.cutoff:g} Å, "
            f"{sum(p.numel() for p in model.parameters())} parameters; structures: {sizes}")
        if normalisation:
            refs = ", ".join(f"{s} {e:.4g}" for s, e in normalisation["reference_energies"].items())
            scale = next(iter(normalisation["energy_scale"].values()))
            log(f"reference energies (eV): {refs}; energy scale {scale:.4g} eV")
        if context.is_main:
            split = {k: v for k, v in indices.items() if k != "sizes"}
            (directory / "splits.json").write_text(json.dumps(split))
            import yaml

            (directory / "config.yaml").write_text(yaml.safe_dump(
                _config_copy(config, directory, config_folder), sort_keys=False,
                allow_unicode=True))

    fingerprint = _data_fingerprint(datasets)

    def save(path: Path) -> None:
        save_checkpoint(trainer.ema.model, path, metadata=metadata, config=config,
                        data_fingerprint=fingerprint, training_state=trainer.state_dict())

    # epochs
    monitor = "val_loss" if graphs["validation"] else "train_loss"
    patience = training["early_stopping"]["patience"]
    min_delta = training["early_stopping"]["min_delta"]
    epochs_this_run = 0
    while trainer.epoch < training["epochs"] and not trainer.stopped_early:
        if stop_after is not None and epochs_this_run >= stop_after:
            break
        start = time.perf_counter()
        row = {"epoch": trainer.epoch + 1, "lr": trainer.optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in trainer.train_epoch(output["progress"]).items()})
        if graphs["validation"]:
            metrics = trainer.evaluate(trainer.ema.model, graphs["validation"])
            row.update({f"val_{k}": v for k, v in metrics.items() if k != "structures"})
        trainer.epoch += 1
        epochs_this_run += 1
        value = row[monitor]
        if not math.isfinite(value):
            raise TrainingDiverged(f"the {monitor.replace('_', ' ')} is {value} at epoch "
                                     f"{trainer.epoch}; lower training.optimizer.lr or check data")
        if isinstance(trainer.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            trainer.scheduler.step(value)
        elif trainer.scheduler is not None:
            trainer.scheduler.step()
        improved = value < trainer.best["loss"] - min_delta
        if improved:
            trainer.best = {"epoch": trainer.epoch, "loss": value,
                            "state": copy.deepcopy(trainer.ema.model.state_dict())}
            trainer.bad_epochs = 0
        else:
            trainer.bad_epochs += 1
            if patience is not None and trainer.bad_epochs >= patience:
                trainer.stopped_early = True
        row["time"] = time.perf_counter() - start
        trainer.history.append(row)
        log(report.epoch_line(row, training["epochs"], improved))
        if trainer.stopped_early:
            log(f"early stopping: no improvement of the {monitor.replace('_', ' ')} for "
                f"{patience} epochs (best: epoch {trainer.best['epoch']})")
        if context.is_main:
            report.write_csv(trainer.history, directory / "metrics.csv")
            if improved:
                best_model = copy.deepcopy(trainer.ema.model)
                _atomic_save(lambda p: save_checkpoint(best_model, p, metadata=metadata,
                                                       config=config), checkpoints / "best.pt")
            last = (trainer.epoch % training["checkpoint_every"] == 0
                    or trainer.epoch == training["epochs"] or trainer.stopped_early
                    or (stop_after is not None and epochs_this_run >= stop_after))
            if last:
                _atomic_save(save, checkpoints / "last.pt")
        context.barrier()

    summary = {"directory": str(directory), "epochs": trainer.epoch,
               "best_epoch": trainer.best["epoch"], "checkpoint": str(checkpoints / "last.pt")}
    finished = trainer.epoch >= training["epochs"] or trainer.stopped_early
    summary["finished"] = finished
    if not finished:
        log(f"stopped after epoch {trainer.epoch} of {training['epochs']}; continue with "
            f"`mlpot train --resume {checkpoints / 'last.pt'}`")
        return summary
    if context.is_main:
        _atomic_save(save, checkpoints / "last.pt")
        summary.update(_finish(trainer, graphs, metadata, config, directory, log, save_best=(
            lambda model, meta: _atomic_save(
                lambda p: save_checkpoint(model, p, metadata=meta, config=config),
                checkpoints / "best.pt"))))
    context.barrier()
    return summary


def _finish(trainer: Trainer, graphs: Dict[str, List[Graph]], metadata: Dict, config: Dict,
            directory: Path, log, save_best) -> Dict:
    """Best EMA weights → error tables, plots, best checkpoint with metrics, exported model."""
    output = config["output"]
    model = trainer.ema.model
    model.load_state_dict(trainer.best["state"])
    single = Context()
    metrics, predictions = {}, {}
    for name, set_graphs in graphs.items():
        if set_graphs:
            result = trainer.evaluate(model, set_graphs, context=single, collect=True)
            predictions[name] = result.pop("_predictions")
            metrics[name] = result
    table = report.write_metrics(metrics, directory)
    log(f"final model: epoch {trainer.best['epoch']} (EMA weights); errors:\n{table.rstrip()}")
    if output["plots"]:
        report.plot_learning_curves(trainer.history, directory / "learning_curves.png")
        shown = next(name for name in ("test", "validation", "train") if graphs[name])
        labels = {"energy": ("energy", "eV/atom"), "forces": ("force component", "eV/Å"),
                  "stress": ("stress component", "eV/Å³")}
        for term, (reference, predicted) in predictions[shown].items():
            report.plot_parity(reference, predicted, *labels[term], f"{shown} set",
                               directory / f"parity_{term}.png")

    metadata = copy.deepcopy(metadata)
    metadata["training"]["epochs"] = trainer.epoch
    metadata["training"]["best_epoch"] = trainer.best["epoch"]
    metadata["training"]["metrics"] = metrics
    metadata.update(rmse_summary(metrics))
    save_best(model, metadata)
    result = {"metrics": metrics, "metadata": metadata}
    exported = export_if_asked(model, output, directory, metadata, log)
    if exported:
        result["export"] = exported
    return result


def rmse_summary(metrics: Dict, note: str = "") -> Dict[str, str]:
    """The model file's one-line error record, ``{"<set>_rmse": text}``, on the most independent
    set evaluated (test, else validation, else train); ``note`` is added to the brackets."""
    shown = "test" if "test" in metrics else "validation" if "validation" in metrics else "train"
    m = metrics[shown]
    errors = [f"{term} {m[f'{term}_rmse'] * factor:.3g} {unit}"
              for term, (unit, factor) in report.DISPLAY.items() if f"{term}_rmse" in m]
    return {f"{shown}_rmse": ", ".join(errors) + f" ({m['structures']} structures{note})"}


def export_if_asked(model, output: Dict, directory: Path, metadata: Dict, log) -> str:
    """Export the final model where ``output.export`` says (relative to the run folder)."""
    if not output["export"]:
        return ""
    path = Path(output["export"])
    path = path if path.is_absolute() else directory / path
    export_model(model, path, metadata=metadata, dtype=output["export_dtype"])
    log(f"exported {path} ({output['export_dtype']})")
    return str(path)


def check_resumable(saved: Dict, config: Dict) -> None:
    # Keys added to the config schema after the checkpoint was written take their defaults.
    changed = [k for k in differences(normalise_paths(merge(DEFAULTS, saved)), config)
               if k not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError(
            "cannot resume exactly: the config differs from the checkpoint's in "
            + ", ".join(changed)
            + "; resume with the same config (only " + ", ".join(sorted(RESUMABLE_CHANGES))
            + " may change), or fine-tune from the checkpoint with model.init_from")
