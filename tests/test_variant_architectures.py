"""Every variant on every encoder architecture it declares (TaskAdapter.architectures), built from
tiny random transformers configs (nothing is downloaded), and the refusal of the others."""
import pytest

from variants import VariantError
from variants.registry import check_architecture


@pytest.mark.parametrize("name", ["pals-parallel", "pals-top", "embert", "combined"])
def test_a_hooking_variant_refuses_an_encoder_without_bert_style_layers(name):
    message = (rf"variant '{name}' hooks into BERT-style layers \(encoder\.layer\[i\]\.attention\.self\.query.*\); "
               r"model_type 'deberta-v2' has none\. Variants that support deberta-v2: .*multitask, single-task")
    with pytest.raises(VariantError, match=message) as refused:
        check_architecture(name, "deberta-v2")
    assert isinstance(refused.value, ValueError)
    supported = refused.value.args[0].rsplit(": ", 1)[1].split(", ")
    assert not {"pals-parallel", "embert", "combined"} & set(supported)


def test_a_variant_for_any_encoder_accepts_any_model_type():
    assert check_architecture("multitask", "deberta-v2") is None
    assert check_architecture("pals-parallel", "bert") is None


def test_an_unknown_variant_is_named():
    with pytest.raises(VariantError, match="unknown variant 'pals'"):
        check_architecture("pals", "bert")
