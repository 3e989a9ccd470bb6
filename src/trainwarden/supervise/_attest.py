"""Assemble the run's provenance (a :class:`trainwarden.provenance.TrainingRun`) at its end.

Field meanings are specified in ``docs/provenance.md``; this module only gathers them from
what the supervisor recorded: pre-flight results, signed checkpoints, egress, findings.
"""

# os.path: normalised absolute paths without resolving symlinks.
# ruff: noqa: PTH100

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainwarden import __version__
from trainwarden.errors import Error
from trainwarden.provenance import ResourceDescriptor, TrainingRun, output_descriptor
from trainwarden.supervise._checkpoints import SignedCheckpoint
from trainwarden.supervise._config import config_values
from trainwarden.supervise._process import ExitStatus
from trainwarden.supervise._rundir import utc_now

if TYPE_CHECKING:
    from trainwarden.supervise._supervisor import _Supervisor

__all__ = ["build_run_provenance"]

_MAX_HYPER = 200


def _hex(digest: str | None) -> str | None:
    if not digest or not digest.startswith("sha256:"):
        return None
    return digest.split(":", 1)[1]


def _file_uri(path: str | os.PathLike[str]) -> str:
    return Path(os.path.abspath(path)).as_uri()


def build_run_provenance(
    sup: _Supervisor,
    *,
    exit_status: ExitStatus,
    seconds: float,
    signed: Sequence[SignedCheckpoint],
    seal: Any,
    warnings: Sequence[str],
    refusals: Sequence[str],
) -> TrainingRun:
    """The :class:`TrainingRun` of the supervisor's run."""
    return TrainingRun(
        run_id=sup.run_id,
        outputs=tuple(_subjects(sup, signed)),
        external_parameters=_external(sup),
        internal_parameters=_internal(sup),
        dependencies=tuple(_dependencies(sup)),
        byproducts=tuple(_byproducts(sup, exit_status, seconds, seal, warnings, refusals)),
        started=sup.job_started,
        finished=utc_now(),
        builder_version=_versions(sup),
    )


def _subjects(sup: _Supervisor, signed: Sequence[SignedCheckpoint]) -> list[ResourceDescriptor]:
    # The last signed version of each path that still exists is an output of the run.
    latest: dict[str, SignedCheckpoint] = {}
    for item in signed:
        latest[item.path] = item
    out: list[ResourceDescriptor] = []
    for path, item in latest.items():
        if not os.path.lexists(path):
            continue
        out.append(
            output_descriptor(
                path,
                root=sup.cwd,
                digest=item.digest,
                annotations={
                    "kind": "checkpoint",
                    "step": item.step,
                    "parent": item.parent,
                    "signature": item.sig_path,
                },
            )
        )
    names = {d.name for d in out}
    declared = [*sup.o.outputs, *(Path(p) for p in sup.job.facts.outputs)]
    for output in dict.fromkeys(Path(os.path.abspath(sup.cwd / p)) for p in declared):
        if not output.exists():
            continue
        try:
            descriptor = output_descriptor(output, root=sup.cwd, annotations={"kind": "output"})
        except Error:
            continue
        if descriptor.name not in names:
            out.append(descriptor)
            names.add(descriptor.name)
    return out


def _external(sup: _Supervisor) -> dict[str, Any]:
    job = sup.job
    hyper = dict(list(job.facts.hyperparameters.items())[:_MAX_HYPER])
    for path in sup._configs():
        hyper.update(config_values(path, limit=_MAX_HYPER - len(hyper)))
    return {
        "command": list(job.argv),
        "launcher": job.launcher,
        "configDigests": sup._config_digests(),
        "hyperparameters": hyper,
        "seedCommitment": sup.commitment,
        "declared": {
            "scan": [str(p) for p in sup.o.scan],
            "checkpoints": [str(p) for p in sup.o.checkpoints],
            "inputs": [str(p) for p in sup.o.inputs],
            "outputs": [str(p) for p in sup.o.outputs],
        },
    }


def _internal(sup: _Supervisor) -> dict[str, Any]:
    o = sup.o
    info = sup.info
    return {
        "cwd": str(sup.cwd),
        "runDir": str(sup.run_dir),
        "ledger": str(sup.ledger_dir),
        "runId": sup.run_id,
        "node": sup.node_label,
        "primary": sup.primary,
        "worldSize": sup.world_size or sup.job.world_size,
        "nodes": list(sup.nodes),
        "policy": o.policy.to_dict(),
        "hangTimeout": o.hang_timeout,
        "settle": o.settle,
        "envCheck": o.env_check,
        "protect": {"enabled": o.protect, "profiles": list(o.protect_profiles)},
        "guard": {
            "enabled": o.guard,
            "onViolation": o.on_violation,
            "available": _guard_available(),
        },
        "egress": o.egress,
        "interpreter": info.executable if info is not None else None,
        "supervisor": {
            "host": platform.node(),
            "pid": os.getpid(),
            "key": sup.key.public.fingerprint,
            "ephemeralKey": sup.ephemeral,
            "nonDumpable": sup.dumpable_off,
            "subreaper": sup.subreaper,
        },
    }


def _guard_available() -> bool | None:
    """Whether ``trainwarden.guard`` is installed here (``None`` when it cannot be told)."""
    import importlib.util

    try:
        return importlib.util.find_spec("trainwarden.guard") is not None
    except (ImportError, ValueError):
        return None


def _dependencies(sup: _Supervisor) -> list[ResourceDescriptor]:
    out: list[ResourceDescriptor] = []
    by_event: dict[str, list[Mapping[str, Any]]] = {}
    for result in sup.preflight:
        by_event.setdefault(result.event, []).append(result.data)
    for code in by_event.get("preflight.code", []):
        commit = code.get("commit")
        remote = code.get("remote")
        annotations = {
            "dirty": code.get("dirty"),
            "dirtyDigest": code.get("dirty_digest"),
            "untracked": code.get("untracked"),
            "root": code.get("root"),
        }
        if commit:
            uri = f"git+{remote}@{commit}" if remote else None
            out.append(
                ResourceDescriptor(
                    name="code", uri=uri, digest={"gitCommit": commit}, annotations=annotations
                )
            )
        else:
            out.append(
                ResourceDescriptor(
                    name="code", uri=_file_uri(str(code.get("root"))), annotations=annotations
                )
            )
        script = code.get("script")
        if isinstance(script, dict) and _hex(script.get("sha256")):
            out.append(
                ResourceDescriptor(
                    name="script",
                    uri=_file_uri(str(script.get("path"))),
                    digest={"sha256": str(_hex(script.get("sha256")))},
                )
            )
    for env in by_event.get("preflight.env", []):
        info = sup.info
        env_notes: dict[str, Any] = {
            "verdict": env.get("verdict"),
            "mode": env.get("mode"),
            "summary": env.get("summary"),
        }
        if info is not None:
            env_notes.update(
                python=info.version, prefix=info.prefix, torch=_torch_version(info.site_dirs)
            )
        lock = env.get("lock")
        if isinstance(lock, dict) and _hex(lock.get("digest")):
            out.append(
                ResourceDescriptor(
                    name="environment-lock",
                    uri=_file_uri(str(lock.get("path"))),
                    digest={"sha256": str(_hex(lock.get("digest")))},
                    annotations={**env_notes, "signed": lock.get("signed")},
                )
            )
        else:
            uri = _file_uri(info.prefix) if info is not None else None
            out.append(ResourceDescriptor(name="environment", uri=uri, annotations=env_notes))
    for scan in by_event.get("preflight.scan", []):
        verdicts = {str(f.get("path")): f.get("verdict") for f in scan.get("files", [])}
        for item in scan.get("inputs", []):
            hexdigest = _hex(item.get("digest"))
            path = str(item.get("path"))
            out.append(
                ResourceDescriptor(
                    name=path,
                    uri=_file_uri(path),
                    # The `trainwarden sign` digest: equal to the subject digest of the run
                    # that wrote this checkpoint, which links the two runs.
                    digest={"sha256": hexdigest} if hexdigest else {},
                    annotations={
                        "kind": "input-checkpoint",
                        "verdict": verdicts.get(path, scan.get("verdict")),
                    },
                )
            )
    for inputs in by_event.get("preflight.inputs", []):
        for item in inputs.get("files", []):
            hexdigest = _hex(item.get("sha256"))
            out.append(
                ResourceDescriptor(
                    name=str(item.get("path")),
                    uri=_file_uri(str(item.get("path"))),
                    digest={"sha256": hexdigest} if hexdigest else {},
                    annotations={"kind": inputs.get("kind"), "size": item.get("size")},
                )
            )
    return out


def _torch_version(site_dirs: Sequence[str]) -> str | None:
    from importlib import metadata

    for dist in metadata.distributions(path=list(site_dirs)):
        if (getattr(dist, "name", None) or "").lower() == "torch":
            return dist.version
    return None


def _byproducts(
    sup: _Supervisor,
    exit_status: ExitStatus,
    seconds: float,
    seal: Any,
    warnings: Sequence[str],
    refusals: Sequence[str],
) -> list[ResourceDescriptor]:
    ledger = sup.ledger
    out = [
        ResourceDescriptor(
            name="ledger",
            uri=_file_uri(sup.ledger_dir),
            digest={"sha256": str(_hex(ledger.head))} if _hex(ledger.head) else {},
            annotations={
                "writer": ledger.writer_id,
                "seq": ledger.next_seq - 1,
                "head": ledger.head,
                "key": sup.key.public.fingerprint,
            },
        )
    ]
    if seal is not None:
        out.append(
            ResourceDescriptor(
                name="ledger-seal",
                uri=_file_uri(sup.ledger_dir / "seals"),
                digest={"sha256": str(_hex(seal.root))} if _hex(seal.root) else {},
                annotations={
                    "seal": seal.name,
                    "hash": seal.hash,
                    "writers": len(seal.writers),
                    "root": seal.root,
                },
            )
        )
    with sup.lock:
        endpoints = sorted(sup.egress.values(), key=lambda e: (str(e["host"]), str(e["port"])))
        natives = sorted(sup.native.values(), key=lambda e: str(e["library"]))
        guard = list(sup.guard_findings)
    for endpoint in endpoints:
        host, port = endpoint["host"], endpoint["port"]
        out.append(
            ResourceDescriptor(
                name=f"egress:{host}:{port}",
                uri=f"tcp://{_bracket(str(host))}:{port}" if port is not None else f"dns:{host}",
                annotations={"kind": "egress", **endpoint},
            )
        )
    out.extend(
        ResourceDescriptor(
            name=f"native-load:{native['library']}",
            annotations={"kind": "native-load", **native},
        )
        for native in natives
    )
    out.append(
        ResourceDescriptor(
            name="findings",
            annotations={
                "byTechnique": sup._technique_counts(),
                "guard": guard[:50],
                "preflightWarnings": list(warnings)[:50],
                "preflightRefusals": list(refusals)[:50],
                "problems": list(sup.problems)[:50],
            },
        )
    )
    out.append(
        ResourceDescriptor(
            name="exit",
            annotations={
                "status": exit_status.status,
                "signal": exit_status.signal,
                "seconds": seconds,
            },
        )
    )
    return out


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _versions(sup: _Supervisor) -> dict[str, str]:
    out = {"trainwarden": __version__, "python": platform.python_version()}
    if sup.info is not None:
        out["jobPython"] = sup.info.version
        torch = _torch_version(sup.info.site_dirs)
        if torch:
            out["torch"] = torch
    return out
