"""`--mixed_precision bf16` on a CPU without native bf16 (vanilla_transformer.scripts.training.precision): the detection
(flags, oneDNN, the VANILLA_TRANSFORMER_ASSUME_CPU_BF16 override), the fallback to fp32 with a warning that names the
fix, `--force_bf16`, a GPU left alone, the check made before any data is read, and training_args.json recording what
ran. Forced answers (the override, or monkeypatched flags) make every test's outcome the same on any CPU."""

import json
import time
import warnings

import pytest
import torch

from vanilla_transformer.scripts import pretrain_mlm, train_translation
from vanilla_transformer.scripts.training import precision as cpu_precision
from vanilla_transformer.scripts.training.loop import LoopArguments
from vanilla_transformer.scripts.training.engine import make_accelerator
from vanilla_transformer.scripts.training.precision import (
    ASSUME_CPU_BF16,
    CpuBf16Support,
    CpuBf16Warning,
    check_mixed_precision,
    cpu_bf16_support,
)

NATIVE = CpuBf16Support(True, "test CPU with avx512_bf16")
EMULATED = CpuBf16Support(False, "test CPU, torch capability AVX2, no avx512_bf16 / amx_bf16")


class DataWasRead(Exception):
    """Raised by a stand-in for a script's data loading: what happened before it happened before any data."""


@pytest.fixture
def detected(monkeypatch):
    """The detection without the override, from fresh (uncached) flags."""
    monkeypatch.delenv(ASSUME_CPU_BF16, raising=False)
    cpu_precision._detect_cpu_bf16.cache_clear()
    yield
    cpu_precision._detect_cpu_bf16.cache_clear()


def fake_cpu(monkeypatch, architecture: str, capabilities: dict, proc_flags: set | None, onednn: bool | None):
    monkeypatch.setattr(cpu_precision, "_architecture", lambda: architecture)
    monkeypatch.setattr(cpu_precision, "_torch_cpu_capabilities", lambda: capabilities)
    monkeypatch.setattr(cpu_precision, "_proc_cpuinfo_flags", lambda: proc_flags)
    monkeypatch.setattr(cpu_precision, "_onednn_bf16", lambda: onednn)
    cpu_precision._detect_cpu_bf16.cache_clear()


# ----------------------------------------------------------------------------------------------- detection


def test_detection_of_this_cpu_is_a_bool_in_well_under_a_second(detected):
    start = time.perf_counter()
    support = cpu_bf16_support()
    elapsed = time.perf_counter() - start
    assert isinstance(support.native, bool) and bool(support) is support.native
    assert elapsed < 5.0, f"the detection took {elapsed:.2f} s"  # a loose bound: it reads flags, about 1 ms here
    assert f"torch capability {torch.backends.cpu.get_cpu_capability()}" in support.description
    assert "oneDNN bf16: " in support.description


def test_detection_agrees_with_the_flags_torch_reports(detected):
    capabilities = dict(torch.cpu.get_capabilities())
    if capabilities.get("architecture") != "x86_64":
        pytest.skip("the x86 flags")
    flagged = bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    assert cpu_bf16_support().native == (flagged and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not flagged:  # an AVX2-only CPU like this project's machine: the fallback is what protects the recipe
        assert "no avx512_bf16 / amx_bf16" in cpu_bf16_support().description


@pytest.mark.parametrize(
    "architecture, capabilities, proc_flags, onednn, native",
    [
        # AVX2 only (AMD Zen 3): no bf16 instruction, oneDNN does not take bf16 either
        ("x86_64", {"avx2": True, "avx512_bf16": False, "amx_bf16": False}, {"avx2", "fma"}, False, False),
        # AVX-512 without bf16 instructions (Skylake-SP): oneDNN emulates bf16, still not native
        ("x86_64", {"avx512_f": True, "avx512_bf16": False}, {"avx512f", "avx512bw"}, True, False),
        ("x86_64", {"avx512_bf16": True}, {"avx512_bf16"}, True, True),  # Cooper Lake, Zen 4
        ("x86_64", {"amx_bf16": True}, {"amx_bf16", "amx_tile"}, True, True),  # Sapphire Rapids
        ("x86_64", {}, {"avx512_bf16"}, True, True),  # a torch without get_capabilities: /proc/cpuinfo decides
        ("x86_64", {"avx512_bf16": True}, None, True, True),  # no /proc/cpuinfo (not Linux): torch's cpuinfo
        ("x86_64", {"avx512_bf16": True}, {"avx512_bf16"}, False, False),  # a torch without oneDNN's bf16 path
        ("aarch64", {"bf16": True}, {"fp", "asimd", "bf16"}, True, True),  # Graviton 3
        ("aarch64", {"bf16": False}, {"fp", "asimd"}, False, False),  # Graviton 2
        ("riscv64", {}, {"rv64imafdc"}, None, False),
    ],
)
def test_native_bf16_needs_a_bf16_instruction_and_onednn(monkeypatch, detected, architecture, capabilities,
                                                         proc_flags, onednn, native):
    fake_cpu(monkeypatch, architecture, capabilities, proc_flags, onednn)
    support = cpu_bf16_support()
    assert support.native is native, support.description
    assert architecture in support.description


def test_cpuinfo_flags_are_read_from_the_first_processor(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n"
                   "flags\t\t: fpu avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd40\n")
    assert cpu_precision._proc_cpuinfo_flags(str(x86)) == {"fpu", "avx2", "fma"}
    assert cpu_precision._proc_cpuinfo_flags(str(arm)) == {"fp", "asimd", "bf16", "i8mm"}
    assert cpu_precision._proc_cpuinfo_flags(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("value, native", [("0", False), ("1", True), ("false", False), ("true", True)])
def test_the_environment_variable_overrides_the_detection(monkeypatch, detected, value, native):
    fake_cpu(monkeypatch, "x86_64", {"avx512_bf16": not native}, set(), not native)  # the opposite answer
    monkeypatch.setenv(ASSUME_CPU_BF16, value)
    support = cpu_bf16_support()
    assert support.native is native
    assert f"{ASSUME_CPU_BF16}={value}" in support.description
    assert cpu_bf16_support(assume=not native).native is (not native)  # the parameter wins over the variable


def test_a_wrong_override_value_is_refused(monkeypatch, detected):
    monkeypatch.setenv(ASSUME_CPU_BF16, "maybe")
    with pytest.raises(ValueError, match=f"{ASSUME_CPU_BF16}='maybe': use 1"):
        cpu_bf16_support()


# ----------------------------------------------------------------------------------------- the decision


def test_bf16_without_native_bf16_falls_back_to_fp32_and_says_how_to_fix_it():
    with pytest.warns(CpuBf16Warning) as caught:
        assert check_mixed_precision("bf16", "cpu", support=EMULATED) == "no"
    (message,) = [str(w.message) for w in caught]
    assert EMULATED.description in message  # what was found
    assert "~37x slower per step than fp32" in message  # what it would cost
    assert "Training in fp32 instead" in message
    assert "--mixed_precision no" in message and "--mixed_precision bf16 --force_bf16" in message  # the fixes


def test_force_bf16_keeps_bf16_with_a_warning():
    with pytest.warns(CpuBf16Warning, match="training in bf16 as asked.*Faster here: --mixed_precision no"):
        assert check_mixed_precision("bf16", "cpu", force_bf16=True, support=EMULATED) == "bf16"


def test_native_bf16_keeps_bf16_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_mixed_precision("bf16", "cpu", support=NATIVE) == "bf16"
        assert check_mixed_precision("BF16", torch.device("cpu"), support=NATIVE) == "bf16"
        assert check_mixed_precision("no", "cpu", support=EMULATED) == "no"
        assert check_mixed_precision(None, "cpu", support=EMULATED) == "no"


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("mps")])
@pytest.mark.parametrize("precision", ["bf16", "fp16", "no"])
def test_a_gpu_is_left_alone_without_looking_at_the_cpu(monkeypatch, device, precision):
    def no_detection(*args, **kwargs):
        raise AssertionError("the CPU was examined for a GPU run")

    monkeypatch.setattr(cpu_precision, "cpu_bf16_support", no_detection)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_mixed_precision(precision, device) == precision


def test_fp16_on_a_cpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"fp16 is not available on cpu.*use --mixed_precision no \(this CPU has no "
                                         r"native bf16 either: test CPU, torch capability AVX2"):
        check_mixed_precision("fp16", "cpu", support=EMULATED)
    with pytest.raises(ValueError, match=r"use --mixed_precision bf16 \(this CPU has native bf16\)"):
        check_mixed_precision("fp16", "cpu", support=NATIVE)


# ------------------------------------------------------------------------------------------- the scripts


def test_accelerate_launch_bf16_falls_back_too_and_the_arguments_say_so(monkeypatch, tmp_path,
                                                                        fresh_accelerate_state):
    # `accelerate launch --mixed_precision bf16` sets this variable and no option
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv(ASSUME_CPU_BF16, "0")
    loop = LoopArguments(output_dir=str(tmp_path), max_steps=1)
    with pytest.warns(CpuBf16Warning, match="Training in fp32 instead"):
        accelerator = make_accelerator(loop)
    assert accelerator.mixed_precision == "no" and accelerator.device.type == "cpu"
    assert (loop.mixed_precision, loop.requested_mixed_precision) == ("no", "bf16")


def test_translation_bf16_on_a_cpu_without_it_trains_in_fp32_and_records_it(monkeypatch, tmp_path,
                                                                            fresh_accelerate_state, log_records,
                                                                            run_translation, translation_args,
                                                                            write_translation_corpus):
    monkeypatch.setenv(ASSUME_CPU_BF16, "0")
    corpus = write_translation_corpus(tmp_path / "data")
    argv = ["--max_steps", "2", "--save_steps", "2", "--length_penalties", "1.0"]
    with pytest.warns(CpuBf16Warning, match=r"Training in fp32 instead.*--mixed_precision no"):
        outcome = run_translation(translation_args(corpus, tmp_path / "bf16", "--mixed_precision", "bf16", *argv))
    assert outcome.completed and outcome.global_step == 2
    for recorded in (tmp_path / "bf16" / "training_args.json", tmp_path / "bf16" / "final" / "training_args.json"):
        arguments = json.loads(recorded.read_text())
        assert (arguments["mixed_precision"], arguments["requested_mixed_precision"]) == ("no", "bf16"), recorded
        assert arguments["force_bf16"] is False
    # what ran is fp32: the same losses as an fp32 run (bf16 autocast would round them)
    run_translation(translation_args(corpus, tmp_path / "fp32", "--mixed_precision", "no", *argv))
    losses = [[r["loss"] for r in log_records(tmp_path / name) if "loss" in r] for name in ("bf16", "fp32")]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    assert json.loads((tmp_path / "fp32" / "training_args.json").read_text())["mixed_precision"] == "no"


def test_translation_bf16_on_a_native_cpu_stays_bf16(monkeypatch, tmp_path, fresh_accelerate_state, run_translation,
                                                     translation_args, write_translation_corpus):
    monkeypatch.setenv(ASSUME_CPU_BF16, "1")
    corpus = write_translation_corpus(tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CpuBf16Warning)
        run_translation(translation_args(corpus, tmp_path / "bf16", "--mixed_precision", "bf16", "--max_steps", "1",
                                         "--save_steps", "1", "--length_penalties", "1.0"))
    arguments = json.loads((tmp_path / "bf16" / "training_args.json").read_text())
    assert (arguments["mixed_precision"], arguments["requested_mixed_precision"]) == ("bf16", "bf16")


@pytest.mark.parametrize("script", ["train_translation", "pretrain_mlm"])
def test_the_check_comes_before_any_data_is_read(monkeypatch, tmp_path, fresh_accelerate_state, script, mlm_args,
                                                 run_mlm, run_translation, tiny_model_args, translation_args,
                                                 write_mlm_corpus, write_translation_corpus):
    monkeypatch.setenv(ASSUME_CPU_BF16, "0")

    def read_data(*args, **kwargs):
        raise DataWasRead

    # the files exist: the scripts check the paths before reading any data too, after the precision
    if script == "train_translation":
        monkeypatch.setattr(train_translation, "load_parallel", read_data)
        corpus = write_translation_corpus(tmp_path / "data")
        start = lambda: run_translation(translation_args(corpus, tmp_path / "out",  # noqa: E731
                                                         "--mixed_precision", "bf16", "--max_steps", "1"))
    else:
        monkeypatch.setattr(pretrain_mlm, "load_texts", read_data)
        start = lambda: run_mlm(mlm_args(write_mlm_corpus(tmp_path / "data"), tmp_path / "out",  # noqa: E731
                                         "--mixed_precision", "bf16", "--max_steps", "1", *tiny_model_args()))
    with pytest.warns(CpuBf16Warning, match="Training in fp32 instead"), pytest.raises(DataWasRead):
        start()


def test_mlm_bf16_with_force_bf16_records_bf16(monkeypatch, tmp_path, fresh_accelerate_state, mlm_args, run_mlm,
                                               tiny_model_args, write_mlm_corpus):
    monkeypatch.setenv(ASSUME_CPU_BF16, "0")
    corpus = write_mlm_corpus(tmp_path / "data")
    with pytest.warns(CpuBf16Warning, match="--force_bf16 on a CPU without native bf16"):
        run_mlm(mlm_args(corpus, tmp_path / "out", "--mixed_precision", "bf16", "--force_bf16", "--max_steps", "2",
                         "--save_steps", "2", *tiny_model_args()))
    arguments = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert (arguments["mixed_precision"], arguments["requested_mixed_precision"], arguments["force_bf16"]) == (
        "bf16", "bf16", True)
