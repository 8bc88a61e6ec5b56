"""The metrics log of a run: ``metrics.jsonl`` (the record) mirrored to experiment trackers.

Every line a run writes to ``metrics.jsonl`` (``{"kind": "train" | "eval", "step": ..., ...}``)
goes through :class:`MetricsLog`, which also hands its numbers to the trackers a user asked for
with ``--log-with`` (accelerate's trackers: TensorBoard, Weights & Biases, MLflow), as
``<kind>/<field>`` at that step; probe records arrive as ``probe/<label>`` (the labels of
:data:`revcurse.probes.runner.LABELS`). The trackers are a view for people: ``metrics.jsonl`` stays
the record that reports and resumes read, and the choice of trackers is not part of a run's
config (a run logged to TensorBoard is the same run, with the same id, as one that is not).

TensorBoard writes event files under ``<run>/trackers/revcurse/`` and needs no network. W&B and
MLflow are set up by their own environment. W&B keeps its files under ``<run>/trackers/wandb/``
(``WANDB_MODE=offline``: no account or network; ``wandb sync`` uploads them later). MLflow logs to
``MLFLOW_TRACKING_URI`` (a server, a database, or a local folder ``file:///...``, which MLflow 3
takes only with ``MLFLOW_ALLOW_FILE_STORE=true``), in experiment ``revcurse``, one MLflow run per
run folder, named after it. All three are tested offline, value by value against the record. A resumed run logs again from its checkpoint's
step, so a tracker may show the steps after it twice; ``metrics.jsonl`` is truncated and holds
them once.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.errors import RevcurseError

TRACKERS = ("tensorboard", "wandb", "mlflow")
"""The trackers ``--log-with`` takes (accelerate's names)."""
PROJECT = "revcurse"
"""The project (W&B), experiment (MLflow) and folder under ``trackers/`` (TensorBoard)."""


def check_trackers(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` validated, in order and once each: known to accelerate, their package installed.
    Called before anything is written, so a typo or a missing package costs no half-made run."""
    chosen: list[str] = []
    for name in names:
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RevcurseError(f"--log-with: unknown tracker {name!r} (expected one of "
                                f"{', '.join(TRACKERS)}){hint}")  # fmt: skip
        if importlib.util.find_spec(name) is None:
            raise RevcurseError(f"--log-with {name}: the {name} package is not installed "
                                f"(pip install {name})")  # fmt: skip
        try:  # a package that is there but broken fails here, before anything is written
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 (any import failure is the user's to fix)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise RevcurseError(f"--log-with {name}: the {name} package fails to import "
                                f"({type(err).__name__}: {first})") from None  # fmt: skip
        problem = _setting_problem(name)
        if problem:
            raise RevcurseError(f"--log-with {name}: {problem}")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def _setting_problem(name: str) -> str | None:
    """What a tracker lacks in this environment to start (its own setup, read from the variables
    it reads), or None: checked before a run writes anything, where the tracker would otherwise
    fail after the run folder exists."""
    env = os.environ
    if name == "wandb":
        mode = env.get("WANDB_MODE", "").lower()
        netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
        logged_in = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
        if (
            mode not in ("offline", "disabled", "dryrun")
            and not env.get("WANDB_API_KEY")
            and (not logged_in)
        ):
            return ("W&B needs an account or offline mode: set WANDB_MODE=offline (files under "
                    "<run>/trackers/wandb, `wandb sync` uploads them later), WANDB_API_KEY, or "
                    "run `wandb login`")  # fmt: skip
    if name == "mlflow":
        uri = env.get("MLFLOW_TRACKING_URI", "")
        local = not uri or uri.startswith("file:") or "://" not in uri
        if local and env.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            return ("MLflow 3 logs to a local folder only with MLFLOW_ALLOW_FILE_STORE=true; set "
                    "it, or MLFLOW_TRACKING_URI to a server or database (e.g. sqlite:///mlflow.db)")  # fmt: skip
    return None


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as the flat scalar hyperparameters trackers take (``model.d_model``:
    64); lists and other values become their text."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flat_config(value, f"{name}.")
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def scalars(kind: str, values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a record as ``<kind>/<field>`` (the step, flags and text left out)."""
    return {
        f"{kind}/{key}": float(value)
        for key, value in values.items()
        if key != "step"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class MetricsLog:
    """``out/metrics.jsonl`` of one run and the trackers of its accelerator (one made without
    ``log_with`` tracks nothing). Every process may call; only the main one writes the file, and
    only it holds trackers (accelerate starts them there). ``out`` None: a run without a
    directory, no file."""

    def __init__(self, out: Path | None, accelerator: Any) -> None:
        main = accelerator.is_main_process
        self.path = out / "metrics.jsonl" if out is not None and main else None
        self.name = out.name if out is not None else ""
        self.accelerator = accelerator
        self.tracking = bool(accelerator.log_with)

    def start(self, config: Mapping[str, Any]) -> None:
        """Open the trackers' run, named after the run's folder, with its resolved config as its
        hyperparameters."""
        if not self.tracking:
            return
        self.accelerator.init_trackers(
            PROJECT,
            config=flat_config(config),
            init_kwargs={
                "wandb": {"name": self.name, "dir": str(self.accelerator.project_dir)},
                "mlflow": {"run_name": self.name},
            },
        )

    def clear(self) -> None:
        """A fresh run: no lines yet."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def truncate(self, step: int) -> None:
        """A resumed run: keep the lines up to ``step``, the checkpoint's."""
        if self.path is not None:
            files.truncate_jsonl(self.path, step)

    def write(self, record: dict[str, Any]) -> None:
        """One line ``{"kind", "step", ...}`` to the file, its numbers to the trackers."""
        if self.path is not None:
            files.append_jsonl(self.path, record)
        self.track(record["kind"], record["step"], record)

    def track(self, kind: str, step: int, values: Mapping[str, Any]) -> None:
        """Numbers that have a record of their own (probes) to the trackers only."""
        if self.tracking:
            self.accelerator.log(scalars(kind, values), step=step)

    def close(self) -> None:
        """Flush and close the trackers' run (the process group, if any, is left alone)."""
        if self.tracking:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()


def eval_history(run_dir: Path, metrics: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """A run's evaluations over training, read back once from the ``metrics.jsonl`` a
    :class:`MetricsLog` wrote: per metric, the steps that evaluated it and its values."""
    evals = [m for m in files.read_jsonl(run_dir / "metrics.jsonl") if m.get("kind") == "eval"]
    out = {}
    for metric in metrics:
        kept = [m for m in evals if m.get(metric) is not None]
        out[metric] = ([m["step"] for m in kept], [m[metric] for m in kept])
    return out
