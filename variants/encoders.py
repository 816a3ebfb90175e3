"""Which encoders the hook-based variants (PALs, EmBERT) can reach into, and where.

PALs and EmBERT hook into BERT-style layers: a list of layers `encoder.layer[i]`, each with
`attention.self.query/key/value` (the attention's projections, EmBERT's task vectors are added
to their outputs) and `output.LayerNorm` (the layer's final LayerNorm, before which a parallel
PAL's output is added). The model types below were checked to have exactly that structure
(tests/test_variant_architectures.py builds a tiny random one of each and looks).
"""
from __future__ import annotations

# transformers model_types whose layers have BERT's structure (checked in transformers 5.25).
BERT_STYLE = ("bert", "roberta", "xlm-roberta", "electra", "camembert")

BERT_STYLE_NEEDS = ("hooks into BERT-style layers (encoder.layer[i].attention.self.query/key/value, "
                    "encoder.layer[i].output.LayerNorm)")
