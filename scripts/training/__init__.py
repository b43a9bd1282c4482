"""The training library behind the scripts, installed as `vanilla_transformer.scripts.training`:

- `loop`: the one Accelerate training loop (`train`), its optimizer (`make_optimizer`) and learning-rate schedule
  (`make_schedule`), used by every script that trains;
- `batching`: an epoch's micro-batches (`token_batches`, `sized_batches`) and each process's share
  (`steps_for_process`);
- `checkpoints`: checkpoints as data, the output folder's checks, the final Hub-ready folder;
- `precision`: CPU bf16 detection and the precision a run gets;
- `logs`: log.jsonl and its plot;
- `errors`: the refusals (`ArgumentError`, `DataError`, `CheckpointError`, `TrainingError`) and argument checks;
- `translation_data`, `text_data`: the corpora (files, Hub datasets, the embedded defaults) and their tokenization;
- `translation_eval`: batched beam search and sacreBLEU / chrF with the offline metric modules in `metrics/`;
- `tokenizer_checks`, `model_folders`: checks of a tokenizer, a model folder and output paths before the work.
"""
