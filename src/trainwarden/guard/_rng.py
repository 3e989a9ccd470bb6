"""Randomness: fingerprints of every RNG, and reseeding intercepted with its caller.

Seeds decide initialisation, dropout and data order; a saboteur who reseeds mid-run (or
restores an old RNG state) makes results irreproducible without touching anything that
looks like training code (T5). The guard fingerprints the torch CPU and CUDA generators,
numpy's and Python's global RNG at attach, at each checkpoint and periodically, and wraps the
seeding functions through :mod:`trainwarden.patching` so that a reseed is recorded with the
file and line that called it. Seeding a generator *object* directly
(``torch.default_generator.manual_seed``) cannot be intercepted (it is a C method); it changes
``torch.initial_seed()``, which the guard compares every step.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainwarden.patching import PatchSet, Target

__all__ = ["RNG_PURPOSE", "Reseed", "fingerprints", "initial_seeds", "reseed_patches"]

logger = logging.getLogger("trainwarden.guard")

RNG_PURPOSE = "guard-rng"

_SEEDS = {
    "torch": ("manual_seed", "seed", "set_rng_state"),
    "torch.random": ("manual_seed", "seed", "set_rng_state"),
    "torch.cuda": (
        "manual_seed",
        "manual_seed_all",
        "seed",
        "seed_all",
        "set_rng_state",
        "set_rng_state_all",
    ),
    "torch.cuda.random": (
        "manual_seed",
        "manual_seed_all",
        "seed",
        "seed_all",
        "set_rng_state",
        "set_rng_state_all",
    ),
    "numpy.random": ("seed", "set_state"),
    "random": ("seed", "setstate", "Random.seed", "Random.setstate"),
}


@dataclass(frozen=True, slots=True)
class Reseed:
    """One intercepted call that reseeds or replaces an RNG's state."""

    function: str
    caller: str
    seed: str | None
    restores_state: bool
    pid: int


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprints() -> dict[str, str | None]:
    """Short digests of the torch CPU/CUDA, numpy and Python global RNG states."""
    out: dict[str, str | None] = {"torch": None, "cuda": None, "numpy": None, "python": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = _digest(torch.get_rng_state().numpy().tobytes())
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_available() and cuda.is_initialized():
            states = b"".join(s.cpu().numpy().tobytes() for s in cuda.get_rng_state_all())
            out["cuda"] = _digest(states)
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        out["numpy"] = _digest(f"{name}:{pos}:{has_gauss}:{cached}:".encode() + keys.tobytes())
    import random

    out["python"] = _digest(repr(random.getstate()).encode())
    return out


def initial_seeds() -> tuple[int | None, tuple[int, ...]]:
    """``torch.initial_seed()`` and each CUDA device's: they change on any manual_seed."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None, ()
    cpu = int(torch.initial_seed())
    cuda: tuple[int, ...] = ()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = tuple(
            int(torch.cuda.default_generators[i].initial_seed())
            for i in range(torch.cuda.device_count())
        )
    return cpu, cuda


_local = threading.local()


def _depth() -> int:
    """How many wrapped seeding calls this thread is inside (0 or 1)."""
    return int(getattr(_local, "depth", 0))


def _caller_frame() -> types.FrameType | None:
    """The first frame outside this module (the code that reseeded)."""
    frame: types.FrameType | None = sys._getframe(2)
    here = __file__
    while frame is not None and frame.f_code.co_filename == here:
        frame = frame.f_back
    return frame


def _where(frame: types.FrameType | None) -> str:
    """``file:line`` of ``frame``."""
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _state(label: str) -> bytes | None:
    """The state of the RNG a restoring function ``label`` sets (None: not readable).

    Read before and after the call: a restore that leaves the state as it was changes
    nothing (``torch.compile`` saves and restores every RNG around each compilation).
    """
    try:
        if label.startswith("torch.cuda"):
            torch = sys.modules["torch"]
            if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
                return None
            return b"".join(
                bytes(s.cpu().numpy().tobytes()) for s in torch.cuda.get_rng_state_all()
            )
        if label.startswith("torch"):
            return bytes(sys.modules["torch"].get_rng_state().numpy().tobytes())
        if label.startswith("numpy"):
            name, keys, pos, has_gauss, cached = sys.modules["numpy"].random.get_state()
            return f"{name}:{pos}:{has_gauss}:{cached}:".encode() + bytes(keys.tobytes())
        import random

        return repr(random.getstate()).encode()
    except Exception:  # an RNG that cannot be read is judged by the call, as before
        return None


# (fork_rng, torch.utils.checkpoint, {id(code): code}): keyed by identity, never by hash
# (a code object hashes its constants; TorchDynamo's rewritten frames hold unhashable ones).
_contained: tuple[Any, Any, dict[int, Any]] | None = None


def _contained_codes() -> dict[int, Any]:
    """Code objects of torch's own restores whose effect ends with a ``fork_rng`` block.

    ``torch.random.fork_rng`` restores, when its block ends, the states it saved when the
    block began: the block leaves every RNG as it found it. Gradient checkpointing
    (``torch.utils.checkpoint``) recomputes a forward inside such a block, with the RNG state
    the forward had, so that its dropout masks are the same. Recognised by the identity of
    the calling code object (a file name can be forged, a code object cannot), so a restore
    from any other code, inside a ``fork_rng`` block or not, is still reported.
    """
    global _contained
    torch = sys.modules.get("torch")
    fork = getattr(getattr(torch, "random", None), "fork_rng", None)
    checkpoint = sys.modules.get("torch.utils.checkpoint")
    if _contained is not None and _contained[0] is fork and _contained[1] is checkpoint:
        return _contained[2]
    codes: list[Any] = []
    inner = getattr(fork, "__wrapped__", None)
    if inner is not None:
        codes.append(inner.__code__)
    if checkpoint is not None:
        backward = getattr(getattr(checkpoint, "CheckpointFunction", None), "backward", None)
        if backward is not None:
            codes.append(backward.__code__)
        for value in vars(checkpoint).values():
            code = getattr(value, "__code__", None)
            if code is not None and getattr(value, "__module__", None) == checkpoint.__name__:
                codes.extend(c for c in _nested(code) if c.co_name == "recompute_fn")
    _contained = (fork, checkpoint, {id(c): c for c in codes})
    return _contained[2]


def _nested(code: Any) -> list[Any]:
    """``code`` and every code object defined inside it."""
    out = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out.extend(_nested(const))
    return out


def _is_contained(frame: types.FrameType | None) -> bool:
    """Whether the restore at ``frame`` is torch's own, contained in a ``fork_rng`` block.

    ``torch.utils.checkpoint.set_device_states`` (the CUDA states of a recomputation) counts
    only when a recomputation called it.
    """
    if frame is None:
        return False
    codes = _contained_codes()
    if codes.get(id(frame.f_code)) is frame.f_code:
        return True
    checkpoint = sys.modules.get("torch.utils.checkpoint")
    helper = getattr(checkpoint, "set_device_states", None)
    back = frame.f_back
    return (
        getattr(helper, "__code__", None) is frame.f_code
        and back is not None
        and codes.get(id(back.f_code)) is back.f_code
    )


def reseed_patches(notify: Callable[[Reseed], None]) -> PatchSet:
    """A patch set wrapping every seeding function; ``notify`` hears each outermost call.

    Calls from another process (a forked DataLoader worker seeds itself, by design) and calls
    made while another wrapped call is running (``torch.manual_seed`` seeds CUDA too) pass
    through unreported. Private ``random.Random()`` instances are not the global RNG and are
    not reported either. Nor are state restores that leave the randomness as it was: one that
    sets the state the RNG had, and torch's own restores contained in a ``fork_rng`` block
    (gradient checkpointing's recomputation; see ``_contained_codes``).
    """
    owner = os.getpid()
    targets = [
        Target(module, name, _factory(f"{module}.{name}", notify, owner), trigger=module)
        for module, names in _SEEDS.items()
        for name in names
    ]
    return PatchSet(RNG_PURPOSE, targets)


def _factory(
    label: str, notify: Callable[[Reseed], None], owner: int
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    method = ".Random." in f".{label}"
    restores = label.endswith(("set_rng_state", "set_rng_state_all", "set_state", "setstate"))

    def build(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if os.getpid() != owner or _depth():
                return original(*args, **kwargs)
            report = True
            if method:
                import random

                report = bool(args) and args[0] is getattr(random, "_inst", None)
            frame = _caller_frame()
            if restores and report and _is_contained(frame):
                report = False
            before = _state(label) if restores and report else None
            _local.depth = 1
            try:
                result = original(*args, **kwargs)
            finally:
                _local.depth = 0
            if before is not None and before == _state(label):
                report = False  # the state it set is the state it had: nothing changed
            if report:
                values = args[1:] if method else args
                seed = kwargs.get("seed", kwargs.get("a", values[0] if values else None))
                shown = None if restores or seed is None else repr(seed)[:64]
                try:
                    notify(Reseed(label, _where(frame), shown, restores, os.getpid()))
                except Exception:  # a failing observer must not break the job's seeding
                    logger.exception("guard: reseed observer failed")
            return result

        return wrapper

    return build
