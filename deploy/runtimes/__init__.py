"""The phone and single-board runtimes, one module each, registered on import as a plugin registers itself:
LiteRT (.tflite), NCNN (.ncnn.param + .ncnn.bin) and ExecuTorch (.pte). deploy.runners imports this package
after its built-ins, so every command sees them."""

from deploy.runtimes import executorch, litert, ncnn  # noqa: F401 (each registers itself)
