"""Run code in a fresh Python process in which `vanilla_transformer` cannot be imported, as on a machine that
only has transformers: what a Hub user with trust_remote_code=True has."""

import json
import os
import subprocess
import sys
import textwrap

_BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys
    class _NoPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vanilla_transformer" or name.startswith("vanilla_transformer."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)")
            return None
    sys.meta_path.insert(0, _NoPackage())
    try:
        import vanilla_transformer  # noqa
        raise SystemExit("vanilla_transformer should not be importable here")
    except ModuleNotFoundError:
        pass
    """
)


def run_without_package(code: str, cwd: str, timeout: int = 600, python: str | None = None) -> dict:
    """Run `code` (which must print one JSON object as its last line) and return that object. `python`: another
    interpreter to run it with (another environment, another transformers release); default this one."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [python or sys.executable, "-c", _BLOCK + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed:\nSTDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr[-5000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
