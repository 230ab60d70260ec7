"""Find the card of a model the user names: a built-in alias, a card the cluster recorded, a Hugging Face repo id
(its config.json and file sizes, read through huggingface-hub) or a local folder.

The gateway (and `exo --model`) derives the card, not the master: the master is the fenced writer of the log and
must not wait on the network, and the card must be known before placement (bytes, layers) while no worker has
the files yet. The derived card travels in the command and is recorded in the log (ModelCardRecorded), so every
service sees the same card whatever node it runs on.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from shared.hub_errors import hub_failure
from shared.models import HubRepo, LocalFolder, ModelCard, builtin_card

from services.gateway.hub_card import CardProblem, card_from_config, chat_template_of, looks_like_hub_id

log = structlog.get_logger()


class ModelLookupError(Exception):
    """Why a model name gives no card, with the HTTP status it means (404 unknown, 400 unsupported, 401/403
    gated, 503 hub unreachable)."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


def mlx_lm_supports(model_type: str) -> bool:
    """mlx-lm has a module for it (mlx_lm.models.<type>, after its own remapping), found without importing mlx."""
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return False
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "models"
    name = model_type.replace("-", "_")
    if (models_dir / f"{name}.py").is_file():
        return True
    from mlx_lm.utils import MODEL_REMAPPING  # only for a name without a module of its own

    remapped = MODEL_REMAPPING.get(model_type)
    return remapped is not None and (models_dir / f"{remapped}.py").is_file()


def is_folder_name(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~"))


def resolve_card(name: str, recorded: Mapping[str, ModelCard]) -> ModelCard:
    """Blocking (network); raises ModelLookupError."""
    card = builtin_card(name) or recorded.get(name)
    if card is not None:
        return card
    if is_folder_name(name):
        return _checked(folder_card(Path(name).expanduser()))
    if looks_like_hub_id(name):
        return _checked(hub_card(name))
    raise ModelLookupError(404, "model_not_found", f"unknown model {name!r}: not a built-in model, a Hugging Face "
                           "repo id (ORG/NAME) or a folder path (starting with / or ./)")  # fmt: skip


def _checked(card: ModelCard | CardProblem) -> ModelCard:
    if isinstance(card, CardProblem):
        raise ModelLookupError(400, "unsupported_model", card.reason)
    return card


TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja")  # where a repo keeps its chat template


def folder_card(folder: Path) -> ModelCard | CardProblem:
    folder = folder.resolve()
    if not (folder / "config.json").is_file():
        raise ModelLookupError(404, "model_not_found", f"no model folder at {folder} (no config.json)")
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return _card_in(str(folder), LocalFolder(str(folder)), folder, sizes)


def hub_card(repo_id: str, revision: str = "main") -> ModelCard | CardProblem:
    folder, sizes = _hub_metadata(repo_id, revision)
    return _card_in(repo_id, HubRepo(repo_id, revision), folder, sizes)


def _card_in(model_id: str, source: HubRepo | LocalFolder, folder: Path, sizes: dict[str, int]) -> ModelCard | CardProblem:
    """`folder` holds config.json and whichever of TEMPLATE_FILES the model has."""
    tokenizer = folder / "tokenizer_config.json"
    jinja = folder / "chat_template.jinja"
    template = chat_template_of(_read_json(tokenizer) if tokenizer.is_file() else {},
                                jinja.read_text() if jinja.is_file() else None)  # fmt: skip
    return card_from_config(model_id, source, _read_json(folder / "config.json"), sizes, mlx_lm_supports, template)


def _hub_metadata(repo_id: str, revision: str) -> tuple[Path, dict[str, int]]:
    """The snapshot folder holding the repo's config.json and template files, and the sizes of all its files."""
    from huggingface_hub import HfApi, constants, hf_hub_download

    if constants.HF_HUB_OFFLINE:
        return _cached_metadata(repo_id, revision)
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
        if "config.json" not in sizes:
            raise ModelLookupError(400, "unsupported_model", f"{repo_id} has no config.json: not an MLX or "
                                   "transformers-format model")  # fmt: skip
        folder = Path(hf_hub_download(repo_id, "config.json", revision=info.sha)).parent
        for name in TEMPLATE_FILES:
            if name in sizes:
                hf_hub_download(repo_id, name, revision=info.sha)
        return folder, sizes
    except ModelLookupError:
        raise
    except Exception as exc:  # noqa: BLE001 - each hub failure becomes one clear answer
        error = _lookup_error(repo_id, exc)
        if error.code != "hub_unreachable":
            raise error from exc
        try:  # the hub is out of reach: what the cache holds serves, with no network
            return _cached_metadata(repo_id, revision)
        except ModelLookupError:
            raise error from exc


def _cached_metadata(repo_id: str, revision: str) -> tuple[Path, dict[str, int]]:
    """HF_HUB_OFFLINE: the card from the local cache alone (the files the worker keeps)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True,
                                        allow_patterns=["*.json", "*.jinja"]))  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        raise ModelLookupError(503, "hub_offline", f"{repo_id} is not in the local Hugging Face cache and "
                               f"HF_HUB_OFFLINE is set ({type(exc).__name__})") from exc  # fmt: skip
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # a pipeline node may hold only some weight files: the index names them all
        for name in set(_read_json(index).get("weight_map", {}).values()):
            sizes.setdefault(name, 0)
    return folder, sizes


def _lookup_error(repo_id: str, exc: BaseException) -> ModelLookupError:
    from huggingface_hub import get_token

    failure = hub_failure(repo_id, exc, token_set=bool(get_token()))
    return ModelLookupError(failure.status, failure.code, failure.reason)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLookupError(400, "unsupported_model", f"cannot read {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLookupError(400, "unsupported_model", f"{path.name} is not a JSON object")
    return data
