"""The benchmark's measuring instruments (scripts/benchmark.py): peak memory and FLOP counts must read what is
there. Timings themselves are never tested (noisy machines); they are in benchmarks/."""

import pytest
import torch

from vanilla_transformer.modeling import VanillaBertForMaskedLM
from vanilla_transformer.scripts import benchmark


@pytest.mark.skipif(benchmark._GlibcHeap.load() is None, reason="needs glibc's mallinfo2")
def test_cpu_peak_memory_sees_a_temporary_and_not_what_was_there_before():
    kept = torch.ones(4 * 2**20 // 4)  # 4 MB allocated before: not part of the step's peak

    def step():
        temporary = torch.ones(16 * 2**20 // 4)  # 16 MB, freed at once
        del temporary
        return torch.ones(2 * 2**20 // 4).sum()  # 2 MB more after it: the peak is the 16 MB one

    peak = benchmark.peak_memory_mb(step, "cpu")
    assert 16.0 <= peak < 17.0
    assert kept.numel() > 0


def test_step_flops_counts_matrix_products_and_sparse_prediction_saves_vocabulary_flops(tiny_bert_config):
    x, weight = torch.randn(8, 16), torch.randn(16, 32, requires_grad=True)
    # forward 2*8*16*32, backward: the gradient of the weight only (x needs none), as many again
    assert benchmark.step_flops(lambda: (x @ weight).sum().backward()) == 2 * (2 * 8 * 16 * 32)

    config = tiny_bert_config(vocab_size=1000)
    model = VanillaBertForMaskedLM(config).eval()
    input_ids = torch.randint(5, 1000, (2, 16))
    labels = torch.full_like(input_ids, -100)
    labels[:, :2] = input_ids[:, :2]  # 4 of the 32 positions are predicted
    dense = benchmark.step_flops(lambda: model(input_ids=input_ids, labels=labels))
    model.config.sparse_prediction = True
    sparse = benchmark.step_flops(lambda: model(input_ids=input_ids, labels=labels))
    # the vocabulary projection (2 * positions * hidden * vocab) at 4 positions instead of 32
    assert dense - sparse >= 2 * 28 * config.hidden_size * 1000


def test_bf16_peak_is_looked_up_by_card_name_or_given(monkeypatch):
    args = benchmark.BenchmarkArguments(device="cpu")
    assert benchmark.bf16_peak_tflops(args) is None  # no card: no utilisation figure
    args.device = "cuda"
    names = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.4, "NVIDIA H100 NVL": 835.5,
             "NVIDIA H200": 989.4, "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA GeForce GTX 1080": None}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, name=name: name)
        assert benchmark.bf16_peak_tflops(args) == peak, name
    args.peak_tflops = 500.0  # given: it wins
    assert benchmark.bf16_peak_tflops(args) == 500.0
