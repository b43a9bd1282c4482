"""The project's commands, installed as `vanilla_transformer.scripts`: each module has a `main(argv=None)`, run by
`python scripts/<name>.py`, `python -m vanilla_transformer.scripts.<name>` or the console command
`vanilla-transformer-<name>` (pyproject.toml). They hold argument parsing and the order of the work; what they share
(the training loop, data, checks) is the library `vanilla_transformer.scripts.training`."""
