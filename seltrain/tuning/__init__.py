"""Alpha searches with Ray Tune (``seltrain tune``): one TorchTrainer per trial.

    recipe.py     the search-recipe schema, parsing, and the trials it enumerates (no Ray)
    resources.py  what one trial asks for; does it fit this machine, or a cluster's nodes
    trials.py     the Tune driver function, the Ray Train worker, the storage-sharing check
    session.py    a local Ray started, or a cluster joined, quietly; the State API checked
    console.py    what a running search prints (a Tune callback), Ray's console kept quiet
    commands.py   ``seltrain tune``: run_search, --dry-run's plan, the subcommand

``seltrain report`` (the sweep's table and figures) lives in ``seltrain.report``. Importing
this package does not import Ray.
"""
from seltrain.tuning.commands import print_plan, register, run_search
from seltrain.tuning.recipe import (PACKAGE_RECIPES, LogGrid, SchedulerConfig, SearchRecipe,
                                    SpaceSpec, enumerate_trials, find_search, load_search,
                                    trial_config, trial_name)
from seltrain.tuning.resources import (ResourcesConfig, check_cluster_fit, check_local_fit,
                                       check_resources_spec, scaling_config)
from seltrain.tuning.trials import StorageNotSharedError

__all__ = ["LogGrid", "PACKAGE_RECIPES", "ResourcesConfig", "SchedulerConfig", "SearchRecipe",
           "SpaceSpec", "StorageNotSharedError", "check_cluster_fit", "check_local_fit",
           "check_resources_spec", "enumerate_trials", "find_search", "load_search",
           "print_plan", "register", "run_search", "scaling_config", "trial_config",
           "trial_name"]
