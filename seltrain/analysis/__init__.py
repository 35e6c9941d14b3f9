"""Analyses of trained classifiers: what their (selective) units do.

Each analysis is one module named for it (docs/METHODS.md sections 3-5), holding its math as
pure functions on any ``nn.Module`` and, for ``seltrain analyze NAME``, its ``Options``, a
``compute(target, options)`` that returns the numbers, a ``write(result, target, options,
out)`` that saves its files, and ``SWEEP_HEADLINE`` (plus ``sweep_panels`` where it draws
per-layer figures): what ``seltrain report --analyses`` plots against alpha. ``registry``
maps each command name to its module.

- ``unit_selectivity`` (``seltrain analyze selectivity``): exact dataset-level SI per unit,
  class means, preferred classes.
- ``ablation``: single-unit ablation (Zhou et al. 2018), cumulative ablation (Morcos et al.
  2018), the fast split-network engine (``ablated_logits``) and its memory-sized unit batch.
- ``attributes``: what the drops are correlated with: BN-folded incoming-weight L1, mean
  activation, class means; Spearman correlations.
- ``orientation``: grating stimuli, OSI / gOSI and Ukita's controls, top- vs bottom-gOSI
  ablation, and the trainer's per-epoch orientation tracking hook (Ukita).
- ``shift_invariance``: how little a layer's representation moves with the image (Ukita).
- ``robustness``: accuracy under corruptions (on the fly or from the released -C files) and
  under FGSM / L-inf PGD (Leavitt & Morcos 2020).
- ``corruptions``, ``corruption_tables``, ``corrupted_sets``: the 19 common corruptions as
  the -C sets were made, their per-set parameter tables, and readers for the released files.
- ``dimensionality``: principal components needed to explain a share of the variance.
- ``gradients``: variability of the input gradients of units' activations.

And what serves them all:

- ``registry``: the analyses by name, the one table the command line and the sweeps use.
- ``options``: ``option()``, the text parsers and ``AnalysisOptions``, the base every
  analysis' options extend, checked in one place.
- ``commands``: ``seltrain analyze`` (argv -> options, dispatch) and the strict reading of
  ``seltrain report --analysis-args``.
- ``target``: a checkpoint with its model, recipe and data split, ready to analyse.
- ``outputs``: the output folder, written as one unit under a lock.
- ``over_epochs``: an analysis' results across a run's kept epochs (``--checkpoint kept``).
- ``plots``: PNG figures (matplotlib, Agg canvas); ``serialize``: numpy-aware JSON and CSV.
- ``tb_views``: the analyses in a run's TensorBoard: headline scalars, the HParams metric
  tags, the custom-scalars layout.

Units are read through ``seltrain.probes`` exactly as the trainer reads them; checkpoints are
found and loaded by ``seltrain.checkpoint``. Nothing here imports ``seltrain.trainer``.
"""
