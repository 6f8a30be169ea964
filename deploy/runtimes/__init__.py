"""The runtimes edgecls ships, one module each, registered on import exactly as a plugin registers itself
(deploy.registry); `import deploy.runtimes` before a registry lookup. ONNX Runtime, OpenVINO and TensorRT for
Jetsons and x86/ARM CPUs; LiteRT (.tflite) and NCNN (.ncnn.param + .ncnn.bin) for phones and single-board
computers. ExecuTorch (.pte), whose Python runtime needs torch, is a plugin of the package's own (torch_runtimes),
loaded with the other plugins (deploy.plugins)."""

from deploy.runtimes import litert, ncnn, onnxruntime, openvino, tensorrt  # noqa: F401 (each registers itself)
