"""The names plugins were taught to import (`from deploy.runners import Runner, RuntimeSpec, register_format,
register_runtime`), kept working: the registry lives in deploy.registry and the built-in runtimes in deploy/runtimes/.
Importing this module registers the built-in runtimes too."""

import deploy.runtimes  # noqa: F401 (the built-in runtimes register themselves)
from deploy.registry import (FORMATS, RUNTIMES, FormatSpec, Runner, RuntimeSpec, default_runtime,  # noqa: F401
                             format_spec, open_runner, register_format, register_runtime, runner_for_file,
                             runtime_spec, static_dim)
from deploy.runtimes.onnxruntime import ORT_PROVIDERS, QDQ_MODES, OnnxRuntimeRunner  # noqa: F401
from deploy.runtimes.openvino import OpenVinoRunner  # noqa: F401
from deploy.runtimes.tensorrt import TensorRTRunner  # noqa: F401
