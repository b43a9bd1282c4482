"""Fast path: the vocabulary projection and its cross-entropy computed together, a chunk of the vocabulary at a time.

Plain computation it equals: `logits = linear(hidden, weight, bias)` and
`cross_entropy(logits, labels, reduction="sum")`: the same loss, logits and gradients. Proven by
`tests/test_fast_paths.py::test_chunked_linear_cross_entropy_equals_linear_then_cross_entropy` (and, through the
MLM head, `test_bert_sparse_prediction_with_skip_padding_equals_dense_padded_loss`).

Entered from one place: `VocabularyProjection.forward` with labels (BERT's sparse MLM prediction,
`bert_layers.py`).
"""

import torch


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(softmax(h_i Wᵀ + b), y_i) and the logits h Wᵀ + b, the vocabulary taken `chunk` rows of W at a time.

    Each piece of logits is made, reduced into the log-sum-exp, and in the backward pass turned into its softmax
    gradient and multiplied out, while it is in the CPU's cache. No log-softmax tensor is kept; on CPU the (N, V)
    forward matrix product alone is about twice as fast in pieces.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk):  # (N, D), (V, D), (V,), (N,) in [0, V), int
        ctx.set_materialize_grads(False)  # unused logits get no gradient, rather than a tensor of zeros
        pieces = [torch.addmm(bias[start : start + chunk], hidden, weight[start : start + chunk].t())
                  for start in range(0, weight.shape[0], chunk)]  # (N, chunk) each
        lse = torch.logsumexp(torch.stack([piece.float().logsumexp(dim=1) for piece in pieces], dim=1), dim=1)
        logits = torch.cat(pieces, dim=1)  # (N, V)
        target = logits.gather(1, labels[:, None]).squeeze(1).float()  # (N,)
        ctx.save_for_backward(hidden, weight, lse, labels)
        ctx.pieces, ctx.chunk = pieces, chunk
        return (lse - target).sum(), logits

    @staticmethod
    def backward(ctx, grad_loss, grad_logits):
        hidden, weight, lse, labels = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.empty_like(weight)
        grad_bias = torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        for piece, start in zip(ctx.pieces, range(0, weight.shape[0], ctx.chunk)):
            stop = start + piece.shape[1]
            if grad_loss is not None:  # d loss / d logits = softmax - onehot(label)
                grad = torch.sub(piece, lse[:, None]).exp_().mul_(grad_loss)
                here = (labels >= start) & (labels < stop)
                grad[rows[here], labels[here] - start] -= grad_loss
            else:
                grad = torch.zeros_like(piece)
            if grad_logits is not None:
                grad += grad_logits[:, start:stop]
            grad = grad.to(piece.dtype)
            grad_hidden.addmm_(grad, weight[start:stop])
            torch.mm(grad.t(), hidden, out=grad_weight[start:stop])
            torch.sum(grad, dim=0, out=grad_bias[start:stop])
        return grad_hidden, grad_weight, grad_bias, None, None


def linear_cross_entropy(hidden, weight, bias, labels, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of `labels` under linear(hidden, weight, bias), the logits), in vocabulary chunks of
    512 rows on CPU (a (N, 512) piece fits in cache), 8192 elsewhere."""
    chunk = chunk or (512 if hidden.is_cpu else 8192)
    return ChunkedLinearCrossEntropy.apply(hidden, weight, bias, labels, chunk)
