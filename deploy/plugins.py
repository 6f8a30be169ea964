"""Device runtimes and artifact formats from outside the project, loaded before a `python -m deploy` command runs.

A plugin is a module that calls `deploy.registry.register_runtime` (and `register_format` for a new kind of file)
when imported, as the built-in runtimes in deploy/runtimes/ do (`deploy.runners` keeps the same names). It is found two ways, as Python tools usually find plugins: modules named in the EDGECLS_PLUGINS
variable (comma-separated, importable from PYTHONPATH or the current folder), and the `edgecls.plugins` entry
points of installed packages. Training needs neither: the recipe's `class_path` imports the module itself.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module, metadata

from deploy.bundle import BundleError

VARIABLE = "EDGECLS_PLUGINS"
GROUP = "edgecls.plugins"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import every plugin module not imported yet; returns their names. A module that cannot be imported is one
    sentence naming it and where it was listed."""
    names = [(name.strip(), f"the {VARIABLE} variable") for name in os.environ.get(VARIABLE, "").split(",")
             if name.strip()]
    try:
        points = metadata.entry_points(group=GROUP)
    except Exception:  # a broken installed distribution must not stop the command
        points = []
    names += [(point.value, f"the {GROUP} entry point of {getattr(point.dist, 'name', 'a package')}")
              for point in points]
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # a plugin file beside the user, as with `python -m`
    for name, where in names:
        if name in _loaded:
            continue
        try:
            import_module(name)
        except ImportError as exc:
            raise BundleError(f"plugin {name!r} (from {where}) cannot be imported ({exc}); put its file on "
                              "PYTHONPATH or in this folder, or remove it from the list") from None
        _loaded.add(name)
    return sorted(_loaded)
