"""edgecls entry point: `python main.py fit --config experiments/quickstart.yaml` (or the `edgecls` command).

The command itself (LightningCLI with edgecls's defaults, resume, `bundle --run`, the exit statuses) is built in
the cli package: see cli/app.py.
"""

from cli.app import cli_main

if __name__ == "__main__":
    cli_main()
