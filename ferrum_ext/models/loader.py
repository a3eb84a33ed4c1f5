"""Safetensors loading: single file or sharded (model.safetensors.index.json), memory-mapped.

Module names mirror Hugging Face, so a parameter `a.b.c.weight` reads the
checkpoint key `a.b.c.weight`. A fused parameter (qkv_proj, gate_up_proj, the
stacked expert weights) lists its sources instead: `param.hf_sources =
[(key relative to the parent module, index into the parameter), ...]`; that is
the per-parameter loader. Every source must be present with exactly the shape
of its slice, else LoaderError names the key and the expected shape.
"""

from __future__ import annotations

import json
import os

import torch


class LoaderError(ValueError):
    """A checkpoint tensor is missing, mis-shaped, or the files are not there."""


def set_sources(param: torch.Tensor, sources: list[tuple[str, tuple]]) -> torch.nn.Parameter:
    """Marks `param` as fused: each (relative key, index) fills param[index]."""
    param.hf_sources = sources
    return param


class Checkpoint:
    """Lazy, memory-mapped view of the safetensors files of a checkpoint directory."""

    def __init__(self, path: str):
        try:
            from safetensors import safe_open
        except ImportError as exc:  # pragma: no cover - optional dependency
            raise LoaderError("loading checkpoints needs `pip install safetensors`") from exc
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            if not files:
                raise LoaderError(f"no *.safetensors files in {path!r}")
            weight_map = None
        self._handles = {}
        self.key_to_file: dict[str, str] = {}
        for name in files:
            full = os.path.join(path, name)
            if not os.path.isfile(full):
                raise LoaderError(f"shard {name!r} listed in the index is missing from {path!r}")
            handle = safe_open(full, framework="pt", device="cpu")  # mmap; tensors read on demand
            self._handles[name] = handle
            for key in handle.keys():
                self.key_to_file[key] = name
        if weight_map is not None:
            for key, name in weight_map.items():
                if key not in self.key_to_file:
                    raise LoaderError(f"index lists {key!r} in {name!r}, but that file does not hold it")

    def keys(self):
        return self.key_to_file.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.key_to_file

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handles[self.key_to_file[key]].get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self._handles[self.key_to_file[key]].get_tensor(key)


def _plan(model: torch.nn.Module) -> list[tuple[str, torch.Tensor, tuple]]:
    """(checkpoint key, parameter, index) for every slice the checkpoint must fill."""
    plan = []
    for name, param in model.named_parameters():
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        parent = module_name.rsplit(".", 1)[0] + "." if "." in module_name else ""
        sources = getattr(param, "hf_sources", None)
        if sources is None:
            plan.append((name, param, ()))
        else:
            plan.extend((parent + rel, param, index) for rel, index in sources)
    return plan


@torch.no_grad()
def load_weights(model: torch.nn.Module, path: str, *, strip_prefixes: tuple[str, ...] = (),
                 optional: tuple[str, ...] = ()) -> list[str]:
    """Fills every parameter of `model` from the checkpoint at `path`, then calls `after_load()` on
    every module that has one; returns the unused keys.

    `strip_prefixes`: checkpoint key prefixes to drop (e.g. "bert."). `optional`:
    keys that may be missing (the model fills them itself, e.g. a tied lm_head).
    """
    ckpt = Checkpoint(path)
    rename = {}
    for key in ckpt.keys():
        short = key
        for prefix in strip_prefixes:
            if short.startswith(prefix):
                short = short[len(prefix):]
        rename[short] = key
    used = set()
    for key, param, index in _plan(model):
        target = param.data[index] if index else param.data
        if key not in rename:
            if key in optional:
                continue
            raise LoaderError(f"checkpoint {path!r} has no tensor {key!r} "
                              f"(expected shape {tuple(target.shape)})")
        real = rename[key]
        shape = ckpt.shape(real)
        if shape != tuple(target.shape):
            raise LoaderError(f"tensor {real!r} has shape {shape}, expected shape {tuple(target.shape)}")
        target.copy_(ckpt.get(real))
        used.add(real)
    for module in model.modules():  # one-time repacks into kernel layouts (e.g. Experts' w13)
        if hasattr(module, "after_load"):
            module.after_load()
    return sorted(set(ckpt.keys()) - used)
