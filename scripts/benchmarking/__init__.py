"""The library behind the two benchmark commands, installed as `vanilla_transformer.scripts.benchmarking`:

- `common`: what both share: the --data_dir default ($VT_DATA_DIR, else ../shared/data) and the check of its files
  (`data_file`), `read_lines`, and the `machine` line of a results file;

the peer benchmark (scripts/benchmark.py: ours against the Hugging Face models, same weights):

- `measurement`: timing, peak memory (CUDA, or the C heap in a forked child), FLOPs of a step, the bf16 peaks of
  known GPUs, and `compare` (ours and the peer interleaved) with its `Result`;
- `peers`: our model and its peer with the same weights, at the device's shape, and the batches (random MLM tokens,
  SST-2, Multi30k);
- `cases`: the cases 1-6 by number (`CASES`) and the data files each reads; `ctranslate2_case`: case 7;
- `report`: results.md / results.json and the encoder's scaling plot;

the corpus benchmark (scripts/benchmark_corpus.py: the data path on corpora of paper size):

- `corpora`: the translation pairs and the MLM text it makes from the reference corpora;
- `processes`: a command measured in a fresh process (time to the first batch, peak memory, cache files);
- `corpus_report`: corpus_results.md and corpus_scaling.png.
"""
