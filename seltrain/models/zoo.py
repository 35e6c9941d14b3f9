"""Networks seltrain did not train: built from a name, with weights from a file or the cache.

``build_external(name, weights)`` returns the nn.Module and what is known of it:

* ``torchvision:NAME``: a torchvision classifier (``resnet18``, ``resnet50``, ``vgg16``,
  ``vgg16_bn``, ``alexnet``, ... every name ``torchvision.models.list_models`` lists for
  classification), built without weights and then given ``weights``;
* ``package.module:factory``: ``factory()`` of an importable module (the current folder is
  searched first, as ``python -m`` does), or ``path/to/nets.py:factory`` of a source file;
  it is called with no arguments and must return an nn.Module.

``weights`` is a file (a state_dict ``.pth``, or a checkpoint holding one under
``state_dict`` or ``model``; a DataParallel ``module.`` prefix is dropped), or for torchvision
a weights name (``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``). A name is looked up
in torch's hub cache (``torch.hub.get_dir()/checkpoints/<the file torchvision would
download>``) and never downloaded: where the file is missing, one line says which file to put
where. Such a name also gives the preprocessing the weights were trained with (crop and resize
size, mean and std) and their class names.

A torchvision network's class count follows its weights: a state_dict whose classifier has
K outputs builds the network with ``num_classes=K``. Weights that do not fit are one line
naming the first mismatched key and both shapes. Every failure here is a ``ModelConfigError``
(one line, exit 2).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from seltrain.errors import did_you_mean, excerpt
from seltrain.models.probed import ModelConfigError

TORCHVISION = "torchvision"


@dataclass
class ExternalModel:
    """A built network and what its name and weights say about it."""
    model: nn.Module
    name: str                          # as given: torchvision:resnet18, pkg.mod:factory
    weights_file: str | None = None    # the file the weights came from
    weights_sha256: str | None = None
    # From a torchvision weights name: the preprocessing and classes it was trained with.
    crop_size: int | None = None
    resize_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    categories: list[str] = field(default_factory=list)

    @property
    def is_torchvision(self) -> bool:
        return self.name.startswith(TORCHVISION + ":")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_name(name: str) -> tuple[str, str]:
    """``torchvision:resnet18`` -> ("torchvision", "resnet18"); a name without a colon is
    refused with the two forms."""
    source, sep, attr = name.partition(":")
    if not sep or not source or not attr:
        raise ModelConfigError(f"--model {excerpt(name)}: give torchvision:NAME (e.g. "
                               "torchvision:resnet18) or package.module:factory")
    return source, attr


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def build_external(name: str, weights: str | None = None) -> ExternalModel:
    """The network ``name`` with ``weights`` loaded (module docstring), in eval mode."""
    source, attr = split_name(name)
    if source == TORCHVISION:
        return _torchvision(name, attr, weights)
    model = _factory(name, source, attr)
    ext = ExternalModel(model, name)
    if weights:
        ext.weights_file = _weights_file(weights, name)
        load_weights(model, read_state_dict(ext.weights_file), ext.weights_file, name)
        ext.weights_sha256 = sha256(ext.weights_file)
    return ext


def _torchvision(name: str, arch: str, weights: str | None) -> ExternalModel:
    import torchvision.models as tvm

    names = torchvision_names()
    if arch not in names:
        raise ModelConfigError(f"--model {name}: torchvision has no classifier '{arch}'"
                               f"{did_you_mean(arch, names)}; choose from "
                               f"{', '.join(n for n in names if n in COMMON)}, ...")
    ext = ExternalModel(nn.Identity(), name)
    state = None
    if weights:
        if os.path.exists(weights) or os.sep in weights or weights.endswith((".pth", ".pt")):
            ext.weights_file = _weights_file(weights, name)
        else:
            ext.weights_file = _hub_weights(arch, weights, ext)
        state = read_state_dict(ext.weights_file)
        ext.weights_sha256 = sha256(ext.weights_file)
    kwargs = {}
    if state is not None:
        with torch.device("meta"):  # the layer names and shapes only: no weights drawn
            classes = _classifier_outputs(tvm.get_model(arch), state)
        if classes is not None:
            kwargs["num_classes"] = classes
    ext.model = tvm.get_model(arch, weights=None, **kwargs)
    if state is not None:
        load_weights(ext.model, state, ext.weights_file, name)
    ext.model.eval()
    return ext


# The names the error message offers first (torchvision lists about 80 classifiers).
COMMON = ("alexnet", "resnet18", "resnet50", "vgg16", "vgg16_bn", "densenet121",
          "mobilenet_v2", "efficientnet_b0")


def _classifier_outputs(model: nn.Module, state: dict) -> int | None:
    """The class count of ``state`` where only the last Linear layer's output width differs
    from ``model``'s (a torchvision network trained for another number of classes)."""
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        return None
    key = f"{last[-1]}.weight"
    w, own = state.get(key), model.state_dict().get(key)
    if not isinstance(w, torch.Tensor) or own is None or w.dim() != 2 \
            or w.shape[1] != own.shape[1] or w.shape[0] == own.shape[0]:
        return None
    return int(w.shape[0])


def _hub_weights(arch: str, weights: str, ext: ExternalModel) -> str:
    """The cached file of torchvision weights name ``weights`` (never downloaded)."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(arch)
    member = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    if member == "DEFAULT":
        member = enum.DEFAULT.name
    choices = [w.name for w in enum]
    if member not in choices:
        listed = ", ".join(f"{enum.__name__}.{c}" for c in choices)
        raise ModelConfigError(f"--weights {excerpt(weights)}: not a file, nor weights of "
                               f"torchvision's {arch}{did_you_mean(member, choices)}; give a "
                               f".pth file or one of {listed}")
    w = enum[member]
    t = w.transforms()
    ext.crop_size, ext.resize_size = int(t.crop_size[0]), int(t.resize_size[0])
    ext.mean, ext.std = tuple(t.mean), tuple(t.std)
    ext.categories = list(w.meta.get("categories") or [])
    file = os.path.basename(w.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", file)
    if not os.path.isfile(path):
        raise ModelConfigError(f"--weights {enum.__name__}.{member}: {file} is not in torch's "
                               f"hub cache; seltrain does not download: put {file} (from "
                               f"{w.url}) into {os.path.dirname(path)}/, or pass the file "
                               "with --weights FILE")
    return path


def _import(module_name: str):
    """The module ``module_name`` (importable from the current folder too), or the source
    file ``module_name`` when it ends with .py."""
    if module_name.endswith(".py"):
        if not os.path.isfile(module_name):
            raise FileNotFoundError(f"no file {module_name}")
        stem = os.path.splitext(os.path.basename(module_name))[0]
        spec = importlib.util.spec_from_file_location(f"seltrain_model_{stem}", module_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(here)


def _factory(name: str, module_name: str, attr: str) -> nn.Module:
    """``attr()`` of module (or source file) ``module_name``."""
    try:
        module = _import(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure means the same fix
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelConfigError(f"--model {name}: cannot import {module_name} "
                               f"({type(e).__name__}: {why[:200]}); put it on PYTHONPATH or "
                               "in the current folder, or give its file: path/to/nets.py:"
                               f"{attr}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_")
                  and callable(getattr(module, n, None))]
        raise ModelConfigError(f"--model {name}: {module_name} has no callable '{attr}'"
                               f"{did_you_mean(attr, public)}")
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's code: its failure, in one line
        why = str(e).splitlines()[0] if str(e) else ""
        raise ModelConfigError(f"--model {name}: {attr}() raised {type(e).__name__}: "
                               f"{why[:200]}; it is called with no arguments and must return "
                               "an nn.Module") from None
    if not isinstance(model, nn.Module):
        raise ModelConfigError(f"--model {name}: {attr}() returned a {type(model).__name__}, "
                               "not an nn.Module; return the network itself")
    return model.eval()


def _weights_file(path: str, name: str) -> str:
    if not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "not found"
        raise ModelConfigError(f"--weights {path}: {what}; give a state_dict file (.pth)"
                               + (" or a torchvision weights name such as IMAGENET1K_V1"
                                  if name.startswith(TORCHVISION + ":") else ""))
    return os.path.abspath(path)


def read_state_dict(path: str) -> dict:
    """The state_dict in ``path``: the file itself, or its ``state_dict``/``model`` entry;
    tensors only (``torch.load(weights_only=True)``: a file cannot run code)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated, pickled code
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelConfigError(f"--weights {path}: cannot read it as torch weights "
                               f"({type(e).__name__}: {why[:160]}); give a state_dict saved "
                               "with torch.save(model.state_dict(), FILE)") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelConfigError(f"--weights {path}: holds no state_dict (a dict of tensors, "
                               "itself or under 'state_dict' or 'model'); save one with "
                               "torch.save(model.state_dict(), FILE)")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, state: dict, path: str, name: str) -> None:
    """Load ``state`` into ``model``, or one line naming the first key (in the model's
    order) that is missing, unexpected or of another shape, with both shapes."""
    own = model.state_dict()
    shape = lambda t: list(t.shape)  # noqa: E731
    for key, t in own.items():
        if key not in state:
            raise ModelConfigError(f"--weights {path} does not fit {name}: it has no {key} "
                                   f"(the model's is {shape(t)}); {len(state)} keys in the "
                                   f"file, {len(own)} in the model: is it another network?")
        if state[key].shape != t.shape:
            raise ModelConfigError(f"--weights {path} does not fit {name}: {key} is "
                                   f"{shape(state[key])} in the file but {shape(t)} in the "
                                   "model; is it another network or class count?")
    extra = [k for k in state if k not in own]
    if extra:
        raise ModelConfigError(f"--weights {path} does not fit {name}: the model has no "
                               f"{extra[0]} (in the file: {shape(state[extra[0]])}); is it "
                               "another network?")
    model.load_state_dict(state)
