"""Provenance of a result: the software versions, the device, the trained runs (config and checkpoint hashes) and
the input's checksum, so that a scores.json can be traced to exactly what made it; and choosing JAX's backend.

Checksums are sha256, read in chunks. A single file's is its own sha256 (what `sha256sum FILE` prints); a folder's
(a DICOM series, a checkpoint) and a scan of several files (.mhd with its data file) is the sha256 of the manifest
`sha256sum` writes for its files in sorted order of their relative paths:
`cd FOLDER && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum | sha256sum`.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import jax

from sscjax import __version__
from sscjax.errors import ConfigError, ModelError
from sscjax.runs import CHECKPOINT_DIR, CONFIG_FILE, checkpoint_steps

PLATFORMS = ("cpu", "gpu")  # what --device may name
CHUNK = 1 << 20  # bytes hashed at a time


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file, streamed in chunks (a scan can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(root: str | Path, files: list[Path]) -> str:
    """The sha256 of the `sha256sum` manifest of `files` (under `root`), in sorted order of their relative paths."""
    root = Path(root)
    names = sorted(Path(f).relative_to(root).as_posix() for f in files)
    manifest = "".join(f"{file_sha256(root / name)}  {name}\n" for name in names)
    return hashlib.sha256(manifest.encode()).hexdigest()


def _mhd_data_files(header: Path) -> list[Path]:
    """The data file a MetaImage header names beside itself (none when the data is LOCAL, inside the header)."""
    with open(header, "rb") as f:
        for line in f:
            key, _, value = line.decode("latin-1").partition("=")
            if key.strip() == "ElementDataFile":
                data = header.parent / value.strip()
                return [data] if value.strip() != "LOCAL" and data.is_file() else []
    return []


def input_files(path: str | Path) -> list[Path]:
    """The files a scan is read from: every file of a DICOM folder, an .mhd header and its data, or the file."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    extra = _mhd_data_files(path) if path.name.lower().endswith(".mhd") else []
    return [path, *extra]


def input_record(path: str | Path) -> dict:
    """{"path", "sha256", "files"} of a scan's input: the file's own sha256, or the manifest's over several."""
    path = Path(path)
    files = input_files(path)
    checksum = file_sha256(path) if files == [path] else files_sha256(path if path.is_dir() else path.parent, files)
    return {"path": str(path.resolve()), "sha256": checksum, "files": len(files)}


def checkpoint_step(run_dir: str | Path, kind: str = "best") -> int:
    """The step of a run's newest `kind` checkpoint (the one its models are loaded from)."""
    steps = checkpoint_steps(run_dir, kind)
    if not steps:
        raise ModelError(f"{run_dir}: no saved {kind} checkpoint in {Path(run_dir) / CHECKPOINT_DIR / kind}")
    return steps[-1]


def run_record(run_dir: str | Path, kind: str = "best") -> dict:
    """{"run", "config_sha256", "checkpoint", "checkpoint_step", "checkpoint_sha256"} of a trained run folder."""
    run_dir = Path(run_dir)
    step = checkpoint_step(run_dir, kind)
    folder = run_dir / CHECKPOINT_DIR / kind / str(step)
    return {
        "run": str(run_dir.resolve()),
        "config_sha256": file_sha256(run_dir / CONFIG_FILE),
        "checkpoint": kind,
        "checkpoint_step": step,
        "checkpoint_sha256": files_sha256(folder, [p for p in folder.rglob("*") if p.is_file()]),
    }


def versions() -> dict[str, str]:
    """The installed versions of sscjax, JAX and jaxlib (sscjax's own when run from a source tree)."""
    try:
        own = metadata.version("sscjax")
    except metadata.PackageNotFoundError:
        own = __version__
    return {"sscjax": own, "jax": metadata.version("jax"), "jaxlib": metadata.version("jaxlib")}


def device_record() -> dict:
    """{"platform", "device_kind", "count"} of the devices JAX computes on."""
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind, "count": len(devices)}


def batch_record(runs: dict[str, list[dict]]) -> dict:
    """What makes results here and now: versions, device and the runs used ({"lnet": [...], "snet": [...]} of
    `run_record`s)."""
    return {**versions(), "device": device_record(), "models": runs}


def record(source: str, runs: dict[str, list[dict]]) -> dict:
    """The provenance of one scan's result: `batch_record` of the runs used and the input (None for a scan made
    in memory)."""
    return {**batch_record(runs), "input": input_record(source) if source and Path(source).exists() else None}


def use_platform(name: str | None) -> None:
    """Make JAX compute on `name` ("cpu" or "gpu"; None keeps JAX's default backend) from now on; ConfigError when
    there is no such device, or JAX has already started on another one."""
    if name is None:
        return
    if name not in PLATFORMS:
        raise ConfigError(f"device {name!r} is not one of {', '.join(PLATFORMS)}")
    previous = jax.config.jax_platforms  # type: ignore[attr-defined]  # a flag, set as an attribute at runtime
    jax.config.update("jax_platforms", name)  # takes effect only if JAX has not started a backend yet
    try:
        wanted, running = jax.devices(name)[0].platform, jax.devices()[0].platform
    except RuntimeError:
        jax.config.update("jax_platforms", previous)
        raise ConfigError(
            f"--device {name}: JAX finds no {name.upper()} on this machine (no such device, or a jaxlib "
            f"without {name.upper()} support)"
        ) from None
    if wanted != running:
        jax.config.update("jax_platforms", previous)
        raise ConfigError(
            f"--device {name}: JAX already computes on {running} in this process; choose the device "
            "before anything else starts JAX"
        )
