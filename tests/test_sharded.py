"""Sharded and multi-node training, tested on CPU processes (gloo), and what the sharding engines need of the models
(docs/scaling.md):

- two "machines" on the loopback address (`accelerate launch --num_machines 2 --machine_rank 0/1`, one process each)
  train to the weights of one process with the same global batch: multi-node DDP, as multi_node_ddp.yaml runs it;
- both model families sharded by PyTorch's FSDP2 (`fully_shard`, one unit per `_no_split_modules` layer, as
  fsdp2.yaml's auto-wrap makes them) take the steps of unsharded training, with the model's own activation
  checkpointing too; the training loop's checkpoint of a sharded model holds the whole (consolidated) state and
  resumes to the weights of the uninterrupted run; its evaluation gives every process the same number of forward
  passes and scores each batch once; the scripts' final save, run on every process, and checkpoint averaging work on
  the whole weights; a state saved sharded by torch.distributed.checkpoint becomes, consolidated, a Hub folder;
- --gradient_checkpointing (the models' own activation checkpointing) gives the gradients of training without it,
  dropout on; every run names its engine in one line;
- no forward reads a parameter outside the module that owns it: DeepSpeed ZeRO-3 gathers a module's parameters for
  that module's own forward only;
- the Accelerate config files load with accelerate's own loader.

Accelerate enables FSDP and DeepSpeed on accelerators only: fsdp2.yaml and the DeepSpeed files are not run here.
"""

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from torch.overrides import TorchFunctionMode

from vanilla_transformer.modeling import (
    VanillaBertForMaskedLM,
    VanillaTransformerForConditionalGeneration,
)
from vanilla_transformer.scripts.training.checkpoints import (
    Checkpoints,
    TrainingProgress,
    average_checkpoints,
    is_sharded,
)
from vanilla_transformer.scripts.training.run_folder import save_final
from vanilla_transformer.scripts.training.loop import LoopArguments
from vanilla_transformer.scripts.training.evaluation import evaluation_share, mean_loss
from vanilla_transformer.scripts.training.engine import describe_engine, prepare_for_training
from vanilla_transformer.scripts.training.optimization import make_optimizer, make_schedule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "scripts" / "accelerate_configs"


# ------------------------------------------------------------------------------------------ multi-node DDP


@contextlib.contextmanager
def _machines(argv: list[str], port: int, logs: Path):
    """multi_node_ddp.yaml's two machines as two `accelerate launch`es of one CPU process each, rendezvousing on the
    loopback address (the command line overrides the file's address, port, process count and precision), their
    output in logs/machine_<rank>.txt. Whatever is left of them (launcher and worker, in their own process groups) is
    killed on the way out."""
    launcher = Path(sys.executable).parent / "accelerate"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    try:
        for rank in range(2):
            with open(logs / f"machine_{rank}.txt", "w") as log:
                processes.append(subprocess.Popen(
                    [str(launcher), "launch", "--config_file", str(CONFIGS / "multi_node_ddp.yaml"), "--machine_rank",
                     str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                     "--num_processes", "2", "--dynamo_backend", "no", "--mixed_precision", "no",
                     str(ROOT / "scripts" / "train_translation.py"), *argv],
                    env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_two_machines_on_the_loopback_train_to_the_weights_of_one_process_with_the_same_global_batch(
        tmp_path, run_translation, translation_args, write_translation_corpus, log_records, free_port):
    """DDP over two machines (one process each) against one process: the weights, every logged figure (loss, gradient
    norm, learning rate, validation loss, BLEU, chrF) and the final folder. One launch covers DDP across processes;
    test_accelerate.py launches 2 processes on one machine (Ctrl-C and resume)."""
    corpus = write_translation_corpus(tmp_path / "data")
    # 8 micro-batches an epoch: into epoch 1. Dropout off: each process draws its own masks, so with dropout the runs
    # agree in distribution only.
    common = ["--max_steps", "5", "--dropout", "0", "--save_steps", "5", "--eval_steps", "3"]
    with _machines(translation_args(corpus, tmp_path / "two", *common), free_port(), tmp_path / "logs") as machines:
        # meanwhile the reference: one process, the same global batch in 2 accumulated micro-batches
        one = run_translation(translation_args(corpus, tmp_path / "one", *common, "--gradient_accumulation_steps", "2"))
        deadline = time.monotonic() + 240
        # until both are done or one has failed (the other would wait for it)
        while any(m.poll() is None for m in machines) and not any(m.poll() for m in machines):
            assert time.monotonic() < deadline, "the two machines timed out"
            time.sleep(0.05)
        codes = [machine.poll() for machine in machines]
    outputs = [(tmp_path / "logs" / f"machine_{rank}.txt").read_text() for rank in range(2)]
    for code, output in zip(codes, outputs):
        assert code == 0, output[-6000:]
    assert "global batch = 2 processes x 1 micro-batches" in outputs[0]
    assert "engine: DDP (CPU), 2 processes on 2 machines" in outputs[0]

    assert one.global_step == 5 and one.epoch == 1
    step = tmp_path / "two" / "checkpoints" / "step-5"
    single = safetensors.torch.load_file(tmp_path / "one" / "checkpoints" / "step-5" / "model.safetensors")
    double = safetensors.torch.load_file(step / "model.safetensors")
    assert single.keys() == double.keys()
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    assert (step / "rng_state_0.safetensors").is_file() and (step / "rng_state_1.safetensors").is_file()
    for a, b in zip(log_records(tmp_path / "one"), log_records(tmp_path / "two"), strict=True):
        assert a["step"] == b["step"]
        for key in ("loss", "grad_norm", "lr", "val_loss", "val_bleu", "val_chrf"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), (a, b)
    assert any("val_bleu" in record for record in log_records(tmp_path / "two"))
    final_one, final_two = (json.loads((tmp_path / d / "final" / "config.json").read_text()) for d in ("one", "two"))
    assert final_one == final_two


# ---------------------------------------------------------------------------------------------------- FSDP2

STEPS, SAVED_AT, WORLD = 2, 1, 2


def _cases(tiny_transformer_config, tiny_bert_config) -> dict:
    """name: (model class, config, with the model's own activation checkpointing). One layer per stack: the units are
    the layers and the root all the same, and each sharded parameter costs its own collectives (slow on gloo)."""
    return {
        "seq2seq": (VanillaTransformerForConditionalGeneration,
                    tiny_transformer_config(encoder_layers=1, decoder_layers=1), True),
        # sparse prediction: the MLM loss through the fused vocabulary projection (fast_loss.py)
        "mlm": (VanillaBertForMaskedLM, tiny_bert_config(num_hidden_layers=1, sparse_prediction=True), False),
    }


def _batches(model_class) -> list[dict]:
    """STEPS global batches of 4 rows, padded, the same in every process."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        ids = torch.randint(4, 99, (4, 10), generator=generator)
        mask = (torch.arange(10) < torch.tensor([[10], [7], [9], [5]])).long()
        ids = ids.masked_fill(mask == 0, 0)
        if model_class is VanillaBertForMaskedLM:
            chosen = (torch.rand(ids.shape, generator=generator) < 0.3) & (mask == 1)
            batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(~chosen, -100)})
        else:
            labels = torch.randint(4, 99, (4, 6), generator=generator)
            labels[1:, 4:] = -100
            batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def _new_model(model_class, config, checkpointing: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = model_class(config)
    if checkpointing:  # the name since transformers 5.23 (gradient_checkpointing_enable before, deprecated since)
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    return model


def _optimizer(model):
    """The training loop's Adam and schedule (made after sharding: over the sharded parameters). Epsilon 1e-6, not the
    paper's 1e-9: see `_tolerance`."""
    optimizer = make_optimizer(model, 3e-3, eps=1e-6)
    return optimizer, make_schedule(optimizer, warmup_steps=2)


def _step(model, optimizer, scheduler, batch: dict, rank: int = 0, world: int = 1) -> None:
    """One optimizer step of the training loop's kind: each process its share of the rows, the loss a sum over the
    whole global batch's items, times the number of processes (the gradient reduction averages), clipped."""
    items = (batch["labels"] != -100).sum()
    share = {key: value.chunk(world)[rank] for key, value in batch.items()}
    (model(**share, num_items_in_batch=items).loss * world).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _tolerance(key: str) -> dict:
    """Sharded against unsharded weights. The key projections' biases have a gradient of 0 but for rounding (softmax
    ignores a shift common to all keys): their steps are rounding noise scaled up by Adam (to whole steps with the
    paper's epsilon), and the noise depends on the order of the reduction."""
    return dict(rtol=0, atol=5e-5) if key.endswith("k_proj.bias") else dict(rtol=1e-5, atol=1e-6)


def _shard(model) -> None:
    """FSDP2 as fsdp2.yaml's auto-wrap shards the model (accelerate 1.15): one unit per layer class the model names in
    `_no_split_modules`; one for the tied input embeddings and output projection together, kept gathered from the
    forward to the backward pass; the root's for the rest (positions, norms)."""
    from torch.distributed.fsdp import fully_shard

    for module in reversed(list(model.modules())):
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module)
    fully_shard([model.get_input_embeddings(), model.get_output_embeddings()], reshard_after_forward=False)
    fully_shard(model)


def _fsdp_worker(rank: int, port: int, folder: Path, cases: dict) -> None:
    """One of WORLD processes (forked: no imports to repeat). For each case: STEPS sharded steps with a checkpoint of
    the training loop after SAVED_AT; the validation loss of the trained model over 3 batches (an uneven split) and,
    for the encoder-decoder, beam search of different lengths; the trained model saved sharded
    (torch.distributed.checkpoint) and by the scripts' final save; then a fresh sharded model resumed from the
    checkpoint, trained to the end and saved sharded too; for the encoder-decoder, checkpointed at the end and set to
    the average of the two checkpoints, which the final save writes. Failures go to error_<rank>.txt."""
    try:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                          LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
        AcceleratorState._reset_state(reset_partial_state=True)  # what the parent process had is not this one's
        GradientState._reset_state()
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)
        accelerator = Accelerator(cpu=True)  # for the loop's checkpoints: process index, barriers

        for name, (model_class, config, checkpointing) in cases.items():
            batches = _batches(model_class)
            model = _new_model(model_class, config, checkpointing)
            _shard(model)
            optimizer, scheduler = _optimizer(model)
            checkpoints = Checkpoints(folder / name, keep=2)
            for step, batch in enumerate(batches, start=1):
                _step(model, optimizer, scheduler, batch, rank, WORLD)
                if step == SAVED_AT:
                    progress = TrainingProgress(global_step=step, step_in_epoch=step, train_seconds=1.0)
                    checkpoints.save(accelerator, model, optimizer, scheduler, progress)
            model.eval()
            loss = mean_loss(accelerator, model, _evaluated(model_class))  # 2 batches on rank 0, 1 on rank 1
            (folder / name / f"loss_{rank}.json").write_text(json.dumps(loss))
            if model.can_generate():  # beam search that ends 2 steps earlier on rank 0: it keeps stepping
                tokens = model.generate(**_prompts(rank), num_beams=2, max_new_tokens=2 + 2 * rank,
                                        synced_gpus=is_sharded(model))
                (folder / name / f"generated_{rank}.json").write_text(json.dumps(tokens.tolist()))
            model.train()
            dcp.save(get_model_state_dict(model), checkpoint_id=folder / name / "trained")
            save_final(accelerator, model, None, folder / name, {}, checkpoints.all()[-1])  # on both processes

            model = _new_model(model_class, config, checkpointing, seed=1)  # other weights: the load must work
            _shard(model)
            optimizer, scheduler = _optimizer(model)
            progress = TrainingProgress()
            checkpoints.load(accelerator, checkpoints.all()[-1], model, optimizer, scheduler, progress)
            for batch in batches[progress.global_step :]:
                _step(model, optimizer, scheduler, batch, rank, WORLD)
            dcp.save(get_model_state_dict(model), checkpoint_id=folder / name / "resumed")
            if name == "seq2seq":  # train_translation.py's --average_last
                progress = TrainingProgress(global_step=STEPS, step_in_epoch=STEPS, train_seconds=1.0)
                checkpoints.save(accelerator, model, optimizer, scheduler, progress)
                average_checkpoints(model, checkpoints.all())  # of steps SAVED_AT and STEPS
                save_final(accelerator, model, None, folder / name / "averaged", {}, checkpoints.all()[-1])
                assert is_sharded(model)
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:
        (folder / f"error_{rank}.txt").write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def _evaluated(model_class) -> list[dict]:
    """3 validation batches: split over WORLD processes, 2 and 1."""
    return _batches(model_class) + _batches(model_class)[:1]


def _prompts(rank: int) -> dict:
    """Each process's own inputs to generate from."""
    ids = torch.randint(4, 99, (2, 6), generator=torch.Generator().manual_seed(rank))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _consolidated(model_class, config, sharded: Path):
    """A plain model with the weights of a sharded save, which torch.distributed.checkpoint reads in one process."""
    import torch.distributed.checkpoint as dcp

    model = model_class(config)
    dcp.load(model.state_dict(), checkpoint_id=sharded, no_dist=True)  # in place, into the model's tensors
    return model


# torch.distributed.checkpoint warns when it reads a sharded save in one process, which is the point here
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_fsdp2_sharded_training_takes_the_unsharded_steps_evaluates_and_saves_whole_hub_ready_weights(
        tmp_path, tiny_transformer_config, tiny_bert_config, free_port):
    cases = _cases(tiny_transformer_config, tiny_bert_config)
    fork = multiprocessing.get_context("fork")  # the imports are done: a forked worker starts at once
    port = free_port()
    workers = [fork.Process(target=_fsdp_worker, args=(rank, port, tmp_path, cases)) for rank in range(WORLD)]
    for worker in workers:
        worker.start()
    try:
        # meanwhile the reference: the same steps, unsharded, without activation checkpointing, the whole batch
        reference, at_checkpoint, losses = {}, {}, {}
        for name, (model_class, config, _) in cases.items():
            model = _new_model(model_class, config)
            optimizer, scheduler = _optimizer(model)
            for step, batch in enumerate(_batches(model_class), start=1):
                _step(model, optimizer, scheduler, batch)
                if step == SAVED_AT:
                    at_checkpoint[name] = {k: v.clone() for k, v in model.state_dict().items()}
            reference[name] = model.state_dict()
            with torch.no_grad():
                model.eval()
                evaluated = _evaluated(model_class)
                losses[name] = (sum(model(**batch, num_items_in_batch=1).loss for batch in evaluated)
                                / sum((batch["labels"] != -100).sum() for batch in evaluated)).item()
        deadline = time.monotonic() + 120
        # until both are done, one has failed (the other then waits in a collective) or the time is up
        while any(w.is_alive() for w in workers) and not any(w.exitcode for w in workers):
            assert time.monotonic() < deadline, "the FSDP2 workers timed out"
            time.sleep(0.02)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()
    errors = [path.read_text() for path in sorted(tmp_path.glob("error_*.txt"))]
    assert not errors and all(worker.exitcode == 0 for worker in workers), "\n".join(errors)

    for name, (model_class, config, _) in cases.items():
        trained = _consolidated(model_class, config, tmp_path / name / "trained")
        for key, value in reference[name].items():  # sharded steps = unsharded steps
            torch.testing.assert_close(trained.state_dict()[key], value, **_tolerance(key), msg=f"{name}: {key}")
        resumed = _consolidated(model_class, config, tmp_path / name / "resumed").state_dict()
        for key, value in trained.state_dict().items():  # a resumed sharded run = the uninterrupted one
            torch.testing.assert_close(resumed[key], value, rtol=1e-6, atol=1e-7, msg=f"{name}, resumed: {key}")

        # The loop's checkpoint of the sharded model: whole weights, tied ones once, loadable into a plain model
        plain = model_class(config)
        safetensors.torch.load_model(plain, tmp_path / name / "checkpoints" / f"step-{SAVED_AT}" / "model.safetensors")
        for key, value in at_checkpoint[name].items():
            torch.testing.assert_close(plain.state_dict()[key], value, **_tolerance(key), msg=f"{name}: {key}")

        # The validation loss of the sharded model: every batch scored once, on processes of unequal shares
        for rank in range(WORLD):
            assert json.loads((tmp_path / name / f"loss_{rank}.json").read_text()) == pytest.approx(losses[name],
                                                                                                    rel=1e-5)

        if model_class is VanillaTransformerForConditionalGeneration:  # each process's own beam search
            for rank in range(WORLD):
                expected = trained.eval().generate(**_prompts(rank), num_beams=2, max_new_tokens=2 + 2 * rank)
                assert json.loads((tmp_path / name / f"generated_{rank}.json").read_text()) == expected.tolist()

        # The scripts' final save, run on both processes: the whole weights as a normal Hub folder of our class
        final = model_class.from_pretrained(tmp_path / name / "final")
        assert json.loads((tmp_path / name / "final" / "config.json").read_text())["architectures"] == [
            model_class.__name__]
        for key, value in trained.state_dict().items():
            torch.testing.assert_close(final.state_dict()[key], value, rtol=0, atol=0, msg=f"{name}, final: {key}")
        if name == "seq2seq":  # checkpoint averaging of the sharded model: the mean of the two checkpoints' weights
            averaged = model_class.from_pretrained(tmp_path / name / "averaged" / "final").state_dict()
            first, last = (safetensors.torch.load_file(tmp_path / name / "checkpoints" / f"step-{step}" /
                                                       "model.safetensors") for step in (SAVED_AT, STEPS))
            for key, value in first.items():
                torch.testing.assert_close(averaged[key], (value + last[key]) / 2, rtol=0, atol=0, msg=key)

        # The sharded save, consolidated, as a normal Hub folder
        trained.save_pretrained(tmp_path / name / "hub")
        loaded = model_class.from_pretrained(tmp_path / name / "hub")
        for key, value in trained.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=f"{name}, Hub: {key}")


def test_evaluation_shares_give_every_process_as_many_batches_and_count_each_batch_once():
    """Each process scores every num_processes-th batch; the shorter shares are padded (with the first batch, not
    counted) to the longest, so that every process makes the same number of forward passes. The FSDP2 test above
    runs it on a sharded model."""
    for count, processes in ((5, 2), (6, 3), (7, 3), (2, 3), (0, 2)):
        items = list(range(count))
        shares = [evaluation_share(items, processes, index) for index in range(processes)]
        assert sorted(item for mine, _ in shares for item in mine) == items  # each once
        assert len({len(mine) + len(padding) for mine, padding in shares}) == 1  # as many forward passes
        assert all(padding == [0] * len(padding) for _, padding in shares)
    assert evaluation_share(list("abcde"), 2, 1) == (["b", "d"], ["a"])


def test_gradient_checkpointing_option_gives_the_same_loss_and_gradients_with_dropout(tmp_path,
                                                                                       tiny_transformer_config):
    """--gradient_checkpointing switches on the models' own activation checkpointing before accelerator.prepare:
    each layer is recomputed in the backward pass with the forward pass's RNG state, so that with dropout the loss
    and the gradients are those without it."""
    from accelerate import Accelerator

    batch = _batches(VanillaTransformerForConditionalGeneration)[0]
    results = {}
    for checkpointing in (False, True):
        args = LoopArguments(output_dir=str(tmp_path), max_steps=1, gradient_checkpointing=checkpointing)
        model = _new_model(VanillaTransformerForConditionalGeneration, tiny_transformer_config(dropout=0.1))
        optimizer, scheduler = _optimizer(model)
        model, optimizer, scheduler = prepare_for_training(Accelerator(cpu=True), args, model, optimizer, scheduler)
        calls = []
        model.model.encoder.layers[0].ffn.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)  # the dropout masks
        loss = model.train()(**batch).loss
        loss.backward()
        assert len(calls) == 1 + checkpointing, "recomputed in the backward pass with the option, only then"
        results[checkpointing] = loss.detach(), {name: p.grad for name, p in model.named_parameters()}
    (loss, gradients), (checkpointed_loss, checkpointed) = results[False], results[True]
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_the_engine_is_named_in_one_line():
    """make_accelerator logs it at the start (the launched runs show it too: test_accelerate.py, and above for two
    machines); FSDP and DeepSpeed need accelerators, so they are named here from stand-ins of accelerate's state."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    assert describe_engine(Accelerator(cpu=True)) == "engine: none (one process), 1 process on 1 machine, cpu, " \
                                                     "mixed precision no"

    def engine(kind, environ, **state):
        accelerator = SimpleNamespace(distributed_type=kind, num_processes=16, state=SimpleNamespace(**state),
                                      device=torch.device("cuda", 0), mixed_precision="bf16")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "environ", environ)
            return describe_engine(accelerator)

    assert engine(DistributedType.MULTI_GPU, {"LOCAL_WORLD_SIZE": "8"}) == (
        "engine: DDP (GPU), 16 processes on 2 machines, cuda, mixed precision bf16")
    assert engine(DistributedType.FSDP, {"LOCAL_WORLD_SIZE": "16"},
                  fsdp_plugin=SimpleNamespace(fsdp_version=2)).startswith("engine: FSDP2, 16 processes on 1 machine,")
    assert engine(DistributedType.DEEPSPEED, {}, deepspeed_plugin=SimpleNamespace(zero_stage=3)).startswith(
        "engine: DeepSpeed ZeRO-3, 16 processes on 1 machine,")


# -------------------------------------------------------------------------------------------- DeepSpeed ZeRO-3


def _leaves(value):
    """The items of nested lists, tuples and dicts (a torch function's arguments)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


class _ReadsOutsideTheirModule(TorchFunctionMode):
    """Records each parameter that a torch function reads while no module that owns it (registers it directly) is
    in its forward: what ZeRO-3 would find partitioned. Metadata that ZeRO-3 keeps (device, dtype) is allowed."""

    METADATA = {"device", "dtype", "requires_grad"}

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.owners, self.running, self.reads = {}, [], []
        for module in model.modules():
            for parameter in module.parameters(recurse=False):
                self.owners.setdefault(id(parameter), []).append(module)
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)
        self.names = {id(p): name for name, p in model.named_parameters()}

    def _enter(self, module, args) -> None:
        self.running.append(module)

    def _leave(self, module, args, output) -> None:
        self.running.remove(module)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        attribute = getattr(getattr(func, "__self__", None), "__name__", None)  # a property: Tensor.shape.__get__
        for value in _leaves((args, kwargs)):
            if (isinstance(value, torch.nn.Parameter) and attribute not in self.METADATA
                    and not any(owner in self.running for owner in self.owners[id(value)])):
                where = type(self.running[-1]).__name__ if self.running else "outside any module"
                self.reads.append(f"{self.names[id(value)]} read by {attribute or func.__name__} in {where}")
        return func(*args, **kwargs)


def test_no_forward_reads_a_parameter_outside_its_own_module(tiny_transformer_config, tiny_bert_config):
    """DeepSpeed ZeRO-3 partitions every parameter and gathers a module's own for that module's forward only (its
    documented assumption). Tied weights are read through their modules (embed_tokens, lm_head), so they are fine;
    `embed_token_types.weight[0]` or the MLM loss reading the projection's weight from the head were not."""
    seq2seq = VanillaTransformerForConditionalGeneration(tiny_transformer_config())
    with _ReadsOutsideTheirModule(seq2seq) as reads:
        seq2seq(input_ids=torch.randint(4, 99, (2, 7)), labels=torch.randint(4, 99, (2, 5))).loss.backward()
        seq2seq.eval()
        seq2seq.generate(input_ids=torch.randint(4, 99, (2, 7)), num_beams=2, max_new_tokens=3)
    assert reads.reads == []

    labels = torch.full((2, 9), -100)
    labels[:, ::3] = 7
    for sparse_prediction in (False, True):
        bert = VanillaBertForMaskedLM(tiny_bert_config(sparse_prediction=sparse_prediction))
        with _ReadsOutsideTheirModule(bert) as reads:
            bert(input_ids=torch.randint(4, 99, (2, 9)), labels=labels).loss.backward()
        assert reads.reads == []

    # the check sees such a read
    bert = VanillaBertForMaskedLM(tiny_bert_config())
    with _ReadsOutsideTheirModule(bert) as reads:
        bert.lm_head.decoder.weight.sum()
    assert reads.reads == ["bert.embeddings.embed_tokens.weight read by sum in outside any module"]


# ------------------------------------------------------------------------------------------ the config files


FSDP2_ONLY_KEYS = {"fsdp_version", "fsdp_reshard_after_forward"}


def test_accelerate_config_files_load_with_accelerates_own_loader():
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    configs = {path.stem: path for path in CONFIGS.glob("*.yaml")}
    assert configs.keys() == {"one_gpu", "ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3", "multi_node_ddp"}
    # unknown top-level keys raise here; the engines' keys become `accelerate launch` options (fsdp_config's and
    # deepspeed_config's by name), which must exist, or the launcher would ignore them
    loaded = {name: ClusterConfig.from_yaml_file(path) for name, path in configs.items()}
    options = vars(launch_command_parser().parse_args(["script.py"])).keys()
    for name, path in configs.items():
        text = path.read_text()
        assert text.startswith("#") and "accelerate launch --config_file" in text, f"{name}: no header"
        engine_keys = {**loaded[name].fsdp_config, **loaded[name].deepspeed_config}.keys()
        if name == "fsdp2" and "fsdp_version" not in options:
            # an accelerate from before FSDP2 (the lowest we declare, 1.3, is one; the file says so): only FSDP2's own
            # keys may be unknown to it
            engine_keys = engine_keys - FSDP2_ONLY_KEYS
        assert engine_keys <= options, f"{name}: {sorted(engine_keys - options)} are not accelerate options"

    assert loaded["one_gpu"].distributed_type == "NO" and loaded["one_gpu"].num_processes == 1
    assert loaded["ddp"].distributed_type == "MULTI_GPU" and loaded["ddp"].num_machines == 1
    node = loaded["multi_node_ddp"]
    assert node.distributed_type == "MULTI_GPU" and node.num_machines == 2 and node.main_process_ip
    fsdp = loaded["fsdp2"].fsdp_config
    assert loaded["fsdp2"].distributed_type == "FSDP" and loaded["fsdp2"].mixed_precision == "bf16"
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    # accelerate's activation checkpointing does not restore the RNG state: with dropout, the recomputed layers would
    # draw other masks than the forward pass. The file leaves it to the models' own (activation_checkpointing_enable)
    assert fsdp["fsdp_activation_checkpointing"] is False
    # the layer class the config wraps is what both model families declare
    layers = [fsdp["fsdp_transformer_layer_cls_to_wrap"]]
    assert layers == VanillaTransformerForConditionalGeneration._no_split_modules
    assert layers == VanillaBertForMaskedLM._no_split_modules
    for name, stage in (("deepspeed_zero2", 2), ("deepspeed_zero3", 3)):
        assert loaded[name].distributed_type == "DEEPSPEED"
        assert loaded[name].deepspeed_config["zero_stage"] == stage
    # ZeRO-3 saves whole weights only when told to gather them
    assert loaded["deepspeed_zero3"].deepspeed_config["zero3_save_16bit_model"] is True
