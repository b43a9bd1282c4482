"""The library behind the commands, installed as `vanilla_transformer.scripts.training`, a module per concern:

The run
- `run`: the one run of the commands that train on our loop (a command brings a `Recipe`): run folder, tokenizer and
  data, model, training, final folder or early stop, report;
- `finetuning`, `finetuning_trainer`: the same for the fine-tuning commands, on transformers' `Trainer`;
- `run_folder`: the one output-folder and resume policy, the final Hub-ready folder (written atomically);
  `run_lock`: one run per folder; `checkpoints`, `checkpoint_checks`: checkpoints as data, validated before use;
- `loop`: the Accelerate training loop (`train`); `engine`: accelerator, precision, engines, signals;
  `optimization`: optimizer and learning-rate schedules; `evaluation`: every process's share of an evaluation;
  `batching`: an epoch's micro-batches; `precision`: CPU bf16 detection; `logs`: log.jsonl and its plot.

Data
- `data_files`: the one reader (text, TSV / CSV / JSON lines, CoNLL, .gz, Hub ids; errors name the file and line);
- `translation_data`, `mlm_data` (+ `mlm_arguments`), `classification_data`, `token_data`: each task's data;
- `embedded_corpora`: the corpora every installation has, as named data sources (`embedded:...`);
- `tokenizer_checks`, `model_folders`: checks of a tokenizer and a model folder before the work.

Scores
- `translation_eval`: batched beam search, validation and sacreBLEU / chrF; the offline metric modules in `metrics/`
  (sacrebleu, chrf, accuracy_f1, seqeval_f1).

Refusals
- `errors`: `ArgumentError`, `DataError`, `CheckpointError`, `TrainingError`, argument checks, and `run_command`:
  a command's refusals as one `error:` line.
"""
