"""The benchmark's measuring instruments (scripts/benchmark.py, scripts/benchmarking/measurement.py): peak memory
and FLOP counts must read what is there; its reference corpora come from --data_dir. Timings themselves are never
tested (noisy machines); they are in benchmarks/."""

import json

import pytest
import torch

from vanilla_transformer.modeling import VanillaBertForMaskedLM
from vanilla_transformer.scripts import benchmark
from vanilla_transformer.scripts.benchmarking import measurement
from vanilla_transformer.scripts.benchmarking.measurement import Result
from vanilla_transformer.scripts.benchmarking.peers import sst2_sentences


@pytest.mark.skipif(measurement._GlibcHeap.load() is None, reason="needs glibc's mallinfo2")
def test_cpu_peak_memory_sees_a_temporary_and_not_what_was_there_before():
    kept = torch.ones(4 * 2**20 // 4)  # 4 MB allocated before: not part of the step's peak

    def step():
        temporary = torch.ones(16 * 2**20 // 4)  # 16 MB, freed at once
        del temporary
        return torch.ones(2 * 2**20 // 4).sum()  # 2 MB more after it: the peak is the 16 MB one

    peak = measurement.peak_memory_mb(step, "cpu")
    assert 16.0 <= peak < 17.0
    assert kept.numel() > 0


def test_step_flops_counts_matrix_products_and_sparse_prediction_saves_vocabulary_flops(tiny_bert_config):
    x, weight = torch.randn(8, 16), torch.randn(16, 32, requires_grad=True)
    # forward 2*8*16*32, backward: the gradient of the weight only (x needs none), as many again
    assert measurement.step_flops(lambda: (x @ weight).sum().backward()) == 2 * (2 * 8 * 16 * 32)

    config = tiny_bert_config(vocab_size=1000)
    model = VanillaBertForMaskedLM(config).eval()
    input_ids = torch.randint(5, 1000, (2, 16))
    labels = torch.full_like(input_ids, -100)
    labels[:, :2] = input_ids[:, :2]  # 4 of the 32 positions are predicted
    dense = measurement.step_flops(lambda: model(input_ids=input_ids, labels=labels))
    model.config.sparse_prediction = True
    sparse = measurement.step_flops(lambda: model(input_ids=input_ids, labels=labels))
    # the vocabulary projection (2 * positions * hidden * vocab) at 4 positions instead of 32
    assert dense - sparse >= 2 * 28 * config.hidden_size * 1000


def test_bf16_peak_is_looked_up_by_card_name_or_given(monkeypatch):
    args = benchmark.BenchmarkArguments(device="cpu")
    assert measurement.bf16_peak_tflops(args) is None  # no card: no utilisation figure
    args.device = "cuda"
    names = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.4, "NVIDIA H100 NVL": 835.5,
             "NVIDIA H200": 989.4, "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA GeForce GTX 1080": None}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, name=name: name)
        assert measurement.bf16_peak_tflops(args) == peak, name
    args.peak_tflops = 500.0  # given: it wins
    assert measurement.bf16_peak_tflops(args) == 500.0


def test_a_missing_data_folder_is_one_line_naming_the_folder_and_the_option(tmp_path, monkeypatch, capsys):
    def refusal(*argv):
        with pytest.raises(SystemExit) as stopped:
            benchmark.main(["--cases", "1", "2", "--output_dir", str(tmp_path / "out"), *argv])
        assert stopped.value.code == 1
        message = capsys.readouterr().err
        assert message.count("\n") == 1 and "sst2/dev.tsv" in message and "--data_dir" in message
        return message

    assert f"--data_dir {tmp_path / 'given'} " in refusal("--data_dir", str(tmp_path / "given"))
    monkeypatch.setenv("VT_DATA_DIR", str(tmp_path / "from-env"))  # the default, where set
    assert f"--data_dir {tmp_path / 'from-env'} " in refusal()
    monkeypatch.delenv("VT_DATA_DIR")
    (tmp_path / "clone").mkdir()
    monkeypatch.chdir(tmp_path / "clone")  # else ../shared/data from the current folder
    assert f"--data_dir ../shared/data ({tmp_path.resolve() / 'shared' / 'data'})" in refusal()
    assert not (tmp_path / "out").exists()  # refused before case 1 ran


def test_the_cases_read_the_given_data_folder_and_the_results_go_to_the_output_folder(tmp_path, monkeypatch):
    (tmp_path / "corpora" / "sst2").mkdir(parents=True)
    (tmp_path / "corpora" / "sst2" / "dev.tsv").write_text("sentence\tlabel\na fine film .\t1\ndull .\t0\n")

    def case_reading_sst2(args):  # case 2's reader, without the minutes of timing
        """2. a stand-in for case 2 that only reads its data."""
        sentences = sst2_sentences(args.data_dir, 64)
        return [Result(case="2. read", metric="sentences", ours=len(sentences), peer=1.0, ratio=1.0, ratio_min=1.0,
                       ratio_max=1.0, note=" | ".join(sentences))]

    monkeypatch.setitem(benchmark.CASES, 2, case_reading_sst2)
    monkeypatch.setenv("VT_DATA_DIR", str(tmp_path / "elsewhere"))  # the option wins over the variable
    assert benchmark.main(["--cases", "2", "--data_dir", str(tmp_path / "corpora"), "--output_dir",
                           str(tmp_path / "out"), "--scaling_plot", "false"]) == 0
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["args"]["data_dir"] == str(tmp_path / "corpora")
    assert written["results"][0]["note"] == "a fine film . | dull ."
    assert "| 2. read | sentences | 2.0 |" in (tmp_path / "out" / "results.md").read_text()
