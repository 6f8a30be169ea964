"""What a runtime module imports from the house: the one registry (deploy.registry) where this checkout has it,
deploy.runners (which re-exports the same names for plugins) where it does not."""

try:
    from deploy.registry import Runner, RuntimeSpec, register_format, register_runtime
except ImportError:  # before deploy.registry existed
    from deploy.runners import Runner, RuntimeSpec, register_format, register_runtime

__all__ = ["Runner", "RuntimeSpec", "register_format", "register_runtime", "missing_package", "installed"]


def installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_package(runtime: str, module: str, package: str, extra: str, file_kind: str) -> str:
    """The one sentence of a runtime whose package is not on this device."""
    return (f"{runtime} is not installed here, so {file_kind} files cannot run ({module} missing); "
            f"pip install {package} (or edgecls[{extra}]), or pick another --runtime")
