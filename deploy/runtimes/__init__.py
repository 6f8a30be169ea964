"""The runtimes edgecls ships, one module each, registered on import exactly as a plugin registers itself
(deploy.registry); `import deploy.runtimes` before a registry lookup. ONNX Runtime, OpenVINO and TensorRT for
Jetsons and x86/ARM CPUs; LiteRT (.tflite), NCNN (.ncnn.param + .ncnn.bin) and ExecuTorch (.pte) for phones and
single-board computers."""

from deploy.runtimes import executorch, litert, ncnn, onnxruntime, openvino, tensorrt  # noqa: F401 (each registers itself)
