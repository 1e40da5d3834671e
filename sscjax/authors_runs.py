"""The paper authors' trained networks as run folders (`ssc weights import-authors`): one of their `model.pt` files
becomes a run that every command takes, recording the file and its SHA-256 and set to run the network exactly as
their inference code does (`data.conventions = "authors"`, see `sscjax.configs.lnet` and `sscjax.configs.snet`), an
S-Net's heat maps as their code makes them (`explain.occlusion = "authors"`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sscjax import networks
from sscjax.configs import AUTHORS, ModelConfig
from sscjax.configs.snet import AUTHORS_OCCLUSION
from sscjax.errors import ModelError
from sscjax.models.authors import AuthorsCheckpoint, read_authors_checkpoint
from sscjax.provenance import file_sha256
from sscjax.run_files import write_run

# The authors' architectures each network may be (`sscjax.models.authors.FORMATS`).
NETWORK_ARCHS = {"lnet": ("vgg11_3d",), "snet": ("convnext", "vgg11_bn")}
# Model arguments the conventions fix: the authors' S-Nets take [0, 1] slices without ImageNet normalisation.
CONVENTION_KWARGS: dict[str, dict[str, Any]] = {"lnet": {}, "snet": {"normalize_input": False}}


def network_of(checkpoint: AuthorsCheckpoint, net: str) -> None:
    """Check that the checkpoint holds a network of kind `net`; ModelError naming the file and what it holds."""
    found = next(n for n, archs in NETWORK_ARCHS.items() if checkpoint.arch in archs)
    if found != net:
        title = networks.network(found).title
        raise ModelError(
            f"{checkpoint.source}: holds the authors' {title} ({checkpoint.arch}), not an {networks.network(net).title}; "
            f"import it with --net {found}"
        )


def authors_config(checkpoint: AuthorsCheckpoint, net: str, sha256: str, assignments: Sequence[str] = ()) -> Any:
    """The run settings of an imported network: the paper preset with the checkpoint's architecture, its source file
    and SHA-256 and the authors' conventions, then changed by `key.path=value` assignments (e.g. data.size)."""
    paper = networks.preset(net, "paper")
    model = ModelConfig(
        checkpoint.arch,
        {**checkpoint.kwargs, **CONVENTION_KWARGS[net]},
        imported_from=str(Path(checkpoint.source).resolve()),
        imported_sha256=sha256,
    )
    config = dataclasses.replace(paper, model=model, data=dataclasses.replace(paper.data, conventions=AUTHORS))
    if net == "snet":  # their heat maps by default (docs/heatmaps.md)
        config = dataclasses.replace(config, explain=dataclasses.replace(config.explain, occlusion=AUTHORS_OCCLUSION))
    return networks.with_changes(config, assignments)


def import_authors(
    path: str | Path, net: str, run_dir: str | Path, assignments: Sequence[str] = ()
) -> tuple[Path, Any]:
    """(run folder, its config) of the authors' checkpoint `path` imported as a `net` run in `run_dir` (new or
    empty); ModelError or ConfigError, and no run folder, for a file or settings that do not fit."""
    checkpoint = read_authors_checkpoint(path)
    network_of(checkpoint, net)
    config = authors_config(checkpoint, net, file_sha256(path), assignments)
    return write_run(run_dir, config, checkpoint.model(config.train.seed)), config
