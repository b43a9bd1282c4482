"""torch.export of both families (what ONNX and ExecuTorch users start from): the forward passes, and the
encoder-decoder's generation step through transformers' own exportable wrappers (encoder, and decoder with a
static cache), each exported program giving the eager model's outputs, on inputs of another length than the example."""

import pytest
import torch
from torch.export import Dim

from vanilla_transformer.modeling import VanillaBertForMaskedLM, VanillaTransformerForConditionalGeneration


def batch(length: int, batch_size: int = 2):
    input_ids = torch.randint(3, 99, (batch_size, length))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, length - 2 :] = 0
    return input_ids, attention_mask


def test_bert_forward_exports_and_matches_eager(tiny_bert_config):
    model = VanillaBertForMaskedLM(tiny_bert_config()).eval()
    input_ids, attention_mask = batch(7)
    length = Dim("length", min=2, max=64)
    with torch.no_grad():
        program = torch.export.export(
            model, (), {"input_ids": input_ids, "attention_mask": attention_mask},
            dynamic_shapes={"input_ids": {1: length}, "attention_mask": {1: length}},
        )
        other_ids, other_mask = batch(11)  # another length than the example's
        expected = model(input_ids=other_ids, attention_mask=other_mask).logits
        logits = program.module()(input_ids=other_ids, attention_mask=other_mask).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_seq2seq_forward_exports_and_matches_eager(tiny_transformer_config):
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config()).eval()
    input_ids, attention_mask = batch(7)
    decoder_input_ids = torch.randint(3, 99, (2, 5))
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids,
              "use_cache": False}
    with torch.no_grad():
        program = torch.export.export(model, (), inputs)
        logits = program.module()(**inputs).logits
        expected = model(**inputs).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_generation_step_exports_through_transformers_executorch_wrappers(tiny_transformer_config):
    executorch = pytest.importorskip("transformers.integrations.executorch")
    model = VanillaTransformerForConditionalGeneration(tiny_transformer_config()).eval()
    model.generation_config.eos_token_id = None  # decode every step: the same work whatever the tokens
    exportable = executorch.Seq2SeqLMExportableModule(model, batch_size=1, max_hidden_seq_length=32, max_cache_length=16)
    start = model.config.decoder_start_token_id
    exportable.export(encoder_input_ids=torch.randint(3, 99, (1, 9)), decoder_input_ids=torch.tensor([[start]]))
    encoder, decoder = exportable.exported_encoder.module(), exportable.exported_decoder.module()

    source = torch.randint(3, 99, (1, 12))  # another source length than the example's
    expected = model.generate(input_ids=source, max_new_tokens=8, num_beams=1, return_dict_in_generate=True,
                              output_logits=True)
    with torch.no_grad():
        memory = encoder(source)
        torch.testing.assert_close(memory, model.get_encoder()(input_ids=source).last_hidden_state)
        ids = [start]
        for step in range(8):  # greedy decoding, one exported decoder call a token, the cache inside the program
            logits = decoder(torch.tensor([[ids[-1]]]), memory, torch.tensor([step]))
            torch.testing.assert_close(logits[0, -1], expected.logits[step][0], rtol=1e-4, atol=1e-4)
            ids.append(int(logits[0, -1].argmax()))
    assert ids == expected.sequences[0].tolist()
