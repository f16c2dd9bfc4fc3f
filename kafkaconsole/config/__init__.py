"""Configuration: the TOML model, its loader and secret masking.

``load_config()`` is the one entry point; it returns a frozen :class:`AppConfig` or raises
:class:`ConfigError` listing every problem as ``FILE: dotted.key: message``. This package
imports no Textual or Rich.
"""

from kafkaconsole.config.errors import ConfigError, ConfigProblem, dotted_key
from kafkaconsole.config.loader import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    PIPELINE_KINDS,
    load_config,
    read_toml,
    resolve_config_path,
    validate_consumer,
)
from kafkaconsole.config.models import (
    AirbytePipeline,
    AirflowPipeline,
    ApiConfig,
    AppConfig,
    CommandPipeline,
    ConsumerConfig,
    ErrorHandling,
    HttpPipeline,
    KafkaConfig,
    KafkaPipeline,
    PipelineBase,
    PipelineConfig,
    PythonPipeline,
    RedisConfig,
    RetryPolicy,
    UiConfig,
)
from kafkaconsole.config.secrets import (
    MASK,
    SECRET_FIELDS,
    mask_config,
    mask_text,
    redact,
    secret_values,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "MASK",
    "PIPELINE_KINDS",
    "SECRET_FIELDS",
    "AirbytePipeline",
    "AirflowPipeline",
    "ApiConfig",
    "AppConfig",
    "CommandPipeline",
    "ConfigError",
    "ConfigProblem",
    "ConsumerConfig",
    "ErrorHandling",
    "HttpPipeline",
    "KafkaConfig",
    "KafkaPipeline",
    "PipelineBase",
    "PipelineConfig",
    "PythonPipeline",
    "RedisConfig",
    "RetryPolicy",
    "UiConfig",
    "dotted_key",
    "load_config",
    "mask_config",
    "mask_text",
    "read_toml",
    "redact",
    "resolve_config_path",
    "secret_values",
    "validate_consumer",
]
