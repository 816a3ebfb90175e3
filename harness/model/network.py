"""The multitask model: one shared encoder (harness/model/encoders.py), a variant's task-specific parts, a head per task.

Heads, losses and predictions follow the task's spec (harness.tasks): a classification task
gets num_classes logits and cross-entropy (one logit and a sigmoid with binary_logit), a
regression task one output and the squared error. Sentence pairs are encoded together by default
([CLS] a [SEP] b [SEP], the [CLS] state feeds the head). With pair_encoding="separate" each
sentence is encoded on its own and mean-pooled (u, v): cosine similarity for a pair regression
(scaled to the label range), a linear layer on [u, v, |u - v|] for a pair classification, the
way sentence-embedding checkpoints such as all-MiniLM-L6-v2 are trained to be used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.config import HEAD_INPUTS, PAIR_ENCODINGS
from harness.tasks import TaskSpec, get_task

# The encoder's checks and loading live in harness/model/encoders.py; importable from here as before.
from harness.model.encoders import (DEFAULT_MODEL, ModelError, check_model, head_dropout,  # noqa: F401
                                    load_encoder, resolve_model_path, takes_token_types)


class CosineHead(nn.Module):
    """A pair regression with separate encoding: cosine(u, v), scaled to the label range by the loss; no parameters."""

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(u, v, dim=-1)


class LinearHead(nn.Module):
    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        if v is not None:
            x = torch.cat([x, v, (x - v).abs()], dim=-1)
        return self.linear(self.dropout(x))


def make_head(spec: TaskSpec, hidden: int, pair_encoding: str, dropout: float) -> nn.Module:
    separate = spec.is_pair and pair_encoding == "separate"
    if spec.kind == "regression" and separate:
        return CosineHead()
    in_features = 3 * hidden if separate else hidden
    return LinearHead(in_features, spec.outputs, dropout)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class MultitaskModel(nn.Module):
    """The encoder, the variant's adapter and one head per task.

    head_input="cls" (default): a head reads the last layer's [CLS] state (after the variant's
    `top`). "pooler": it reads the pretrained pooler's tanh(W [CLS] + b), as the CS224N starter
    and the PALs code do; the encoder must then be loaded with its pooler.
    """

    def __init__(self, encoder: nn.Module, adapter: nn.Module, tasks: tuple[str, ...], pair_encoding: str = "joint",
                 head_input: str = "cls"):
        super().__init__()
        if pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding: {pair_encoding!r} is not one of {list(PAIR_ENCODINGS)}")
        if head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input: {head_input!r} is not one of {list(HEAD_INPUTS)}")
        if head_input == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ValueError("head_input: 'pooler' needs an encoder loaded with its pooler (load_encoder(pooler=True))")
        self.encoder = encoder
        self.variant = adapter
        self.tasks = tuple(tasks)
        self.pair_encoding = pair_encoding
        self.head_input = head_input
        hidden, dropout = encoder.config.hidden_size, head_dropout(encoder.config)
        self.token_types = takes_token_types(encoder)
        self.specs = {t: get_task(t) for t in self.tasks}
        self.heads = nn.ModuleDict({t: make_head(self.specs[t], hidden, pair_encoding, dropout) for t in self.tasks})
        adapter.attach(encoder)

    def _encode(self, task: str, input_ids, attention_mask, token_type_ids=None, pool: str = "cls"):
        self.variant.set_context(task, attention_mask)
        types = {"token_type_ids": token_type_ids} if self.token_types else {}  # none for ModernBERT
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **types).last_hidden_state
        expected = (*input_ids.shape, self.encoder.config.hidden_size)
        if tuple(hidden.shape) != expected:  # a hook of the variant's (attach) changed what a layer returns
            from variants import VariantError

            raise VariantError(f"variant {type(self.variant).__name__}: the encoder's output has shape "
                               f"{tuple(hidden.shape)} with its hooks (attach), expected {expected} (batch, tokens, "
                               "hidden): a hook must return its layer's output in the layer's shape")
        topped = self.variant.top(hidden)
        if not isinstance(topped, torch.Tensor) or topped.shape != hidden.shape:
            from variants import VariantError

            got = tuple(topped.shape) if isinstance(topped, torch.Tensor) else type(topped).__name__
            raise VariantError(f"variant {type(self.variant).__name__}: top() returned {got}, expected a tensor of "
                               f"the encoder's hidden states' shape {tuple(hidden.shape)} (batch, tokens, hidden)")
        hidden = topped
        if pool == "mean":
            return mean_pool(hidden, attention_mask)
        return self.encoder.pooler(hidden) if self.head_input == "pooler" else hidden[:, 0]

    def forward(self, task: str, input_ids, attention_mask, token_type_ids=None, input_ids_b=None,
                attention_mask_b=None, labels=None) -> torch.Tensor:
        """Raw outputs for a batch of one task: logits, or a similarity score."""
        if self.pair_encoding == "separate":
            u = self._encode(task, input_ids, attention_mask, pool="mean")
            if input_ids_b is None:
                return self.heads[task](u)
            v = self._encode(task, input_ids_b, attention_mask_b, pool="mean")
            out = self.heads[task](u, v)
        else:
            out = self.heads[task](self._encode(task, input_ids, attention_mask, token_type_ids))
        return out.squeeze(-1) if out.dim() > 1 and out.shape[-1] == 1 else out


def _cosine_scale(spec: TaskSpec) -> tuple[float, float]:
    low, high = spec.label_range
    return low, high - low


def _spec(task: str | TaskSpec) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else get_task(task)


def task_loss(task: str | TaskSpec, outputs: torch.Tensor, labels: torch.Tensor, pair_encoding: str) -> torch.Tensor:
    spec = _spec(task)
    outputs = outputs.float()  # the loss in fp32 under any precision
    if spec.kind == "classification":
        if spec.binary_logit:
            return F.binary_cross_entropy_with_logits(outputs, labels)
        return F.cross_entropy(outputs, labels.long())
    if spec.is_pair and pair_encoding == "separate":  # cosine in [-1, 1] against the label scaled to [0, 1]
        low, width = _cosine_scale(spec)
        return F.mse_loss(outputs, (labels - low) / width)
    return F.mse_loss(outputs, labels)


def predictions(task: str | TaskSpec, outputs: torch.Tensor, pair_encoding: str) -> torch.Tensor:
    """Outputs turned into the values scored on dev: class ids, or a value in the label's units."""
    spec = _spec(task)
    if spec.kind == "classification":
        return (outputs > 0).float() if spec.binary_logit else outputs.argmax(-1).float()
    if spec.is_pair and pair_encoding == "separate":
        low, width = _cosine_scale(spec)
        return low + outputs * width
    return outputs


def confidence(task: str | TaskSpec, outputs: torch.Tensor) -> torch.Tensor:
    """The model's score for its prediction: the predicted class's probability (classification),
    or the predicted value itself (regression)."""
    spec = _spec(task)
    outputs = outputs.float()
    if spec.kind == "regression":
        return outputs
    if spec.binary_logit:
        p = torch.sigmoid(outputs)
        return torch.where(outputs > 0, p, 1 - p)
    return outputs.softmax(-1).max(-1).values


def build_model(encoder, variant_name: str, variant_config, pair_encoding: str, head_input: str = "cls",
                freeze_encoder: bool = False, gradient_checkpointing: bool = False) -> MultitaskModel:
    """The multitask model; with `freeze_encoder` the encoder's own parameters do not train.

    With `gradient_checkpointing` each encoder layer, with the variant's parts hooked into it,
    keeps only its input and is recomputed in the backward pass (in train mode only). The
    variant's `top` is outside the encoder and keeps its activations.
    """
    from variants import get_variant

    variant = get_variant(variant_name)
    adapter = variant.adapter_class(variant_config, encoder.config, variant_config.tasks)
    if freeze_encoder:
        encoder.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant: needs no input that requires grad (a frozen encoder) and suits DDP's
        # unused parameters. The adapter's context gives a recomputed layer its own pass's hook state.
        enable = getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable
        enable({"use_reentrant": False, "context_fn": adapter.checkpoint_context})
        encoder.config.use_cache = False  # an encoder caches nothing; spares transformers' warning that it cannot
    return MultitaskModel(encoder, adapter, variant_config.tasks, pair_encoding, head_input)


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile `model` in place (`nn.Module.compile`): its forward, the variant's hooks and
    parts included, runs compiled, while the module stays the same object with the same parameter
    and state-dict names (no `_orig_mod.` wrapper), so the optimizer's per-task groups, the
    parameter counts, checkpoints and saved models are those of the uncompiled model.

    `dynamic=True`: batches are padded to their longest example, so the sequence length (and an
    evaluation's last batch size) varies from step to step; compiled for symbolic sizes from the
    first call, one graph serves every length instead of a recompile per length. The task name
    (a string argument) is specialised: one graph per task, and one more per task for evaluation
    (eval mode, no gradients)."""
    import torch._dynamo

    # Each (task, train/eval) pair is a graph of its own; the default cap of 8 per code object
    # would fall back to eager for a fifth task's evaluation.
    tasks = len(getattr(model, "tasks", ())) or 1
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * tasks)
    model.compile(dynamic=True, backend=backend)
    return model
