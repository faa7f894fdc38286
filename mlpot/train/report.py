"""What training shows and leaves behind: progress bar, epoch log lines, metrics CSV, error
tables (markdown + JSON), parity plots and learning curves (PNG).

tqdm and matplotlib are imported only when used, so ``mlpot info`` and friends stay fast.
"""

import csv
import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

#: display units: metrics are stored in eV-based units and shown in milli-units
DISPLAY = {"energy": ("meV/atom", 1e3), "forces": ("meV/Å", 1e3), "stress": ("meV/Å³", 1e3)}


def progress(iterable: Iterable, total: int, description: str, enabled):
    """A tqdm bar on stderr: ``enabled`` True/False, or "auto" (only when stderr is a terminal)."""
    if enabled == "auto":
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, file=sys.stderr, leave=False,
                dynamic_ncols=True, unit="batch")


def epoch_line(row: Dict, epochs: int, best: bool) -> str:
    """One concise line per epoch."""
    width = len(str(epochs))
    parts = [f"epoch {row['epoch']:>{width}}/{epochs}", f"loss {row['train_loss']:.4g}"]
    if "val_loss" in row:
        parts.append(f"val {row['val_loss']:.4g}")
    prefix = "val" if "val_loss" in row else "train"
    for term, (unit, factor) in DISPLAY.items():
        key = f"{prefix}_{term}_rmse"
        if key in row:
            parts.append(f"{term[0].upper()} {row[key] * factor:.3g} {unit}")
    parts.append(f"lr {row['lr']:.2g}")
    parts.append(f"{row['time']:.1f} s")
    return "  ".join(parts) + ("  *" if best else "")


def write_csv(history: List[Dict], path: Path) -> None:
    columns: List[str] = []
    for row in history:
        columns += [key for key in row if key not in columns]
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in columns})


def metrics_table(metrics: Dict[str, Dict]) -> str:
    """Markdown MAE/RMSE table, one row per data set, in meV-based units."""
    header = ["set", "structures"]
    for term, (unit, _) in DISPLAY.items():
        if any(f"{term}_mae" in m for m in metrics.values()):
            header += [f"{term} MAE ({unit})", f"{term} RMSE ({unit})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in metrics.items():
        cells = [name, str(m.get("structures", ""))]
        for term, (_, factor) in DISPLAY.items():
            if any(f"{term}_mae" in x for x in metrics.values()):
                for stat in ("mae", "rmse"):
                    value = m.get(f"{term}_{stat}")
                    cells.append("–" if value is None else f"{value * factor:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_metrics(metrics: Dict[str, Dict], directory: Path) -> str:
    table = metrics_table(metrics)
    (directory / "metrics.md").write_text(
        "# Errors of the final (best, EMA) model\n\nEnergies per atom; forces per component; "
        "stress per component (ASE sign).\n\n" + table)
    (directory / "metrics.json").write_text(json.dumps(
        {"units": {"energy": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}, "sets": metrics},
        indent=1))
    return table


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: List[Dict], path: Path) -> None:
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    terms = [t for t in DISPLAY if any(f"train_{t}_rmse" in row for row in history)]
    fig, axes = plt.subplots(1, 2 + len(terms), figsize=(4.2 * (2 + len(terms)), 3.6))
    ax = axes[0]
    for prefix, label in (("train", "train"), ("val", "validation")):
        values = [row.get(f"{prefix}_loss") for row in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, label=label)
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax.legend()
    for ax, term in zip(axes[1:], terms):
        unit, factor = DISPLAY[term]
        for prefix, label in (("train", "train"), ("val", "validation")):
            values = [row.get(f"{prefix}_{term}_rmse") for row in history]
            if all(v is not None for v in values):
                ax.plot(epochs, [v * factor for v in values], label=label)
        ax.set(xlabel="epoch", ylabel=f"RMSE ({unit})", yscale="log", title=term)
        ax.legend()
    ax = axes[-1]
    ax.plot(epochs, [row["lr"] for row in history])
    ax.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parity(reference: Sequence[float], predicted: Sequence[float], quantity: str,
                unit: str, title: str, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    reference, predicted = np.asarray(reference), np.asarray(predicted)
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.scatter(reference, predicted, s=6, alpha=0.6, linewidths=0)
    low = float(min(reference.min(), predicted.min()))
    high = float(max(reference.max(), predicted.max()))
    pad = 0.03 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], "k--", lw=0.8)
    mae = float(np.mean(np.abs(predicted - reference)))
    rmse = float(np.sqrt(np.mean((predicted - reference) ** 2)))
    ax.set(xlabel=f"reference {quantity} ({unit})", ylabel=f"predicted {quantity} ({unit})",
           title=title, xlim=(low - pad, high + pad), ylim=(low - pad, high + pad))
    ax.text(0.04, 0.96, f"MAE {mae:.3g}\nRMSE {rmse:.3g}", transform=ax.transAxes, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Log:
    """Epoch lines to stdout and to ``train.log`` (main rank only)."""

    def __init__(self, path: Optional[Path], enabled: bool):
        self.path, self.enabled = path, enabled

    def __call__(self, line: str) -> None:
        if not self.enabled:
            return
        print(line, flush=True)
        if self.path is not None:
            with open(self.path, "a") as stream:
                stream.write(line + "\n")
