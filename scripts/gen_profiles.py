"""Regenerate the framework allowlist profiles under src/trainwarden/scan/_profiles/.

For maintainers: run with the frameworks installed (``python scripts/gen_profiles.py``),
review the printed warnings and the diff, commit the generated files.

Each profile lists classes only (never functions), found two ways:
  * introspection: the enums and dataclasses of the framework modules whose objects end up in
    checkpoints (TrainingArguments and its enums, accelerate dataclasses, sklearn estimators
    from ``sklearn.utils.all_estimators()``...);
  * observation: real checkpoints written by the framework are run through the pickle machine
    and every global of the framework's own packages that is a class is added.
Enums go to CALLABLE (calling an enum class looks a member up by value). Other classes go to
NEW_ONLY (legitimate pickles rebuild them with NEWOBJ / copyreg and a state), unless a real
checkpoint calls them (Cython ``__reduce__`` such as sklearn's ``Tree``): those go to CALLABLE
and are printed for review. Classes that define ``__setstate__``/``__setattr__``/``__reduce__``
hooks are printed too, so a reviewer reads what BUILD would run.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import io
import json
import pickle
import sys
import tempfile
import textwrap
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "trainwarden" / "scan" / "_profiles"
sys.path.insert(0, str(ROOT / "src"))

from trainwarden.scan._pickle import GlobalRef, analyse_pickle_stream  # noqa: E402

HOOKS = ("__setstate__", "__setattr__", "__reduce__", "__reduce_ex__", "__getattr__")


def _hook_owner(cls: type, name: str) -> str | None:
    """The framework class that defines hook ``name`` for ``cls`` (None: a stdlib default)."""
    for base in cls.__mro__:
        if name in base.__dict__:
            if base.__module__.split(".")[0] in ("builtins", "enum", "abc", "typing"):
                return None
            return _qual(base)
    return None


def _qual(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _classes_in(modules: Iterable[str], want: Any) -> set[type]:
    found: set[type] = set()
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception as exc:
            print(f"  skip {name}: {exc.__class__.__name__}")
            continue
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if obj.__module__ == mod.__name__ and want(obj):
                found.add(obj)
    return found


def _is_enum(cls: object) -> bool:
    return inspect.isclass(cls) and issubclass(cls, enum.Enum)


def _is_enum_or_dataclass(cls: type) -> bool:
    return issubclass(cls, enum.Enum) or dataclasses.is_dataclass(cls)


def _globals_of_file(path: Path) -> list[GlobalRef]:
    data = path.read_bytes()
    blobs = [data]
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    refs: list[GlobalRef] = []
    for blob in blobs:
        analyses, _ = analyse_pickle_stream(blob)
        for a in analyses:
            refs.extend(a.globals)
    return refs


def _observe(paths: Iterable[Path], prefixes: tuple[str, ...]) -> dict[str, bool]:
    """Globals of the given packages seen in real files: qualname -> called by REDUCE."""
    seen: dict[str, bool] = {}
    for path in paths:
        for ref in _globals_of_file(path):
            if not ref.module.startswith(prefixes):
                continue
            key = f"{ref.module}:{ref.name}"
            if "<locals>" in key:
                print(f"  REVIEW: {key} is a local object (not importable); left out")
                continue
            seen[key] = seen.get(key, False) or ref.init_called
    return seen


def _resolve(qual: str) -> Any:
    module, _, name = qual.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _split(
    classes: set[type],
    observed: dict[str, bool],
    profile: str,
    reviewed_callable: Iterable[str] = (),
) -> tuple[list[str], list[str]]:
    callable_: set[str] = set(reviewed_callable)
    new_only: set[str] = set()
    for cls in classes:
        if _qual(cls) not in callable_:
            (callable_ if _is_enum(cls) else new_only).add(_qual(cls))
    for qual, init_called in observed.items():
        obj = _resolve(qual)
        if qual in callable_:
            continue
        if not inspect.isclass(obj):
            print(f"  [{profile}] REVIEW: {qual} is not a class; left out")
            continue
        if _is_enum(obj) or init_called:
            if init_called and not _is_enum(obj):
                print(f"  [{profile}] REVIEW: {qual} is called with arguments by real files")
            new_only.discard(qual)
            callable_.add(qual)
        elif qual not in callable_:
            new_only.add(qual)
    owners: dict[str, set[str]] = {}
    for qual in sorted(callable_ | new_only):
        obj = _resolve(qual)
        for hook in HOOKS:
            if not inspect.isclass(obj) or _is_enum(obj):
                continue
            owner = _hook_owner(obj, hook)
            if owner is not None:
                owners.setdefault(f"{owner}.{hook}", set()).add(qual)
    for hook, users in sorted(owners.items()):
        print(f"  [{profile}] REVIEW {hook} (used by {len(users)} listed classes)")
    return sorted(callable_), sorted(new_only)


def _write(
    profile: str,
    version: str,
    reason: str,
    callable_: list[str],
    new_only: list[str],
    values: tuple[list[str], str] | None = None,
) -> None:
    lines = [
        f'"""Allowlist profile ``{profile}``: generated from {version}.',
        "",
        "Written by scripts/gen_profiles.py; do not edit by hand: re-run the generator and",
        "review its warnings and the diff.",
        '"""',
        "",
        "REASON = (",
        *[f"    {json.dumps(c)}" for c in textwrap.wrap(reason, 80, drop_whitespace=False)],
        ")",
        "",
        "# Enums (calling the class looks a member up by value) and classes real checkpoints",
        "# call with arguments (reviewed).",
        "CALLABLE: tuple[str, ...] = (",
        *[f'    "{q}",' for q in callable_],
        ")",
        "",
        "# Classes rebuilt only with NEWOBJ / copyreg reconstruction and a saved state.",
        "NEW_ONLY: tuple[str, ...] = (",
        *[f'    "{q}",' for q in new_only],
        ")",
        "",
    ]
    if values is not None:
        names, why = values
        lines += [
            "VALUE_REASON = (",
            *[f"    {json.dumps(c)}" for c in textwrap.wrap(why, 80, drop_whitespace=False)],
            ")",
            "",
            "# Functions stored as attributes (never called by the pickle).",
            "VALUES: tuple[str, ...] = (",
            *[f'    "{q}",' for q in names],
            ")",
            "",
        ]
    module = profile.replace("-", "_")
    (OUT / f"_{module}.py").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote _{module}.py: {len(callable_)} callable, {len(new_only)} new-only")


# -- per framework ---------------------------------------------------------------------------


def _torch_save_paths(tmp: Path, objects: dict[str, Any]) -> list[Path]:
    import torch

    out = []
    for name, obj in objects.items():
        for proto in (2, 4):
            path = tmp / f"{name}-{proto}.bin"
            torch.save(obj, path, pickle_protocol=proto)
            out.append(path)
    return out


def gen_transformers(tmp: Path) -> None:
    import transformers
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    modules = [
        "transformers.training_args",
        "transformers.training_args_seq2seq",
        "transformers.trainer_utils",
        "transformers.trainer_pt_utils",
        "transformers.debug_utils",
        "transformers.utils.generic",
        "transformers.generation.configuration_utils",
    ]
    classes = _classes_in(modules, _is_enum_or_dataclass)
    out = tmp / "hf"
    out.mkdir()
    paths = _torch_save_paths(
        tmp,
        {
            "args": TrainingArguments(output_dir=str(out)),
            "s2s": Seq2SeqTrainingArguments(output_dir=str(out), predict_with_generate=True),
        },
    )
    observed = _observe(paths, ("transformers.", "accelerate."))
    callable_, new_only = _split(classes, observed, "transformers")
    _write(
        "transformers",
        f"transformers {transformers.__version__}",
        "a transformers training configuration type (TrainingArguments, its enums and the "
        "accelerate types it holds): enums look members up by value; the dataclasses are "
        "rebuilt with NEWOBJ and BUILD, which only fills __dict__",
        callable_,
        new_only,
    )


def gen_accelerate(tmp: Path) -> None:
    import accelerate
    import torch
    from accelerate import Accelerator

    classes = _classes_in(["accelerate.utils.dataclasses"], _is_enum_or_dataclass)
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), 2)
    model, opt, sched, data = acc.prepare(model, opt, sched, data)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    state = tmp / "acc"
    acc.save_state(str(state))
    paths = [p for p in state.rglob("*") if p.is_file() and p.suffix in (".bin", ".pkl", ".pt")]
    observed = _observe(paths, ("accelerate.",))
    callable_, new_only = _split(classes, observed, "accelerate")
    _write(
        "accelerate",
        f"accelerate {accelerate.__version__}",
        "an accelerate configuration or state type: enums look members up by value; the "
        "dataclasses are rebuilt with NEWOBJ and BUILD, which only fills __dict__",
        callable_,
        new_only,
    )


def gen_lightning(tmp: Path) -> None:
    import lightning
    import lightning as L
    import torch

    modules = [
        "lightning.fabric.utilities.data",
        "lightning.pytorch.utilities.parsing",
        "lightning.pytorch.trainer.states",
        "lightning.fabric.utilities.enums",
        "lightning.pytorch.utilities.enums",
        "lightning.pytorch.callbacks.progress.rich_progress",
        "pytorch_lightning.utilities.parsing",
        "pytorch_lightning.trainer.states",
        "lightning_fabric.utilities.data",
        "lightning_fabric.utilities.enums",
    ]
    classes = _classes_in(modules, lambda c: _is_enum(c) or c.__name__ == "AttributeDict")

    class Tiny(L.LightningModule):
        def __init__(self, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, _idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    trainer = L.Trainer(
        max_steps=2,
        default_root_dir=str(tmp / "pl"),
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=4))
    observed = _observe((tmp / "pl").rglob("*.ckpt"), ("lightning", "pytorch_lightning"))
    callable_, new_only = _split(classes, observed, "lightning")
    _write(
        "lightning",
        f"lightning {lightning.__version__}",
        "a Lightning checkpoint helper type (AttributeDict hyperparameters, trainer state "
        "enums): a dict subclass and enums that store data only",
        callable_,
        new_only,
    )


def gen_sklearn(tmp: Path) -> None:
    import numpy as np
    import sklearn
    from sklearn.utils import all_estimators

    classes = {cls for _, cls in all_estimators()}
    # Helper classes estimators hold (losses, link functions, trees, binners, bunches).
    classes |= _classes_in(
        [
            "sklearn._loss.loss",
            "sklearn._loss.link",
            "sklearn.neighbors._kd_tree",
            "sklearn.neighbors._ball_tree",
            "sklearn.metrics._dist_metrics",
            "sklearn.ensemble._hist_gradient_boosting.predictor",
            "sklearn.ensemble._hist_gradient_boosting.binning",
            "sklearn.utils._bunch",
        ],
        lambda c: c.__module__.startswith("sklearn."),
    )
    # Reviewed by hand: Cython extension types whose __reduce__ calls the class with numbers
    # (losses, the tree structure), ``newObj(cls)`` = ``cls.__new__(cls)`` for a class given
    # as argument, and score functions stored as estimator parameters (pure statistics).
    cython = _classes_in(
        ["sklearn._loss._loss", "sklearn.linear_model._sgd_fast"],
        lambda c: c.__module__.startswith("sklearn.") and not c.__name__.startswith("_"),
    )
    reviewed = {_qual(c) for c in cython} | {
        "sklearn.tree._tree:Tree",
        "sklearn.neighbors._kd_tree:newObj",
        "sklearn.neighbors._ball_tree:newObj",
        "sklearn.metrics._dist_metrics:newObj",
        "sklearn.feature_selection._univariate_selection:f_classif",
        "sklearn.feature_selection._univariate_selection:f_regression",
        "sklearn.feature_selection._univariate_selection:r_regression",
        "sklearn.feature_selection._univariate_selection:chi2",
        "sklearn.feature_selection._mutual_info:mutual_info_classif",
        "sklearn.feature_selection._mutual_info:mutual_info_regression",
        "sklearn.cluster._kmeans:_kmeans_single_lloyd",
        "sklearn.cluster._kmeans:_kmeans_single_elkan",
    }
    X = np.random.default_rng(0).normal(size=(40, 4))
    y = (X[:, 0] > 0).astype(int)
    paths = []
    for name, cls in all_estimators(
        type_filter=["classifier", "regressor", "transformer", "cluster"]
    ):
        try:
            est = cls()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(X, y)
            blob = pickle.dumps(est, protocol=5)
        except Exception:
            continue
        path = tmp / f"sk-{name}.pkl"
        path.write_bytes(blob)
        paths.append(path)
    observed = _observe(paths, ("sklearn.",))
    callable_, new_only = _split(classes, observed, "sklearn", reviewed)
    _write(
        "sklearn",
        f"scikit-learn {sklearn.__version__}",
        "a scikit-learn estimator or the helper type its pickle holds: estimators are rebuilt "
        "with NEWOBJ and BaseEstimator.__setstate__ (a version check and a __dict__ update); "
        "Cython helpers (trees, losses, neighbors) rebuild from numbers and arrays",
        callable_,
        new_only,
    )


def gen_torch_modules(tmp: Path) -> None:
    import pkgutil

    import torch
    from torch import nn

    from trainwarden.examples.tinygpt import Config, build

    modules = ["torch.nn.modules." + m.name for m in pkgutil.iter_modules(nn.modules.__path__)]
    classes = _classes_in(modules, lambda c: issubclass(c, nn.Module))
    optim_modules = ["torch.optim." + m.name for m in pkgutil.iter_modules(torch.optim.__path__)]
    classes |= _classes_in(
        optim_modules,
        lambda c: (
            issubclass(c, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))
            and not c.__name__.startswith("_")
            and "<locals>" not in c.__qualname__
        ),
    )
    # Real objects as torch.save(model) / torch.save(optimizer) write them.
    _model, optimizer, scheduler = build(Config())  # its model class is local: not picklable
    layers = nn.Sequential(
        nn.Conv1d(2, 2, 3), nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 1, 3), nn.BatchNorm2d(2),
        nn.LayerNorm(4), nn.GroupNorm(1, 2), nn.Embedding(5, 4), nn.LSTM(4, 4), nn.GRU(4, 4),
        nn.MultiheadAttention(4, 2), nn.TransformerEncoderLayer(4, 2, 8), nn.Dropout(),
        nn.GELU(), nn.SiLU(), nn.ReLU(), nn.Softmax(-1), nn.Flatten(), nn.Identity(),
        nn.ModuleDict({"a": nn.Linear(2, 2)}), nn.ModuleList([nn.Tanh()]),
        nn.ParameterList([nn.Parameter(torch.zeros(1))]), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1),
    )  # fmt: skip
    opt = torch.optim.SGD(layers.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    paths = _torch_save_paths(
        tmp,
        {
            "gpt_opt": optimizer, "gpt_sched": scheduler, "layers": layers,
            "sgd": opt, "onecycle": sched,
        },
    )  # fmt: skip
    observed = _observe(paths, ("torch.nn.modules.", "torch.optim."))
    callable_, new_only = _split(classes, observed, "torch-modules")
    # Activation functions modules store as attributes (TransformerEncoderLayer.activation).
    activations = {
        f"torch.nn.functional:{name}"
        for name in [
            "relu",
            "gelu",
            "silu",
            "tanh",
            "sigmoid",
            "leaky_relu",
            "elu",
            "selu",
            "celu",
            "mish",
            "softplus",
            "hardswish",
            "hardsigmoid",
            "glu",
            "relu6",
            "softsign",
            "tanhshrink",
            "logsigmoid",
        ]
    }
    activations |= {q for q, _ in _observe(paths, ("torch.nn.functional",)).items() if ":" in q}
    _write(
        "torch-modules",
        f"torch {torch.__version__.split('+')[0]}",
        "a torch.nn module, optimizer or LR scheduler class as torch.save(model) and "
        "torch.save(optimizer) write it: rebuilt with NEWOBJ and BUILD (Module.__setstate__, "
        "Optimizer.__setstate__ update __dict__ with saved tensors, numbers and the hooks "
        "dicts, whose callables are globals the policy checks on their own); never called "
        "with arguments the file chooses",
        callable_,
        new_only,
        (
            sorted(activations),
            "a torch.nn.functional activation function stored as a module's attribute "
            "(TransformerEncoderLayer.activation): importing it runs nothing, and the pickle "
            "never calls it",
        ),
    )


def main(argv: list[str]) -> int:
    wanted = argv or ["transformers", "accelerate", "lightning", "sklearn", "torch-modules"]
    gens = {
        "torch-modules": gen_torch_modules,
        "transformers": gen_transformers,
        "accelerate": gen_accelerate,
        "lightning": gen_lightning,
        "sklearn": gen_sklearn,
    }
    warnings.simplefilter("ignore")
    for name in wanted:
        print(f"== {name}")
        with tempfile.TemporaryDirectory() as tmp:
            gens[name](Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
