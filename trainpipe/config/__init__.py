"""The run configuration: `load()` reads, overrides and validates; the schema says what is valid.

This package is the only place values are checked: everything downstream trusts the
`RunConfig` it is given.
"""

from trainpipe.config.load import (
    PACKAGED_CONFIGS,
    apply_overrides,
    augment_specs,
    load,
    options_model,
    parse_overrides,
    read_yaml,
    resolve_config_path,
    validate,
    validate_options,
)
from trainpipe.config.schema import (
    COMPONENT_SECTIONS,
    CheckpointConfig,
    ComponentSection,
    DataConfig,
    EarlyStoppingConfig,
    EmaConfig,
    MixConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SchedConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "COMPONENT_SECTIONS", "PACKAGED_CONFIGS", "CheckpointConfig", "ComponentSection", "DataConfig",
    "EarlyStoppingConfig", "EmaConfig", "MixConfig", "ModelConfig", "OptimConfig", "RunConfig", "SchedConfig",
    "TrackingConfig", "TrainConfig", "apply_overrides", "augment_specs", "load", "options_model", "parse_overrides",
    "read_yaml", "resolve_config_path", "validate", "validate_options",
]
