"""Save and load compressed models: a Hugging Face model directory plus what is sparsebert's.

A directory written by :func:`save` holds

- ``config.json`` as transformers writes it (``AutoConfig.from_pretrained(dir)`` works), with a
  ``quantization_config`` naming sparsebert, and the tokenizer files when a tokenizer is given
  (``AutoTokenizer.from_pretrained(dir)`` works);
- ``model.safetensors``: the model's state dict with the packed tensors of every converted
  layer; its header metadata carries the format version;
- ``sparsebert.json``: the manifest (format version, the model class, every converted layer's
  spec and the choice behind it, the compress config, attention setting, dtype and the
  sparsebert / torch / transformers versions). Self-attention modules whose query, key and value
  run as one layer (:func:`sparsebert.hf.fuse_qkv`) are listed under ``fused_qkv`` with that
  layer's spec; their ``layers`` entries keep the per-projection choices. Layers whose FFN runs
  as one op (:func:`sparsebert.hf.fuse_ffn`) are listed under ``fused_ffn`` (their modules and
  tensors are those of the two projections); ``load`` fuses them again. Submodules the model
  class builds but the saved model had set to ``None`` (``BertModel(config,
  add_pooling_layer=False)``, or ``model.pooler = None``) are listed under ``absent_modules``.

:func:`load` rebuilds the same model class (task head included) with empty modules built from
the specs, checks every tensor's name, dtype and shape against them before anything is copied,
and loads the weights: outputs are bit-equal to the saved model. Nothing is ever unpickled.

Each block-sparse layer also gets a zero-size ``<layer>.weight`` placeholder in the file: a
loader that does not know the format (``from_pretrained`` without sparsebert imported) then
stops with a size mismatch instead of initializing that layer at random.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .compress import STATE_ATTR, compile_model, fused_layout, is_compressed
from .memory import keep_freed_memory
from .prune import restructure
from .nn import Int8Linear, SparseInt8Linear, SparseLinear
from .nn._buffers import dtype_from_name

__all__ = ["save", "load", "FORMAT_VERSION", "MANIFEST", "WEIGHTS"]

FORMAT_VERSION = 2  # 2: query, key and value fused into one layer (manifest "fused_qkv"); 1 is read too
MANIFEST = "sparsebert.json"
WEIGHTS = "model.safetensors"
MODULES = {cls.__name__: cls for cls in (SparseLinear, Int8Linear, SparseInt8Linear)}


def _shared_aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """{alias: kept} for state-dict entries that are the same tensor (tied weights), which
    safetensors refuses to store twice."""
    seen: dict[tuple, str] = {}
    aliases = {}
    for key, t in state.items():
        if t.numel() == 0:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ident in seen:
            aliases[key] = seen[ident]
        else:
            seen[ident] = key
    return aliases


def _absent_modules(model: nn.Module) -> list[str]:
    """Dotted names of the submodules the model's class builds from its config that this model
    holds as None (``BertModel(config, add_pooling_layer=False)``, ``model.pooler = None``)."""
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        fresh = type(model)(model.config)
    absent = []
    for name, _ in fresh.named_modules():
        parent, _, attr = name.rpartition(".")
        try:
            owner = model.get_submodule(parent) if parent else model
        except AttributeError:
            continue
        if name and (attr in owner._modules or attr in vars(owner)) and getattr(owner, attr) is None:
            absent.append(name)
    return absent


def _remove_absent(model: nn.Module, names, path: Path) -> None:
    """Sets the submodules the saved model held as None (manifest ``absent_modules``) to None in
    the rebuilt one."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{str(path / MANIFEST)!r}: absent_modules must be a list of module names, got {names!r}")
    for name in names:
        parent, _, attr = name.rpartition(".")
        try:
            owner = model.get_submodule(parent) if parent else model
        except AttributeError:
            owner = None
        if owner is None or not isinstance(owner._modules.get(attr), nn.Module):
            raise ValueError(f"{str(path / MANIFEST)!r}: absent module {name!r} is not a submodule of "
                             f"{type(model).__name__}")
        setattr(owner, attr, None)


def save(model: nn.Module, directory: str | os.PathLike, tokenizer=None, *, overwrite: bool = False) -> Path:
    """Writes a compressed ``model`` (see :func:`sparsebert.compress`) to ``directory``; returns
    its path. ``tokenizer``: a transformers tokenizer saved alongside. A directory that exists
    and is not empty is refused unless ``overwrite=True``."""
    from safetensors.torch import save_file
    import transformers

    from . import __version__

    if not is_compressed(model):
        raise ValueError(f"{type(model).__name__} is not compressed by sparsebert.compress: save a plain model with "
                         "model.save_pretrained(directory)")
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists and is not empty: pass overwrite=True to replace its files")
    state_info = getattr(model, STATE_ATTR)

    # Every layer compress decided on: converted ones with their module spec, dense-kept ones
    # (plain nn.Linear, stored as usual) with their choice only.
    from .hf import QKV_ATTR, fused_qkv as fused_attention

    layers = {name: dict(info) for name, info in state_info["layers"].items()}
    fused_qkv = {f"{name}.{QKV_ATTR}" if name else QKV_ATTR: name for name in fused_attention(model)}
    qkv_specs = {}
    placeholders = []
    for name, module in model.named_modules():
        if name in fused_qkv:
            qkv_specs[fused_qkv[name]] = _linear_spec(module)
        elif isinstance(module, tuple(MODULES.values())):
            layers.setdefault(name, {})["spec"] = module.spec()
        if isinstance(module, (SparseLinear, SparseInt8Linear)):
            placeholders.append(f"{name}.weight")
    state = model.state_dict()
    aliases = _shared_aliases(state)
    tensors = {k: t.detach().contiguous() for k, t in state.items() if k not in aliases}
    for key in placeholders:
        tensors[key] = torch.zeros(0, dtype=torch.int8)

    manifest = {
        "format_version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "attention": state_info["config"]["attention"],
        "dtype": state_info["config"]["dtype"],
        "compress_config": state_info["config"],
        "tokens": state_info.get("tokens"),
        "calibration": state_info.get("calibration"),
        "layers": layers,
        "fused": state_info.get("fused", []),
        "fused_norms": state_info.get("fused_norms", []),
        "fused_ffn": state_info.get("fused_ffn", []),
        "fused_qkv": qkv_specs,
        "absent_modules": _absent_modules(model),
        "aliases": aliases,
        "placeholders": placeholders,
        "versions": {"sparsebert": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "source": getattr(model.config, "_name_or_path", None) or None,
    }
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS),
              metadata={"format": "pt", "sparsebert_format_version": str(FORMAT_VERSION)})
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default))
    model.config.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def _linear_spec(module: nn.Module) -> dict:
    """A converted layer's spec, or the shapes of a plain ``nn.Linear``."""
    if type(module) is nn.Linear:
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    return module.spec()


def _qkv_from_manifest(model: nn.Module, qkv_specs, path: Path) -> list[str]:
    """Lays out every self-attention the manifest lists as fused: an empty layer from its spec in
    place of the query, key and value projections (``load_state_dict`` fills it)."""
    from .hf import _bert_classes, qkv_layout

    if not isinstance(qkv_specs, dict):
        raise ValueError(f"{str(path)!r}: the manifest's fused_qkv must be an object, got {qkv_specs!r}")
    for name, spec in qkv_specs.items():
        where = f"{str(path)!r}: manifest fused_qkv {name!r}"
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{where} is not a module of {type(model).__name__}") from None
        parts = [module._modules.get(p) for p in ("query", "key", "value")]
        if type(module) is not _bert_classes()[2] or any(type(p) is not nn.Linear for p in parts):
            raise ValueError(f"{where} is not a BertSelfAttention with query, key and value projections")
        sizes = [p.out_features for p in parts]
        if not isinstance(spec, dict) or (spec.get("in_features"), spec.get("out_features")) != (
                parts[0].in_features, sum(sizes)):
            raise ValueError(f"{where}: spec {spec!r} does not match the model's projections "
                             f"({parts[0].in_features} -> {sizes})")
        try:
            if spec.get("type") == "Linear":
                if not isinstance(spec.get("bias"), bool):
                    raise ValueError(f"bias must be true or false, got {spec.get('bias')!r}")
                qkv = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
            elif spec.get("type") in MODULES:
                qkv = MODULES[spec["type"]].from_spec(spec)
            else:
                raise ValueError(f"unknown module spec {spec!r}")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
        qkv_layout(module, qkv, sizes)
    return list(qkv_specs)


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot store {type(o).__name__} in the manifest")


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a saved directory, checked for its format version."""
    path = Path(directory)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a directory")
    if not mpath.is_file():
        raise ValueError(f"{str(path)!r} was not written by sparsebert.save (no {MANIFEST}); load a plain Hugging Face "
                         "model with from_pretrained")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(mpath)!r} is not a readable manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{str(mpath)!r} is not a manifest (a JSON object)")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{str(mpath)!r}: format_version must be an int, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{str(mpath)!r} has format version {version}, newer than the {FORMAT_VERSION} this "
                         f"sparsebert reads: upgrade sparsebert")
    for key, kind in (("model_class", str), ("layers", dict), ("compress_config", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{str(mpath)!r}: {key} must be a {kind.__name__}, got {manifest.get(key)!r}")
    return manifest


def _model_class(name: str):
    import transformers
    from transformers import PreTrainedModel

    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise ValueError(f"manifest model_class {name!r} is not a transformers model class")
    return cls


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuilds a model written by :func:`save`: same class, same modules, bit-equal outputs.

    Everything is checked before a tensor is copied: the manifest (format version, layer
    specs), the safetensors header (a truncated or tampered file is refused) and every tensor's
    name, dtype and shape against the model built from the specs. Raises ValueError naming the
    bad file, key or value; never returns a partly loaded model."""
    from safetensors import SafetensorError, safe_open
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    from .compress import CompressConfig
    from .hf import ATTN_IMPLEMENTATION, fuse_ffn, fuse_layer_norms, mark_compressed, set_attention_precision, use_unpadded

    path = Path(directory)
    manifest = read_manifest(path)
    cls = _model_class(manifest["model_class"])
    cfg = CompressConfig.from_dict(manifest["compress_config"])
    wpath = path / WEIGHTS
    if not wpath.is_file():
        raise ValueError(f"{str(path)!r} has no {WEIGHTS}")

    config = AutoConfig.from_pretrained(str(path))
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with no_init_weights():
        model = cls(config)
    _remove_absent(model, manifest.get("absent_modules", []), path)
    restructure(model)  # a head- or FFN-pruned model: the per-layer sizes its config records
    model.tie_weights()  # the ties the class declares (from_pretrained does this too)
    for name, layer in manifest["layers"].items():
        if not isinstance(layer, dict):
            raise ValueError(f"manifest layer {name!r} must be an object, got {layer!r}")
        if "spec" not in layer:  # kept dense: a plain nn.Linear of the model class
            continue
        spec = layer["spec"]
        mod_cls = MODULES.get(spec.get("type")) if isinstance(spec, dict) else None
        if mod_cls is None:
            raise ValueError(f"manifest layer {name!r}: unknown module spec {spec!r}")
        parent, _, attr = name.rpartition(".")
        try:
            owner = model.get_submodule(parent) if parent else model
            current = getattr(owner, attr)
        except AttributeError:
            raise ValueError(f"manifest layer {name!r} is not a module of {cls.__name__}") from None
        if not isinstance(current, nn.Linear) or (current.out_features, current.in_features) != (
                spec.get("out_features"), spec.get("in_features")):
            raise ValueError(f"manifest layer {name!r}: spec {spec.get('out_features')}x{spec.get('in_features')} "
                             f"does not match the model's {current}")
        try:
            setattr(owner, attr, mod_cls.from_spec(spec))
        except (ValueError, TypeError) as e:
            raise ValueError(f"manifest layer {name!r}: {e}") from None
    fused_qkv = _qkv_from_manifest(model, manifest.get("fused_qkv", {}), path)
    model.to(dtype_from_name(cfg.dtype))

    expected = model.state_dict()
    # Ties and placeholders come from the rebuilt model, never from the manifest: a file can only
    # leave out what the model itself shares, and only block-sparse layers have a placeholder.
    aliases = _shared_aliases(expected)
    placeholders = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseInt8Linear))}
    try:
        with safe_open(str(wpath), framework="pt") as f:
            meta = f.metadata() or {}
            version = meta.get("sparsebert_format_version")
            if version is None or not version.isdigit() or int(version) > FORMAT_VERSION:
                raise ValueError(f"{str(wpath)!r}: sparsebert_format_version {version!r} in the header is missing or "
                                 f"newer than {FORMAT_VERSION}")
            keys = set(f.keys())
            missing = sorted(set(expected) - keys - set(aliases))
            extra = sorted(keys - (set(expected) - set(aliases)) - placeholders)
            if missing or extra:
                raise ValueError(f"{str(wpath)!r} does not match the manifest: missing {missing[:5]}"
                                 f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                                 f"{' ...' if len(extra) > 5 else ''}")
            state = {}
            for key in sorted(keys):
                sl = f.get_slice(key)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                if key in placeholders:
                    if shape != (0,):
                        raise ValueError(f"{str(wpath)!r}: {key} is a placeholder of a block-sparse layer and must be "
                                         f"empty, got shape {shape}")
                    continue
                want = expected[key]
                if shape != tuple(want.shape):
                    raise ValueError(f"{str(wpath)!r}: {key} has shape {shape}, the manifest's layer needs "
                                     f"{tuple(want.shape)}")
                state[key] = f.get_tensor(key)
                if state[key].dtype != want.dtype:
                    raise ValueError(f"{str(wpath)!r}: {key} is {state[key].dtype}, the manifest's layer needs "
                                     f"{want.dtype} (file dtype {dtype})")
    except SafetensorError as e:
        raise ValueError(f"{str(wpath)!r} is not a readable safetensors file (truncated or damaged?): {e}") from None
    except OSError as e:
        raise ValueError(f"{str(wpath)!r} cannot be read: {e}") from None
    for alias, kept in aliases.items():
        state[alias] = state[kept]
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    fused_layout(model)  # layers saved with a fused activation: the module after them is an identity

    if cfg.attention == "sparsebert":
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    elif cfg.attention == "unpadded":
        use_unpadded(model)
    if cfg.attention is not None:
        set_attention_precision(model, cfg.attention_precision)
    fused_norms = fuse_layer_norms(model) if manifest.get("fused_norms") else []
    if fused_norms != manifest.get("fused_norms", []):
        raise ValueError(f"{str(path)!r}: the manifest lists residual add + LayerNorm fused in "
                         f"{manifest.get('fused_norms')}, but this model fuses {fused_norms}")
    fused_ffn = fuse_ffn(model) if manifest.get("fused_ffn") else []
    if fused_ffn != manifest.get("fused_ffn", []):
        raise ValueError(f"{str(path)!r}: the manifest lists the FFN fused into one op in "
                         f"{manifest.get('fused_ffn')}, but this model fuses {fused_ffn}")
    layers = {n: {k: v for k, v in layer.items() if k != "spec"} for n, layer in manifest["layers"].items()}
    setattr(model, STATE_ATTR, {"config": cfg.to_dict(), "tokens": manifest.get("tokens"),
                                "calibration": manifest.get("calibration"), "layers": layers,
                                "fused": manifest.get("fused", []), "fused_norms": fused_norms,
                                "fused_qkv": fused_qkv, "fused_ffn": fused_ffn})
    mark_compressed(model)
    model.config._name_or_path = manifest.get("source") or str(path)
    keep_freed_memory()  # see sparsebert.memory: a warm forward takes no fresh pages
    model = model.to(device).eval()
    if cfg.compile:
        compile_model(model)
    return model
