"""The layers BERT (Devlin et al. 2019) adds around the Transformer encoder stack (`layers.py`): its embeddings (learned
positions, segment embeddings, a LayerNorm on the sum), the [CLS] pooler and the masked-language-model head.
`modeling_vanilla_bert.py` puts them together.

Shapes: B batch, T sequence length, D hidden size, V vocabulary, N masked positions.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN

from .configuration_vanilla_bert import VanillaBertConfig
from .embeddings import PositionEmbedding
from .fast_dropout import Dropout
from .fast_loss import linear_cross_entropy


def check_segment_ids(token_type_ids: torch.Tensor, type_vocab_size: int) -> None:
    """A segment id without an embedding row: say so (a tokenizer made for another model, typically)."""
    if torch.compiler.is_compiling() or token_type_ids.numel() == 0:
        return
    low, high = (int(bound) for bound in torch.aminmax(token_type_ids))  # one device sync, not two
    if low < 0 or high >= type_vocab_size:
        raise ValueError(
            f"token_type_ids contains segment id {high if high >= type_vocab_size else low}, but the model has "
            f"type_vocab_size={type_vocab_size} (segments 0..{type_vocab_size - 1}); the tokenizer does not match "
            "this model (RoBERTa-style models have one segment)"
        )


class VanillaBertEmbeddings(nn.Module):
    """Token + position + segment embeddings, summed, then LayerNorm and dropout (BERT, section 3, figure 2)."""

    def __init__(self, config: VanillaBertConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.embed_positions = PositionEmbedding(
            config.max_position_embeddings, config.hidden_size, config.position_embedding_type
        )
        self.embed_token_types = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # BERT normalises the embedding sum (the Transformer paper scales by sqrt(d_model) instead)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T), segment A = 0, segment B = 1
        inputs_embeds: torch.Tensor | None = None,  # (B, T, D): token embeddings, positions not yet added
    ) -> torch.Tensor:
        if inputs_embeds is None:  # (the ids were checked by the model)
            inputs_embeds = self.embed_tokens(input_ids)
        if token_type_ids is None:  # all segment A: one row, added to every position
            # A lookup, not `embed_token_types.weight[0]`: a module's weights are read in its own forward only, where
            # DeepSpeed ZeRO-3 gathers them
            segment_a = torch.zeros((), dtype=torch.long, device=inputs_embeds.device)
            segments = self.embed_token_types(segment_a)  # (D,)
        else:
            check_segment_ids(token_type_ids, self.embed_token_types.num_embeddings)
            segments = self.embed_token_types(token_type_ids)  # (B, T, D)
        embeddings = inputs_embeds + segments + self.embed_positions(inputs_embeds.shape[1], dtype=inputs_embeds.dtype)
        return self.dropout(self.norm(embeddings))


class VanillaBertPooler(nn.Module):
    """The sequence vector: the final hidden state of the first token ([CLS]) through a dense layer and tanh."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))  # (B, D)


class VocabularyProjection(nn.Linear):
    """The projection onto the vocabulary: logits = x Wᵀ + b. Given `labels` as well, it returns (summed
    cross-entropy, logits), the two computed together in vocabulary chunks (`fast_loss.py`). That computation reads
    the weight, so it runs here, in this module's forward: a module's weights are read in its own forward only, where
    DeepSpeed ZeRO-3 gathers them."""

    def forward(self, hidden_states: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is None:
            return super().forward(hidden_states)  # (..., V)
        return linear_cross_entropy(hidden_states, self.weight, self.bias, labels)  # (), (N, V)


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense + activation + LayerNorm, then the projection onto the vocabulary, whose weight is the
    word embedding matrix (tied) and which has its own output bias."""

    def __init__(self, hidden_size: int, vocab_size: int, activation: str, layer_norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACT2FN[activation]
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.decoder = VocabularyProjection(hidden_size, vocab_size)  # BERT's name; weight tied to embed_tokens

    def transform(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.dense(hidden_states)))  # (..., D)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))  # (..., V)

    def loss_and_logits(self, hidden_states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed cross-entropy, logits) at (N, D) positions with (N,) labels, the vocabulary projection and the
        loss computed together in vocabulary chunks (`fast_loss.py`)."""
        return self.decoder(self.transform(hidden_states), labels)
