"""Models: created through timm's registry; the pipeline's own checkpoints loaded strictly, a user's
weights through timm's loader.

Checkpoints the pipeline writes are plain timm state_dicts saved with ``torch.save`` (loadable
with ``timm.create_model(name, checkpoint_path=...)``) and read back by :func:`create_model`.
Weights a config names (``pretrained: true``, a ``weights`` file) go through timm's own loader,
:func:`load_pretrained`, from the file :func:`pretrained_file` resolves, so the file hashed is
the file loaded.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import timm
import torch
import torch.nn as nn
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from pipeline._atomic import write_atomic
from pipeline._fingerprint import sha256_bytes
from pipeline.errors import ConfigError, DataError, StoreError
from pipeline.paths import is_uri, read_bytes


def create_model(name: str, kwargs: Mapping[str, Any] | None = None, *, seed: int | None = None,
                 weights: str | Path | None = None) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)``, seeded init or weights from a file."""
    if not is_known_model(name):
        raise ConfigError(f"unknown timm model {name!r}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **dict(kwargs or {}))
    if weights is not None:
        load_weights(model, weights)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors``, or a torch file read with ``weights_only=True``.

    Accepts the common wrappers ``{"model": ...}``, ``{"state_dict": ...}``, ``{"model_ema": ...}``.
    """
    if is_uri(path):  # a checkpoint published to an object store (docs/design.md §6): read whole, then parsed
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            raise DataError(f"{path}: weights file not found") from None
        except (OSError, StoreError) as e:
            raise DataError(f"{path}: cannot read weights ({e})") from None
        source: Any = io.BytesIO(data)
    else:
        path = source = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: weights file not found")
    try:
        if str(path).endswith(".safetensors"):
            sd: Any = load_safetensors(data) if is_uri(path) else load_file(str(path))
        else:
            sd = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
        raise DataError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    for wrapper in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(f"{path}: not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into ``model`` strictly; a mismatch names the file and the keys."""
    sd = read_state_dict(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise DataError(f"{path}: weights do not fit {type(model).__name__}: {' '.join(first)}") from None


def checkpoint_bytes(model: nn.Module) -> bytes:
    """The bytes of a plain state_dict checkpoint (deterministic for the same weights)."""
    buf = io.BytesIO()
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, buf)
    return buf.getvalue()


def save_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Atomically save ``model``'s state_dict to ``path``; returns the file's sha256."""
    data = checkpoint_bytes(model)
    write_atomic(path, data)
    return sha256_bytes(data)


def state_dict_fingerprint(state_dict: Mapping[str, Any], name: str = "") -> str:
    """sha256 over a model's name and its tensors in sorted key order (name, dtype, shape, bytes).

    Independent of how the weights were saved (file format, key order), so the same weights
    always give the same fingerprint.
    """
    h = hashlib.sha256(name.encode() + b"\0")
    for key in sorted(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().cpu().contiguous()
        h.update(key.encode() + b"\0" + str(t.dtype).encode() + b"\0" + str(tuple(t.shape)).encode())
        # view as bytes via numpy; bfloat16 has no numpy dtype, so reinterpret as int16 first
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()


def model_fingerprint(model: nn.Module, name: str) -> str:
    """Fingerprint of a model's weights and its timm name (see :func:`state_dict_fingerprint`)."""
    return state_dict_fingerprint(model.state_dict(), name)


# ----------------------------------------------------------------------------- pretrained weights

# timm's choice of a checkpoint in a `local-dir:` folder (timm.models._hub.load_state_dict_from_path),
# restated so the file hashed is the file timm loads; tests compare the two.
_LOCAL_DIR_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
                    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
_LOCAL_DIR_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".bin")
_HF_WEIGHTS = "pytorch_model.bin"


def is_sourced_name(name: str) -> bool:
    """Whether ``name`` is a timm ``hf-hub:ORG/NAME`` or ``local-dir:PATH`` model name."""
    return name.startswith(("hf-hub:", "local-dir:"))


def is_known_model(name: str) -> bool:
    """A registered timm architecture (with or without a pretrained tag), or a sourced name."""
    return is_sourced_name(name) or timm.is_model(name)


def pretrained_cfg(name: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``pretrained_cfg`` timm gives ``name`` (its tag's, or a hub / folder ``config.json``'s)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **dict(kwargs or {}))
    cfg: Any = model.pretrained_cfg  # a dict on every timm model
    return dict(cfg)


def _hub_file(hub_id: str, filename: str | None) -> Path:
    # as timm.models._hub.load_state_dict_from_hf: a .safetensors twin of a .bin file first
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo, _, revision = hub_id.partition("@")
    filename = filename or _HF_WEIGHTS
    candidates = [filename]
    if filename.endswith(".bin"):
        twin = "model.safetensors" if filename == _HF_WEIGHTS else filename[:-4] + ".safetensors"
        candidates.insert(0, twin)
    def download(fname: str) -> Path:
        return Path(hf_hub_download(repo, fname, revision=revision or None, library_name="timm",
                                    library_version=timm.__version__))

    for fname in candidates[:-1]:
        try:
            return download(fname)
        except EntryNotFoundError:  # offline and not cached (LocalEntryNotFoundError) too, as timm
            continue
    return download(candidates[-1])


def _local_dir_file(folder: Path) -> Path:
    for fname in _LOCAL_DIR_FILES:
        if (folder / fname).exists():
            return folder / fname
    for suffix in _LOCAL_DIR_SUFFIXES:
        files = sorted(folder.glob(f"*{suffix}"))
        if files:
            return files[0]
    raise DataError(f"{folder}: no checkpoint file (model.safetensors, pytorch_model.bin, ...)")


def pretrained_file(name: str, kwargs: Mapping[str, Any] | None = None) -> Path:
    """The file timm's ``create_model(name, pretrained=True)`` loads, fetched into its cache when absent.

    Resolved as timm resolves it (``timm.models._builder._resolve_pretrained_source``): a
    ``hf-hub:`` name or a tag with a ``hf_hub_id`` from the Hugging Face hub through its cache
    (``HF_HUB_OFFLINE=1``: the cache only), a ``local-dir:`` folder's checkpoint, else the
    tag's URL through torch's hub cache.

    Raises:
        ConfigError: the name has no pretrained weights.
        DataError: they cannot be found or fetched (offline and not cached, a folder without one).
    """
    cfg = pretrained_cfg(name, kwargs)
    try:
        if cfg.get("source") == "local-dir" and cfg.get("file"):
            return _local_dir_file(Path(cfg["file"]))
        if cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
            return _hub_file(cfg["hf_hub_id"], cfg.get("hf_hub_filename"))
        if cfg.get("file"):
            return Path(cfg["file"])
        if cfg.get("hf_hub_id"):
            return _hub_file(cfg["hf_hub_id"], cfg.get("hf_hub_filename"))
        if cfg.get("url"):
            from timm.models._hub import download_cached_file  # torch hub cache, as timm's url path

            return Path(download_cached_file(cfg["url"]))
    except (OSError, ValueError) as e:  # hub errors: offline and not cached, no such repo or file, no network
        raise DataError(f"{name}: cannot fetch its pretrained weights ({type(e).__name__}: {e}); with "
                        "HF_HUB_OFFLINE=1 they must be in the Hugging Face cache (HF_HUB_CACHE / HF_HOME)") from None
    raise ConfigError(f"{name}: timm has no pretrained weights for it; give a weights file")


def load_pretrained(name: str, kwargs: Mapping[str, Any] | None, file: str | Path, *, pretrained: bool,
                    num_classes: int | None = None, seed: int | None = None) -> nn.Module:
    """``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=file))``: timm's loader.

    timm's checkpoint filter applies (position embeddings resampled to the model's ``img_size``,
    foreign key layouts converted), and so do its ``.npz`` loader and input-channel adaptation.

    Args:
        file: the file to load (:func:`pretrained_file`, or a user's weights file); the one hashed.
        pretrained: True: ``name``'s pretrained weights (its ``pretrained_cfg`` describes the
            file's head); False: a checkpoint of this very model, head included (loaded strictly).
        num_classes: with ``pretrained``: a fine-tune to this many classes (the head is
            re-initialised, seeded, when the pretrained one has another size); None keeps the
            pretrained head, and refuses kwargs that would replace it.
        seed: seed of whatever the file does not hold (a re-initialised head).

    Raises:
        ConfigError: the pretrained head would be replaced without a fine-tune.
        DataError: the file does not fit the model.
    """
    file = Path(file)
    if not file.is_file():
        raise DataError(f"{file}: weights file not found")
    kwargs = dict(kwargs or {})
    overlay: dict[str, Any] = {"file": str(file), "source": None, "custom_load": file.suffix == ".npz"}
    if pretrained:
        head = pretrained_cfg(name).get("num_classes")
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        elif kwargs.get("num_classes", head) != head:
            raise ConfigError(f"{name}: its pretrained classifier has {head} classes, kwargs.num_classes "
                              f"{kwargs['num_classes']} would replace it untrained; fine-tune it instead")
    else:  # the file holds this very model: its head and input channels, not the pretrained ones
        size = tuple(pretrained_cfg(name).get("input_size") or (3, 224, 224))
        overlay["input_size"] = (int(kwargs.get("in_chans", size[0])), *size[1:])
        if "num_classes" in kwargs:
            overlay["num_classes"] = kwargs["num_classes"]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            first = " ".join(str(e).splitlines()[:4])
            raise DataError(f"{file}: weights do not fit {name}: {first}") from None


def weights_file(name: str, kwargs: Mapping[str, Any] | None, *, pretrained: bool,
                 weights: str | Path | None) -> Path | None:
    """The file a model's configured weights load from: ``weights`` when given, else the name's
    pretrained file (:func:`pretrained_file`) when ``pretrained``, else None (a seeded init)."""
    if weights is not None:
        return Path(weights)
    return pretrained_file(name, kwargs) if pretrained else None


def holds_model(file: str | Path, model: nn.Module) -> bool:
    """Whether ``file`` is a plain checkpoint of ``model``'s weights as loaded, so :func:`create_model`
    can load it strictly (no filter, resampling or conversion was needed)."""
    try:
        sd = read_state_dict(file)
    except DataError:
        return False  # e.g. .npz: only timm's loader reads it
    return state_dict_fingerprint(sd) == state_dict_fingerprint(model.state_dict())


def checkpoint_stem(name: str) -> str:
    """``name`` as a file-name stem (``hf-hub:org/vit`` -> ``hf-hub-org-vit``)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.") or "model"
