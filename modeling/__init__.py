"""vanilla_transformer.modeling: the code that ships to the Hub. Importing it registers every config, model
and pipeline with the transformers Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_vanilla_bert import VanillaBertConfig
from .configuration_vanilla_transformer import VanillaTransformerConfig
from .modeling_vanilla_bert import (
    VanillaBertForMaskedLM,
    VanillaBertForSequenceClassification,
    VanillaBertForTokenClassification,
    VanillaBertModel,
    VanillaBertPreTrainedModel,
)
from .modeling_vanilla_transformer import (
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
    VanillaTransformerPreTrainedModel,
)

AutoConfig.register("vanilla_transformer", VanillaTransformerConfig, exist_ok=True)
AutoModel.register(VanillaTransformerConfig, VanillaTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, exist_ok=True)

AutoConfig.register("vanilla_bert", VanillaBertConfig, exist_ok=True)
AutoModel.register(VanillaBertConfig, VanillaBertModel, exist_ok=True)
AutoModelForMaskedLM.register(VanillaBertConfig, VanillaBertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(VanillaBertConfig, VanillaBertForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(VanillaBertConfig, VanillaBertForTokenClassification, exist_ok=True)

__all__ = [
    "VanillaTransformerConfig",
    "VanillaTransformerPreTrainedModel",
    "VanillaTransformerModel",
    "VanillaTransformerForConditionalGeneration",
    "VanillaBertConfig",
    "VanillaBertPreTrainedModel",
    "VanillaBertModel",
    "VanillaBertForMaskedLM",
    "VanillaBertForSequenceClassification",
    "VanillaBertForTokenClassification",
]
