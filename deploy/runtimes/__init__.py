"""The runtimes edgecls ships, one module each, registered on import exactly as a plugin registers itself
(deploy.registry); `import deploy.runtimes` before a registry lookup."""

from deploy.runtimes import onnxruntime, openvino, tensorrt  # noqa: F401 (each registers itself)
