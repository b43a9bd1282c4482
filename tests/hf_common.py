"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), fetched at test time.

Not a test module (pytest collects `test_*.py` only): `test_hf_common_bert.py` and `test_hf_common_transformer.py`
call `load_transformers_tests()` at import time and mix the classes it returns into their test cases.

Where the files come from: the source distribution of the installed transformers release, fetched with
`python -m pip download --no-binary :all: --no-deps transformers==<installed> -d <folder>`. Nothing is copied into
this repository: the tarball and the few files taken out of it live in a folder under the system temporary
directory keyed by the release (`<tmp>/vanilla-transformer-hf-tests/`), so the download (~11 MB, ~20 s) happens once
per machine and release, and `load_transformers_tests()` runs once per pytest session (cached in the process).
Without network the tests that need these files skip, and the reason names the command that failed.

How they are imported: the sdist's `tests/` folder becomes a package named `hf_transformers_tests` (a name
nothing else uses: our own `tests/` folder is on `sys.path` and a stray `tests` package is common in
site-packages), extracted into a folder that holds nothing else, and imported from there by location
(`importlib.util.spec_from_file_location`, the standard recipe for a package outside `sys.path`): `sys.path` is
left alone. `test_modeling_common.py` and `test_configuration_common.py` import their siblings relatively
(`from .generation...`), so no file is rewritten.

What the sdist lacks: it ships the top-level `tests/*.py` files only, not `tests/__init__.py` nor the subfolders
those two files import from. Missing modules are replaced by the stand-ins in `_STANDINS` (a file that a later sdist
ships is used instead, see `missing`):
- `tests/generation/test_utils.py` (`GenerationTesterMixin`, the generate tests): a plain class, so the
  encoder-decoder test case cannot run transformers' generate tests (ours are in test_transformer_*.py and
  test_generation_contract.py); in its place the test case runs its own writing of the one that checks the cache
  beam search returns, `test_beam_search_generate_dict_outputs_use_cache` (`BeamSearchCacheCheck`);
- `tests/exporters/test_export.py` (`ExportTesterMixin`, which `ModelTesterMixin` subclasses: the torch.export /
  ONNX / ExecuTorch tests): a class with one skipped test saying so;
- `tests/utils/test_configuration_utils.py` (`config_common_kwargs`, read by
  `ConfigTester.check_config_arguments_init` only): `run_config_tests` leaves that one check out, and the test cases
  report it as a skip.
`test_modeling_common.py` also imports `parameterized` (transformers' `testing` extra); when the environment lacks
it (it is in this project's `test` extra), it is installed into the cache folder (`pip install --no-deps --target`),
and that folder is appended to `sys.path`, as `--target` installs require: the one `sys.path` change, for a
third-party dependency of transformers' test files, never for our code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
import warnings
from pathlib import Path

import transformers

PACKAGE = "hf_transformers_tests"
CACHE_ROOT = Path(tempfile.gettempdir()) / "vanilla-transformer-hf-tests"
PARAMETERIZED = "parameterized>=0.9"  # transformers' own pin (setup.py: older versions break `.expand` collection)
PIP_TIMEOUT_S = 600

# sdist members (relative to its `tests/` folder) that are taken out: the two common test files
NEEDED = ("test_modeling_common.py", "test_configuration_common.py")

_NOT_SHIPPED = "is not in the transformers {version} sdist (it ships only the top-level tests/*.py files)"
# module path (relative to `tests/`) -> stand-in source, used when the sdist does not ship the module
_STANDINS = {
    "__init__.py": '"""transformers\' tests/ folder, from the sdist (hf_common.py)."""\n',
    "generation/__init__.py": "",
    "generation/test_utils.py": f'''"""Stand-in: tests/generation/test_utils.py {_NOT_SHIPPED}."""


class GenerationTesterMixin:
    """Empty: transformers' generate tests are not available from the sdist."""
''',
    "exporters/__init__.py": "",
    "exporters/test_export.py": f'''"""Stand-in: tests/exporters/test_export.py {_NOT_SHIPPED}."""

import unittest


class ExportTesterMixin:
    @unittest.skip(reason="ExportTesterMixin (torch.export/ONNX tests): tests/exporters/test_export.py {_NOT_SHIPPED}")
    def test_export_tester_mixin(self):
        pass
''',
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": f'''"""Stand-in: tests/utils/test_configuration_utils.py {_NOT_SHIPPED}."""

config_common_kwargs = None  # hf_common.run_config_tests leaves out the one check that reads it
''',
}


class Unavailable(Exception):
    """The common test files could not be fetched or imported; str() is a one-line reason."""


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def _run(cmd: list[str], what: str) -> None:
    shown = " ".join(cmd[1:]).replace(sys.executable, "python")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"{what}: `python {shown}` did not finish: {error}") from error
    if done.returncode:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no output")
        raise Unavailable(f"{what}: `python {shown}` failed (exit {done.returncode}): {last.strip()}")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock between processes (pytest sessions of other engineers, xdist workers) on a cache folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock; the atomic renames below still keep the cache consistent
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sdist(version: str) -> Path:
    """The transformers sdist tarball of `version`, downloaded once into the cache."""
    folder = CACHE_ROOT / f"sdist-{version}"
    with _locked(CACHE_ROOT / f"sdist-{version}.lock"):
        found = sorted(folder.glob(f"transformers-{version}.tar.gz"))
        if not found:
            partial = Path(tempfile.mkdtemp(prefix=f"sdist-{version}-", dir=CACHE_ROOT))
            try:
                requirement = f"transformers=={version}"
                cmd = _pip("download", "--no-binary", ":all:", "--no-deps", requirement, "-d", str(partial))
                _run(cmd, f"could not fetch the transformers {version} sdist")
                found = sorted(partial.glob(f"transformers-{version}.tar.gz"))
                if not found:
                    raise Unavailable(f"pip download saved no transformers-{version}.tar.gz in {partial}")
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(partial, folder)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            found = sorted(folder.glob(f"transformers-{version}.tar.gz"))
    return found[0]


def _extract(version: str) -> tuple[Path, tuple[str, ...]]:
    """(folder that holds the package, modules replaced by stand-ins): the package `hf_transformers_tests` built from
    the sdist's tests/ files, once per release and stand-in version."""
    key = hashlib.sha256(repr((NEEDED, sorted(_STANDINS.items()))).encode()).hexdigest()[:10]
    root = CACHE_ROOT / f"transformers-{version}-{key}"
    marker = root / "STANDINS"
    if not marker.is_file():
        tarball = _sdist(version)
        with _locked(CACHE_ROOT / f"transformers-{version}-{key}.lock"):
            if not marker.is_file():
                partial = Path(tempfile.mkdtemp(prefix=f"transformers-{version}-", dir=CACHE_ROOT))
                try:
                    package = partial / PACKAGE
                    prefix = f"transformers-{version}/tests/"
                    wanted = {prefix + name for name in (*NEEDED, *_STANDINS)}
                    with tarfile.open(tarball) as archive:
                        members = [m for m in archive.getmembers() if m.name in wanted and m.isfile()]
                        for member in members:
                            data = archive.extractfile(member).read()
                            target = package / member.name[len(prefix) :]
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(data)
                    absent = [name for name in NEEDED if not (package / name).is_file()]
                    if absent:
                        raise Unavailable(f"the transformers {version} sdist has no tests/{', tests/'.join(absent)}")
                    stood_in = []
                    for name, source in _STANDINS.items():
                        target = package / name
                        if not target.is_file():
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_text(source.replace("{version}", version))
                            if not name.endswith("__init__.py"):
                                stood_in.append(name)
                    (partial / "STANDINS").write_text("".join(f"{name}\n" for name in stood_in))
                    shutil.rmtree(root, ignore_errors=True)
                    os.replace(partial, root)
                finally:
                    shutil.rmtree(partial, ignore_errors=True)
    return root, tuple(marker.read_text().split())


def _ensure_parameterized() -> None:
    try:
        importlib.import_module("parameterized")
        return
    except ImportError:
        pass
    target = CACHE_ROOT / "deps-parameterized"
    with _locked(CACHE_ROOT / "deps-parameterized.lock"):
        if not (target / "parameterized").is_dir():
            partial = Path(tempfile.mkdtemp(prefix="deps-", dir=CACHE_ROOT))
            try:
                cmd = _pip("install", "--no-deps", "--no-compile", "--target", str(partial), PARAMETERIZED)
                _run(cmd, "could not fetch parameterized (imported by test_modeling_common.py)")
                shutil.rmtree(target, ignore_errors=True)
                os.replace(partial, target)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    if str(target) not in sys.path:
        sys.path.append(str(target))  # a `pip install --target` folder is importable only from sys.path
    importlib.import_module("parameterized")


def _import_package(root: Path) -> None:
    """Import the package `hf_transformers_tests` from `root` by location, leaving `sys.path` alone: its modules
    reach each other by relative imports, which resolve through the package's `__path__`."""
    if PACKAGE in sys.modules:
        return
    folder = root / PACKAGE
    spec = importlib.util.spec_from_file_location(
        PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[PACKAGE]
        raise


_loaded: types.SimpleNamespace | Unavailable | None = None


def _load() -> types.SimpleNamespace:
    version = transformers.__version__
    root, stood_in = _extract(version)
    _ensure_parameterized()
    try:
        _import_package(root)
        with warnings.catch_warnings():
            # transformers registers its marks (flash_attn_test, torch_compile_test, ...) in its own conftest.py,
            # which is not ours: the decorators would warn once per mark at import
            warnings.filterwarnings("ignore", message=r"Unknown pytest\.mark\.")
            modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
            configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    except Exception as error:  # an import the sdist files need and this environment lacks
        reason = f"transformers {version} common tests do not import: {type(error).__name__}: {error}"
        raise Unavailable(reason) from error
    return types.SimpleNamespace(
        version=version,
        root=root,
        missing=stood_in,  # modules (relative to tests/) replaced by stand-ins
        test_modeling_common=modeling,
        test_configuration_common=configuration,
        ModelTesterMixin=modeling.ModelTesterMixin,
        GenerationTesterMixin=modeling.GenerationTesterMixin,
        ConfigTester=configuration.ConfigTester,
        ids_tensor=modeling.ids_tensor,
        floats_tensor=modeling.floats_tensor,
        random_attention_mask=modeling.random_attention_mask,
    )


def load_transformers_tests() -> types.SimpleNamespace:
    """The common test modules of the installed transformers release, fetched and imported once per session.

    Call it at module level of a test file: when they cannot be had, the whole module is skipped with the reason
    (the failed command, or the import error). The failure is remembered too, so a second test file does not retry.
    """
    global _loaded
    if _loaded is None:
        try:
            _loaded = _load()
        except Unavailable as error:
            _loaded = error
    if isinstance(_loaded, Unavailable):
        import pytest

        pytest.skip(str(_loaded), allow_module_level=True)
    return _loaded


CONFIG_KWARGS_MISSING = "utils/test_configuration_utils.py"


def config_arguments_check_reason(hf: types.SimpleNamespace) -> str | None:
    """Why `ConfigTester.check_config_arguments_init` cannot run (None: it can)."""
    if CONFIG_KWARGS_MISSING in hf.missing:
        return (
            "ConfigTester.check_config_arguments_init reads config_common_kwargs from "
            f"tests/{CONFIG_KWARGS_MISSING}, which the transformers {hf.version} sdist does not ship"
        )
    return None


GENERATION_MISSING = "generation/test_utils.py"


def generation_tests_reason(hf: types.SimpleNamespace) -> str | None:
    """Why a generative model's test case cannot inherit transformers' `GenerationTesterMixin` (None: it can)."""
    if GENERATION_MISSING in hf.missing:
        return (
            f"GenerationTesterMixin lives in tests/{GENERATION_MISSING}, which the transformers {hf.version} sdist "
            "does not ship: there is nothing to inherit"
        )
    return None


def run_config_tests(hf: types.SimpleNamespace, testcase: unittest.TestCase, config_class, **kwargs) -> None:
    """`ConfigTester(testcase, config_class=..., **kwargs).run_common_tests()`, less the one check whose data the
    sdist lacks (reported separately as a skip by the test cases, see `config_arguments_check_reason`)."""
    tester = hf.ConfigTester(testcase, config_class=config_class, **kwargs)
    if config_arguments_check_reason(hf):
        tester.check_config_arguments_init = lambda: None
    tester.run_common_tests()


@contextlib.contextmanager
def listed_in_auto_tables(model_type: str, tables: dict[str, str]):
    """Our classes listed in transformers' static auto-class name tables for the duration of a test case.

    `ModelTesterMixin` decides by class name which classes are base models (`MODEL_MAPPING_NAMES`: no loss, left out
    of the training tests) and which labels a head takes (`MODEL_FOR_MASKED_LM_MAPPING_NAMES`, ...:
    `_prepare_for_class(return_labels=True)`). An in-tree model is listed there; our models are registered with the
    Auto classes at run time (`AutoModel.register`), which fills other tables. `tables` maps a table name of
    `transformers.models.auto.modeling_auto` (e.g. "MODEL_MAPPING_NAMES") to our class name; the entries are
    removed again on exit. Config lookups are unaffected: `_LazyAutoMapping` only reads model types that are also
    in `CONFIG_MAPPING_NAMES`, and ours are not.
    """
    from unittest import mock

    from transformers.models.auto import modeling_auto

    with contextlib.ExitStack() as stack:
        for table, class_name in tables.items():
            stack.enter_context(mock.patch.dict(getattr(modeling_auto, table), {model_type: class_name}))
        yield
