"""``seltrain analyze layers``: every layer of a network that can be probed, from its graph.

For each layer (seltrain/models/graph_points.py): its module path (the name ``--layers``
takes), its unit count, the module whose output is read as the unit's activation (and what
it is: ``post-relu``, a block's ``output``, ...) and the module whose output an ablation
zeroes. For a checkpoint seltrain trained, the layers its tables name carry their probe name
too (``conv1_1``, ``stem``), and the graph's points are those of the tables.
"""
from __future__ import annotations

import os

import torch

from seltrain.models.graph_points import LayerPoints, find_layers


def _table(rows: list[LayerPoints], names: dict[str, str]) -> list[str]:
    width = max([len(p.layer) for p in rows] + [5])
    head = f"{'layer':<{width}}  {'units':>6}  {'read at':<44} zeroed at"
    if names:
        head = f"{'probe':<10} " + head
    out = [head]
    for p in rows:
        read = f"{p.probe} ({p.read})"
        line = f"{p.layer:<{width}}  {p.units:>6}  {read:<44} {p.ablation}"
        out.append((f"{names.get(p.layer, ''):<10} " if names else "") + line)
    return out


def _trained(path: str) -> str:
    from seltrain.checkpoint import find_checkpoints, load_trained_model

    _, ckpt_path = find_checkpoints(path)[0]  # an experiment's trials share one network
    model, ckpt, _ = load_trained_model(ckpt_path)
    size, channels = ckpt["image_size"], ckpt["in_channels"]
    layers, outputs = find_layers(model, torch.zeros(1, channels, size, size))
    paths = {m: n for n, m in model.named_modules()}
    table = {name: (paths[m], paths[model.ablation_points()[name]])
             for name, m in model.probe_points().items()}
    names = {}
    for p in layers:  # the graph's layer whose points are a table's probe
        for name, (probe, ablation) in table.items():
            if (p.probe, p.ablation) == (probe, ablation) and name not in names.values():
                names[p.layer] = name
    head = (f"{ckpt['arch']} ({ckpt_path}), {size} px: {len(layers)} layers, {outputs} "
            f"outputs; the probe column names the layers of its tables (groups: "
            f"{', '.join(model.probe_groups())})")
    return "\n".join([head, *_table(layers, names)]) + "\n"


def _external(spec) -> str:
    from seltrain.analysis.target_spec import build_network, check_weights, layer_table

    ext = build_network(spec, spec.init_seed or 0)
    check_weights(spec, ext)
    size = spec.image_size or ext.crop_size or 224
    channels = len(spec.mean) if spec.mean else 3
    layers, outputs = layer_table(ext.model, size, channels)
    top = [p for p in layers if p.depth == 0]
    weights = os.path.basename(ext.weights_file) if ext.weights_file else "no weights"
    head = (f"{spec.model} ({weights}), {size} px: {len(layers)} layers, {outputs} outputs; "
            f"group blocks: the {len(top)} top-level layers (the default --layers)")
    return "\n".join([head, *_table(layers, {})]) + "\n"


def list_layers(what) -> str:
    """The listing of ``what``: a checkpoint, run folder or target folder path, or a
    ``TargetSpec``."""
    from seltrain.analysis.target_spec import TargetSpec, read_spec, target_folders

    if isinstance(what, TargetSpec):
        return _external(what)
    folders = target_folders(what)
    if folders:
        return "".join(_external(read_spec(f)) for f in folders)
    return _trained(what)
