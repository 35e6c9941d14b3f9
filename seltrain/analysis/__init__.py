"""Analyses of trained classifiers: what their (selective) units do.

Pure functions on any ``nn.Module``; the CLI (``seltrain analyze ...``) wires them to
checkpoints and writes their results. One module per analysis (METHODS.md sections 3-5):

- ``capture``: resolve a layer by probe name or module path, stream batches, read outputs.
- ``ablation``: single-unit ablation (Zhou et al. 2018), cumulative ablation (Morcos et al.
  2018), unit attributes and their Spearman correlations with the drops.
- ``orientation``: grating stimuli, OSI / gOSI, top- vs bottom-gOSI ablation and
  shift-invariance (Ukita).
- ``robustness``: the 15 common corruptions in torch, FGSM and L-inf PGD (Leavitt & Morcos
  2020).
- ``dimensionality``: principal components needed to explain a fraction of the variance.
- ``plots``: PNG figures for all of the above (matplotlib, Agg canvas).
- ``serialize``: numpy-aware JSON and CSV writers for the results.

Results are plain dicts of numpy arrays and Python scalars; ``serialize.to_jsonable`` turns
them into JSON-ready objects.
"""
