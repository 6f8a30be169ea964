"""Device runtimes whose Python API needs torch, kept out of deploy/ so that the device package imports where torch
cannot: each registers itself with deploy.registry as any plugin does, found by `python -m deploy` through the
`edgecls.plugins` entry point setup.cfg declares, and imported directly by the fit-end step that measures its files.
ExecuTorch (.pte): its Python runtime takes and returns torch tensors."""
