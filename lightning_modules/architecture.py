"""Layer shapes as plain data, so a checkpoint of a channel-pruned network reloads into the YAML's network.

Structured pruning changes channel counts, so the network the YAML builds no longer fits the weights. Each
checkpoint records the shape of every conv, linear and batch-norm layer (plain ints: safe for
`torch.load(weights_only=True)`), and loading rebuilds the layers whose shape differs before the weights go in.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def layer_shapes(net: nn.Module) -> dict[str, dict[str, Any]]:
    shapes: dict[str, dict[str, Any]] = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"type": "Conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = {"type": "BatchNorm2d", "num_features": m.num_features}
    return shapes


def _rebuilt(m: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """A copy of `m` at the recorded shape. A copy, not a fresh nn.Conv2d/Linear/BatchNorm2d: subclasses (timm's
    BatchNormAct2d carries its activation, Conv2dSame its padding) must keep their type and extra state. The
    values are placeholders; the checkpoint's weights go in next."""
    new = copy.deepcopy(m)
    factory = {"device": m.weight.device if getattr(m, "weight", None) is not None else None}
    if isinstance(m, nn.Conv2d):
        new.in_channels, new.out_channels, new.groups = shape["in_channels"], shape["out_channels"], shape["groups"]
        new.weight = nn.Parameter(torch.empty(new.out_channels, new.in_channels // new.groups, *m.kernel_size, **factory))
        if m.bias is not None:
            new.bias = nn.Parameter(torch.empty(new.out_channels, **factory))
        return new
    if isinstance(m, nn.Linear):
        new.in_features, new.out_features = shape["in_features"], shape["out_features"]
        new.weight = nn.Parameter(torch.empty(new.out_features, new.in_features, **factory))
        if m.bias is not None:
            new.bias = nn.Parameter(torch.empty(new.out_features, **factory))
        return new
    n = new.num_features = shape["num_features"]
    if m.affine:
        new.weight, new.bias = nn.Parameter(torch.ones(n, **factory)), nn.Parameter(torch.zeros(n, **factory))
    if m.track_running_stats:
        new.running_mean, new.running_var = torch.zeros(n, **factory), torch.ones(n, **factory)
    return new


def apply_layer_shapes(net: nn.Module, shapes: dict[str, dict[str, Any]]) -> int:
    """Replace every layer whose recorded shape differs; returns how many were replaced."""
    current = layer_shapes(net)
    replaced = 0
    for name, shape in shapes.items():
        if name not in current:
            raise ValueError(f"the checkpoint has a layer {name!r} that this network does not; was it made with another backbone?")
        if current[name] == shape:
            continue
        if current[name]["type"] != shape["type"]:
            raise ValueError(f"layer {name!r} is a {current[name]['type']} here but a {shape['type']} in the checkpoint")
        # Pruning only removes channels: a recorded size above this network's (10**9 channels) is not a pruned copy
        # of it, and is refused before anything of that size is allocated.
        sizes = {k: v for k, v in shape.items() if k != "type"}
        if set(sizes) != set(current[name]) - {"type"} or any(
                type(v) is not int or not 1 <= v <= current[name][k] for k, v in sizes.items()):
            raise ValueError(f"the checkpoint's layer {name!r} is {shape} where this network's is {current[name]}: not "
                             "a pruned copy of this network")
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        old = getattr(parent, child)
        new = _rebuilt(old, shape)
        new.train(old.training)
        for p_new, p_old in zip(new.parameters(), old.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        setattr(parent, child, new)
        replaced += 1
    return replaced
