"""Every variant on every encoder architecture it declares (TaskAdapter.architectures), built from
tiny random transformers configs (nothing is downloaded), and the refusal of the others.

The adapters are attached to the bare encoder and accounted through a minimal holder (encoder,
variant, no heads), so these tests check the variants alone, whatever the harness's model does.
"""
import copy
import re

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from harness.model.params import count_parameters, grouped_parameters
from variants import VariantError, get_variant, list_variants, make_config
from variants.encoders import BERT_STYLE, bert_style_layers
from variants.peft_sites import SITES_BY_ARCHITECTURE
from variants.registry import check_architecture, supports

H, L, TASKS = 32, 2, "sst,sts"
SMALL = dict(vocab_size=99, hidden_size=H, num_hidden_layers=L, num_attention_heads=2, intermediate_size=37,
             max_position_embeddings=64)
# Each architecture's extra config fields (a tiny model that builds); every model_type of BERT_STYLE is here.
ARCHITECTURES = {
    "bert": {}, "camembert": {}, "data2vec-text": {}, "electra": {"embedding_size": 16}, "ernie": {},
    "roberta": {}, "xlm-roberta": {}, "rembert": {"input_embedding_size": 16, "output_embedding_size": 16},
    "roformer": {}, "yoso": {},
    "deberta-v2": {}, "distilbert": {"dim": H, "n_layers": L, "n_heads": 2, "hidden_dim": 37},
    "modernbert": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2},
    "mpnet": {},
}
# Options a variant needs on an architecture: ModernBERT computes Q, K and V in one Linear.
OPTIONS = {("modernbert", "lora"): {"sites": "qkv"}, ("modernbert", "ia3"): {"sites": "qkv,ffn-out"}}
# The in-tree variants (an installed plugin's, such as tests/plugin_example's lowrank, declares its own).
IN_TREE = [v for v in list_variants() if v.source.startswith("variants.")]
HOOKING = [v.name for v in IN_TREE if v.adapter_class.architectures is not None]


def tiny_encoder(model_type: str, **extra) -> nn.Module:
    torch.manual_seed(0)
    fields = {**SMALL, **ARCHITECTURES.get(model_type, {}), **extra}
    if model_type == "distilbert":  # its own field names (dim, n_layers, ...), given above
        fields = {k: v for k, v in fields.items() if k not in ("hidden_size", "num_hidden_layers",
                                                               "num_attention_heads", "intermediate_size")}
    return AutoModel.from_config(AutoConfig.for_model(model_type, **fields)).eval()


class Holder(nn.Module):
    """What the accounting reads of a model: encoder, variant, heads (none here) and tasks."""

    def __init__(self, encoder, adapter):
        super().__init__()
        self.encoder, self.variant, self.heads, self.tasks = encoder, adapter, nn.ModuleDict(), adapter.tasks


def attached(encoder, name, model_type, **options):
    config = make_config(name, {"tasks": TASKS, **OPTIONS.get((model_type, name), {}), **options})
    encoder = copy.deepcopy(encoder)
    adapter = get_variant(name).adapter_class(config, encoder.config, config.tasks)
    adapter.attach(encoder)
    return Holder(encoder, adapter)


def hidden_states(model, task, ids, mask):
    model.variant.set_context(task, mask)
    return model.variant.top(model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 90, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # some padding
    return ids, mask


COMBINATIONS = [(t, v.name) for t in ARCHITECTURES for v in IN_TREE if supports(v, t)]


@pytest.fixture(scope="module")
def encoders():
    return {model_type: tiny_encoder(model_type) for model_type in ARCHITECTURES}


def test_every_hooking_variant_covers_the_bert_style_architectures_and_they_are_all_tested():
    assert set(BERT_STYLE) <= set(ARCHITECTURES)
    assert {"pals-parallel", "embert", "combined"} <= set(HOOKING)
    for name in HOOKING:
        assert set(get_variant(name).adapter_class.architectures) == set(BERT_STYLE)


@pytest.mark.parametrize("model_type", BERT_STYLE)
def test_a_bert_style_architecture_has_the_layers_the_hooks_need(encoders, model_type):
    """Found from the module tree, one per layer, post-LN: the layer's output is its final LayerNorm's."""
    encoder = encoders[model_type]
    layers = bert_style_layers(encoder, "test")
    assert len(layers) == L
    seen = {}
    for i, layer in enumerate(layers):
        layer.output.LayerNorm.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("norm", i), out))
        layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(("layer", i), out[0]
                                                                            if isinstance(out, tuple) else out))
    with torch.no_grad():
        encoder(input_ids=inputs()[0])
    for i in range(L):
        assert torch.equal(seen[("norm", i)], seen[("layer", i)]), f"{model_type} layer {i}: not post-LN"


@pytest.mark.parametrize("model_type,name", COMBINATIONS)
def test_a_variant_builds_runs_and_starts_from_the_encoder_on_each_architecture_it_supports(encoders, model_type,
                                                                                           name):
    encoder = encoders[model_type]
    ids, mask = inputs()
    identity = get_variant(name).adapter_class.identity_options
    if identity is not None:
        model = attached(encoder, name, model_type, **identity).eval()
        with torch.no_grad():
            reference = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            for task in model.tasks:
                assert torch.equal(hidden_states(model, task, ids, mask), reference), f"{task}: not the identity"
    model = attached(encoder, name, model_type).train()
    task, other = model.tasks
    hidden_states(model, task, ids, mask).pow(2).mean().backward()
    owned = [(n, p, owner) for n, p, _, owner in grouped_parameters(model) if owner]
    assert not [n for n, p, owner in owned if owner == other and p.grad is not None and p.grad.any()]
    counts = count_parameters(model)
    assert counts.encoder == sum(p.numel() for p in encoder.parameters()), "an added parameter counted as the encoder's"
    assert counts.shared_added == 0 and len(set(counts.task_specific.values())) == 1
    for n, p, owner in owned:  # every row of the task's parts gets a gradient (LoRA's A not yet: B starts at 0)
        if owner == task and ".lora_A." not in n:
            assert p.grad is not None and p.grad.any(-1).all(), f"{n}: no gradient (in some row)"


@pytest.mark.parametrize("model_type", [t for t in ARCHITECTURES if t not in BERT_STYLE])
@pytest.mark.parametrize("name", HOOKING)
def test_a_hooking_variant_refuses_an_encoder_without_bert_style_layers(encoders, model_type, name):
    message = (rf"variant '{name}' hooks into BERT-style layers \(encoder\.layer\[i\]\.attention\.self\.query.*\); "
               rf"model_type '{model_type}' has none\. Variants that support {model_type}: (.*)")
    with pytest.raises(VariantError, match=message) as refused:
        check_architecture(name, model_type)
    assert isinstance(refused.value, ValueError)
    supported = re.search(message, str(refused.value)).group(1).split(", ")
    assert {"ia3", "lora", "multitask", "single-task", "pals-top"} <= set(supported)
    assert not set(HOOKING) & set(supported)
    with pytest.raises(ValueError, match=rf"model_type '{model_type}'\) has none of the 32 hidden size"):
        attached(encoders[model_type], name, model_type)  # past the pre-flight check, attach refuses too


@pytest.mark.parametrize("model_type,why", [("megatron-bert", "pre-LN"), ("roberta-prelayernorm", "pre-LN"),
                                            ("mobilebert", "bottleneck")])
def test_look_alikes_with_another_layer_are_refused_by_the_structure(model_type, why):
    """Same module names, another layer: no final LayerNorm (pre-LN) or one of another width."""
    encoder = tiny_encoder(model_type, embedding_size=H, true_hidden_size=H, intra_bottleneck_size=16)
    assert model_type not in BERT_STYLE
    with pytest.raises(ValueError, match="has none of the 32 hidden size, expected one list of its 2 layers"):
        bert_style_layers(encoder, "pals-parallel")


def test_a_top_pal_runs_on_any_encoder_but_parallel_ones_need_bert_style_layers(encoders):
    model = attached(encoders["deberta-v2"], "pals-top", "deberta-v2")
    assert count_parameters(model).task_specific["sst"] > 0
    with pytest.raises(ValueError, match=r"variant 'PALsTop' hooks into BERT-style layers .* DistilBertModel"):
        attached(encoders["distilbert"], "pals-top", "distilbert", parallel=True)


def test_a_variant_for_any_encoder_accepts_any_model_type():
    for name in ("multitask", "single-task", "lora", "ia3", "pals-top"):
        assert check_architecture(name, "deberta-v2") is None
    assert check_architecture("pals-parallel", "bert") is None
    with pytest.raises(VariantError, match="unknown variant 'pals'"):
        check_architecture("pals", "bert")


# (in, out) features of each site's Linear: I the intermediate size (ModernBERT's ffn-in is gated: 2 I).
I = SMALL["intermediate_size"]
SHAPES = {"query": {(H, H)}, "key": {(H, H)}, "value": {(H, H)}, "qkv": {(H, 3 * H)}, "attention-output": {(H, H)},
          "ffn-in": {(H, I), (H, 2 * I)}, "ffn-out": {(I, H)}}


@pytest.mark.parametrize("model_type", [t for t in ARCHITECTURES if t in SITES_BY_ARCHITECTURE])
def test_each_peft_site_is_one_linear_per_layer_of_its_shape(encoders, model_type):
    names = dict(encoders[model_type].named_modules())
    seen = set()
    for site, pattern in SITES_BY_ARCHITECTURE[model_type].items():
        found = [n for n in names if re.fullmatch(pattern, n)]
        assert len(found) == L and all(isinstance(names[n], nn.Linear) for n in found), (site, found)
        assert len({re.search(r"\.(\d+)\.", n).group(1) for n in found}) == L, f"{site}: not one per layer"
        shapes = {(names[n].in_features, names[n].out_features) for n in found}
        assert shapes <= SHAPES[site], f"{model_type} {site}: {found} are {shapes}"
        assert not seen & set(found), f"{site}: {found} is another site's too"
        seen |= set(found)


@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_peft_adapters_on_each_architecture_are_found_and_owned_by_their_task(encoders, name):
    for model_type in SITES_BY_ARCHITECTURE.keys() & ARCHITECTURES.keys():
        model = attached(encoders[model_type], name, model_type)
        sites = make_config(name, {"tasks": TASKS, **OPTIONS.get((model_type, name), {})}).sites
        owned = [(n, owner) for n, _, group, owner in grouped_parameters(model) if group == "task_specific"]
        per_task = {t: [n for n, owner in owned if owner == t] for t in model.tasks}
        per_parameter = {"lora": 2, "ia3": 1}[name]  # LoRA's A and B; (IA)^3's vector
        assert all(len(found) == L * len(sites) * per_parameter for found in per_task.values()), (model_type, per_task)


def test_a_site_an_architecture_lacks_is_refused_naming_it(encoders):
    with pytest.raises(ValueError, match=r"LoRA on the ModernBertModel: sites: \['query', 'value'\] not in a "
                                         r"modernbert encoder; its sites: qkv, attention-output, ffn-in, ffn-out"):
        attached(encoders["modernbert"], "lora", "modernbert", sites="query,value")


def test_target_modules_adapt_an_architecture_without_a_site_table():
    encoder = tiny_encoder("albert", embedding_size=16)
    with pytest.raises(ValueError, match=r"no site table for model_type 'albert' .*option target_modules"):
        attached(encoder, "lora", "albert")
    target = r"encoder\.albert_layer_groups\.0\.albert_layers\.0\.attention\.(query|value)"
    model = attached(encoder, "lora", "albert", target_modules=target)
    assert count_parameters(model).task_specific["sst"] == 2 * 2 * 8 * H  # A and B of rank 8, two modules
    with pytest.raises(ValueError, match=r"IA3, target_modules 'attention\\.qq' on the AlbertModel "
                                         r"\(model_type 'albert'\): Target modules attention\\.qq not found"):
        attached(encoder, "ia3", "albert", target_modules=r"attention\.qq")
    with pytest.raises(VariantError, match=r"target_modules: '\(' is not a regular expression"):
        make_config("lora", {"target_modules": "("})
    with pytest.raises(VariantError, match=r"target_modules: replaces sites, so it is not given with sites \['key'\]"):
        make_config("ia3", {"target_modules": "attention", "sites": "key"})


def test_the_installed_plugin_example_declares_the_encoders_it_hooks():
    """docs/writing-a-variant.md's `lowrank` (registered by the test session) reaches into the layers:
    it declares BERT-style encoders, so any other is refused before a model is built."""
    assert check_architecture("lowrank", "roberta") is None
    with pytest.raises(VariantError, match=r"variant 'lowrank' hooks into BERT-style layers.*'deberta-v2'"):
        check_architecture("lowrank", "deberta-v2")


def test_peft_sites_an_encoder_lacks_are_refused_before_a_model_is_built():
    """LoRA's default sites (query, value) do not exist in ModernBERT (one fused Wqkv): the pre-flight
    check (check_architecture with the variant's config) says so and names the encoder's sites."""
    with pytest.raises(VariantError, match=r"variant 'lora' on a modernbert encoder: sites: \['query', 'value'\] "
                                           r"not in a modernbert encoder; its sites: qkv, attention-output"):
        check_architecture("lora", "modernbert", make_config("lora", {}))
    assert check_architecture("lora", "modernbert", make_config("lora", {"sites": "qkv"})) is None
    assert check_architecture("lora", "roberta", make_config("lora", {})) is None
