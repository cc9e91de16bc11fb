"""``geogen-train``: compose -> validate -> build (data, network, method, trainer) -> fit.

::

    from geogen.training import compose_train_config, run_train

    cfg = compose_train_config(["experiment=dgmr_tiny", "data.path=crops.zarr"])
    result = run_train(cfg)
    result.last_checkpoint
"""

from geogen.training.run import (
    TrainingError,
    TrainResult,
    available_experiments,
    build_training,
    compose_train_config,
    resolve_checkpoint_monitor,
    run_train,
    validate_train_config,
)

__all__ = [
    "TrainResult",
    "TrainingError",
    "available_experiments",
    "build_training",
    "compose_train_config",
    "resolve_checkpoint_monitor",
    "run_train",
    "validate_train_config",
]
