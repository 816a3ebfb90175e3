"""Checks every registered variant, in-tree or installed: a new variant is tested with no new test."""
import copy

import pytest
import torch
from transformers import BertConfig, BertModel

from harness.model.network import build_model, task_loss
from harness.model.params import count_parameters, grouped_parameters
from harness.tasks import get_task
from variants import VariantError, get_variant, list_variants, make_config

VARIANTS = [v.name for v in list_variants()]
H, L, A = 32, 2, 2


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=H, num_hidden_layers=L, num_attention_heads=A,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config, add_pooling_layer=False).eval()


def build(encoder, name, pair_encoding="joint", **options):
    return build_model(copy.deepcopy(encoder), name, make_config(name, options), pair_encoding)


def batch_for(task, seed=0, size=4, length=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (size, length), generator=g)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, -3:] = 0  # some padding
    spec = get_task(task)
    if spec.kind == "classification":
        labels = torch.randint(0, spec.num_classes, (size,), generator=g).float()
    else:
        labels = torch.rand(size, generator=g) * 5
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}
    if spec.is_pair:
        batch["input_ids_b"], batch["attention_mask_b"] = ids.flip(1), mask.flip(1)
    return batch


def forward(model, task, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if model.pair_encoding == "joint":
        inputs.pop("input_ids_b", None), inputs.pop("attention_mask_b", None)
    return model(task, **inputs)


def test_the_nine_study_configurations_are_registered():
    assert set(VARIANTS) >= {"single-task", "multitask", "embert", "pals-top", "pals-parallel",
                             "pals-parallel-weighted", "pals-top-parallel-same", "pals-top-parallel-different",
                             "combined"}


def test_only_a_task_adapter_with_a_dataclass_config_can_be_registered():
    from dataclasses import dataclass

    from variants import TaskAdapter, register_variant

    @dataclass
    class Options:
        size: int = 1

    with pytest.raises(TypeError, match="config must be a dataclass"):
        register_variant("not-registered", config=dict)
    with pytest.raises(TypeError, match="'not-registered': .* is not a TaskAdapter subclass"):
        register_variant("not-registered", config=Options)(type("Plain", (), {}))
    with pytest.raises(TypeError, match="is not a TaskAdapter subclass"):
        register_variant("not-registered", config=Options)(lambda encoder: encoder)
    assert "not-registered" not in VARIANTS and issubclass(TaskAdapter, torch.nn.Module)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("pair_encoding", ["joint", "separate"])
def test_forward_for_every_task(encoder, name, pair_encoding):
    model = build(encoder, name, pair_encoding)
    for task in model.tasks:
        out = forward(model, task, batch_for(task))
        expected = (4, get_task(task).outputs) if get_task(task).outputs > 1 else (4,)
        assert out.shape == expected and torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_backward_on_one_task_leaves_other_tasks_parameters_without_gradient(encoder, name):
    model = build(encoder, name)
    tasks = model.tasks
    for task in tasks:
        model.zero_grad(set_to_none=True)
        batch = batch_for(task)
        task_loss(task, forward(model, task, batch), batch["labels"], "joint").backward()
        others = [(pname, p) for pname, p, _, owner in grouped_parameters(model) if owner not in (None, task)]
        assert others, "the check sees no other task's parameters"
        for pname, p in others:
            assert p.grad is None or not p.grad.any(), f"{pname} got a gradient from {task}"


@pytest.mark.parametrize("name", VARIANTS)
def test_every_parameter_of_the_trained_task_moves_within_two_steps(encoder, name):
    """What a variant must satisfy: two optimizer steps on a task move every one of that task's
    parameters. Two, not one: an adapter whose up-projection starts at zero (LoRA, the README's
    lowrank example) gives its down-projection a zero gradient on the first step only. Adam, not
    SGD: any gradient that is not exactly zero moves a parameter by about lr (LoRA's A on the
    query gets a gradient of the order of the product of two small ones in step 2, which SGD's
    update leaves below float32's resolution of A)."""
    model = build(encoder, name).train()
    for task in model.tasks:
        own = {n: p.detach().clone() for n, p, _, owner in grouped_parameters(model) if owner == task}
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        batch = batch_for(task)
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            task_loss(task, forward(model, task, batch), batch["labels"], "joint").backward()
            optimizer.step()
        still = [n for n, p in model.named_parameters() if n in own and torch.equal(p, own[n])]
        assert not still, f"{name}: two steps on {task} left {still} where they were"


def expected_task_specific(name, config):
    """Closed-form count of one task's specific parameters, from the config alone."""
    P = getattr(config, "pal_size", 0)
    pal = (H * P + P) + 3 * (P * P + P) + (P * H + H)  # V_E, g's Q/K/V, V_D
    embert = 3 * L * H
    top_norm = 2 * H if getattr(config, "top_mode", "") == "bert-layer" else 0  # the top block's LayerNorm
    scale = L if getattr(config, "layer_scale", False) else 0
    return {
        "single-task": 0, "multitask": 0, "embert": embert, "pals-top": pal + top_norm, "pals-parallel": L * pal,
        "pals-parallel-weighted": L * pal + scale, "pals-top-parallel-same": pal + top_norm + scale,
        "pals-top-parallel-different": 2 * pal + top_norm + scale, "combined": embert + pal + top_norm + scale,
        # LoRA: A (r x in) and B (out x r) at each site of each layer; all sites here are H x H.
        "lora": L * len(getattr(config, "sites", ())) * 2 * getattr(config, "rank", 0) * H,
        # (IA)^3: a vector of the key's and value's outputs (H each), of the ffn-out's input (64).
        "ia3": L * (H + H + 64),
    }.get(name)


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts(encoder, name):
    model = build(encoder, name)
    config = make_config(name)
    counts = count_parameters(model)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert counts.total == sum(unique.values()) == counts.trainable
    assert counts.encoder == sum(p.numel() for p in encoder.parameters())
    assert len(set(counts.task_specific.values())) == 1, "tasks of one variant differ in cost"
    expected = expected_task_specific(name, config)
    if expected is not None:
        assert counts.task_specific[model.tasks[0]] == expected
        assert counts.shared_added == 0
    heads = {"sst": H * 5 + 5, "cfimdb": H * 2 + 2, "quora": H + 1, "sts": H + 1}
    assert counts.heads == {t: heads[t] for t in model.tasks}
    assert counts.ratio == pytest.approx(counts.total / counts.encoder)


def test_projection_sharing_counts_like_the_pals_code(encoder):
    P = 204
    model = build(encoder, "pals-parallel", parallel_sharing="projections")
    expected = (H * P + P) + L * 3 * (P * P + P) + (P * H + H)
    assert count_parameters(model).task_specific["sst"] == expected


@pytest.mark.parametrize("name", VARIANTS)
def test_identity_at_initialisation_where_the_method_intends_it(encoder, name):
    variant = get_variant(name)
    if variant.adapter_class.identity_options is None:
        pytest.skip(f"{name} declares it does not start from the pretrained function")
    model = build(encoder, name, **variant.adapter_class.identity_options).eval()
    batch = batch_for("sst")
    with torch.no_grad():
        reference = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        for task in model.tasks:
            model.variant.set_context(task, batch["attention_mask"])
            hidden = model.encoder(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]).last_hidden_state
            assert torch.equal(model.variant.top(hidden), reference)


@pytest.mark.parametrize("name", VARIANTS)
def test_default_initialisation_changes_the_function_when_it_adds_parameters(encoder, name):
    """Unless its defaults are meant to be the identity (identity_options == {}, as LoRA-style adapters)."""
    model = build(encoder, name).eval()
    identity_by_default = get_variant(name).adapter_class.identity_options == {}
    if count_parameters(model).task_specific[model.tasks[0]] == 0 or identity_by_default:
        return
    batch = batch_for("sst")
    with torch.no_grad():
        reference = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        task = model.tasks[0]
        model.variant.set_context(task, batch["attention_mask"])
        hidden = model.variant.top(model.encoder(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"]).last_hidden_state)
    assert not torch.allclose(hidden, reference)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_with_falling_loss(encoder, name):
    torch.manual_seed(0)
    model = build(encoder, name).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    task = model.tasks[0]
    batch = batch_for(task, size=8)
    losses = []
    for _ in range(25):
        loss = task_loss(task, forward(model, task, batch), batch["labels"], "joint")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(VariantError, match=r"unknown variant 'pals'; known variants: .*pals-top"):
        get_variant("pals")


@pytest.mark.parametrize("options,message", [
    ({"pal_size": "wide"}, "option 'pal_size': expected an integer, got 'wide'"),
    ({"pal_size": "0"}, "pal_size: expected a positive number"),
    ({"pal_size": "205"}, "not divisible by pal_heads=6"),
    ({"parallel_sharing": "some"}, "parallel_sharing: 'some' is not one of"),
    ({"top_shares_parallel": "maybe"}, "expected true or false, got 'maybe'"),
    ({"colour": "red"}, "has no option 'colour'"),
    ({"tasks": "sst,imdb"}, r"tasks: unknown task 'imdb'; known tasks: .*sst, cfimdb, quora, sts"),
])
def test_invalid_variant_options_name_the_field(options, message):
    with pytest.raises(VariantError, match=message):
        make_config("pals-parallel", options)


def test_options_are_converted_to_their_field_types():
    config = make_config("pals-parallel-weighted", {"pal_size": "96", "scale_init": "0.5", "tasks": "sst,sts"})
    assert (config.pal_size, config.scale_init, config.tasks) == (96, 0.5, ("sst", "sts"))


@pytest.mark.parametrize("name", VARIANTS)
def test_the_encoder_keeps_pytorchs_fused_attention(encoder, name):
    model = build(encoder, name).eval()
    assert model.encoder.config._attn_implementation == "sdpa"
    batch = batch_for("sst")
    with torch.no_grad(), torch.profiler.profile() as profile:
        forward(model, model.tasks[0], batch)
    calls = sum(e.count for e in profile.key_averages() if e.key == "aten::scaled_dot_product_attention")
    assert calls >= L  # one per encoder layer (PALs add their own)


@pytest.mark.parametrize("name", VARIANTS)
def test_a_frozen_encoder_leaves_the_optimizer_only_the_variants_parts_and_heads(encoder, name):
    from harness.training.optim import make_optimizer

    model = build_model(copy.deepcopy(encoder), name, make_config(name), "joint", freeze_encoder=True)
    counts = count_parameters(model)
    assert counts.trainable == counts.total - counts.encoder
    optimizer = make_optimizer(model, "adamw", 1e-3, 0.0)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(group == "encoder" for _, p, group, _ in grouped_parameters(model) if id(p) in held)
    task = model.tasks[0]
    batch = batch_for(task)
    task_loss(task, forward(model, task, batch), batch["labels"], "joint").backward()
    optimizer.step()  # every variant still trains with the encoder frozen
    assert all(p.grad is None for _, p, group, _ in grouped_parameters(model) if group == "encoder")


@pytest.mark.parametrize("mode", ["bert-layer", "pals-code", "replace", "residual"])
def test_each_top_pal_mode_trains_and_counts_as_its_source_builds_it(encoder, mode):
    P, blocks = 24, 2
    model = build(encoder, "pals-top", top_mode=mode, pal_size=P, pal_heads=2, top_heads=4, top_blocks=blocks).train()
    pal = (H * P + P) + 3 * (P * P + P) + (P * H + H)
    block = 3 * (P * P + P) + (P * P + P) + 2 * P  # Q, K, V; output projection; LayerNorm
    expected = {"bert-layer": pal + 2 * H, "pals-code": (H * P + P) + blocks * block + (P * H + H),
                "replace": pal, "residual": pal}[mode]
    assert count_parameters(model).task_specific["sst"] == expected
    own = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("variant.per_task.sst.")}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = batch_for("sst")
    for _ in range(2):
        optimizer.zero_grad()
        task_loss("sst", forward(model, "sst", batch), batch["labels"], "joint").backward()
        optimizer.step()
    assert all(not torch.equal(p, own[n]) for n, p in model.named_parameters() if n in own)


def test_the_bert_layer_top_lets_the_pretrained_representation_through_at_initialisation(encoder):
    """LayerNorm(h + PAL(h)): at initialisation the [CLS] state keeps its direction (the PAL's
    output is small), where the earlier default, the PAL's output alone, loses it."""
    batch = batch_for("sst")
    cosines = {}
    for mode in ("bert-layer", "replace"):
        model = build(encoder, "pals-top", top_mode=mode).eval()
        with torch.no_grad():
            model.variant.set_context("sst", batch["attention_mask"])
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            hidden = model.encoder(**inputs).last_hidden_state
            top = model.variant.top(hidden)
        cosines[mode] = torch.nn.functional.cosine_similarity(top[:, 0], hidden[:, 0]).min().item()
    assert cosines["bert-layer"] > 0.99 and cosines["replace"] < 0.5, cosines



def gradients_and_recomputed(model, task, pair_encoding):
    """One backward pass: the gradients, which variant modules (and encoder layers' attention
    blocks) ran inside the encoder in the forward pass, and which ran again in the backward pass."""
    phase, calls = {"now": None}, {"encoder": [], "backward": []}

    def record(name):
        def hook(module, args, output):
            if phase["now"]:
                calls[phase["now"]].append(name)
        return hook

    watched = [(f"variant.{n}", m) for n, m in model.variant.named_modules() if n]
    watched += [(f"layer.{i}.attention", layer.attention) for i, layer in enumerate(model.encoder.encoder.layer)]
    handles = [model.encoder.register_forward_pre_hook(lambda m, a: phase.update(now="encoder")),
               model.encoder.register_forward_hook(lambda m, a, o: phase.update(now=None))]
    handles += [module.register_forward_hook(record(name)) for name, module in watched]
    model.zero_grad(set_to_none=True)
    batch = batch_for(task)
    torch.manual_seed(1)  # the same dropout masks with and without checkpointing
    loss = task_loss(task, forward(model, task, batch), batch["labels"], pair_encoding)
    phase["now"] = "backward"
    loss.backward()
    for handle in handles:
        handle.remove()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, calls


def assert_checkpointing_changes_nothing_but_memory(encoder, name, pair_encoding, freeze_encoder=False):
    models = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        models[checkpointing] = build_model(copy.deepcopy(encoder), name, make_config(name), pair_encoding,
                                            freeze_encoder=freeze_encoder, gradient_checkpointing=checkpointing)
    for task in models[False].tasks:
        plain, plain_calls = gradients_and_recomputed(models[False].train(), task, pair_encoding)
        checkpointed, calls = gradients_and_recomputed(models[True].train(), task, pair_encoding)
        assert plain_calls["backward"] == [], "without checkpointing nothing is recomputed"
        assert sorted(calls["backward"]) == sorted(calls["encoder"]), f"{name}/{task}: not all recomputed"
        passes = 2 if pair_encoding == "separate" and get_task(task).is_pair else 1
        assert sum(n.startswith("layer.") for n in calls["backward"]) == L * passes
        assert checkpointed.keys() == plain.keys()
        for pname, grad in plain.items():
            torch.testing.assert_close(checkpointed[pname], grad, rtol=1e-5, atol=1e-7,
                                       msg=lambda m, pname=pname: f"{name}/{task} {pname}: {m}")


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("pair_encoding", ["joint", "separate"])
def test_gradient_checkpointing_recomputes_the_layers_and_gives_the_same_gradients(encoder, name, pair_encoding):
    """In train mode with dropout: each encoder layer, and every variant part hooked into it, runs
    again in the backward pass, and the gradients are those without checkpointing. Separate pair
    encoding runs the encoder twice before the backward pass, with different padding masks."""
    assert_checkpointing_changes_nothing_but_memory(encoder, name, pair_encoding)


def test_gradient_checkpointing_with_a_frozen_encoder(encoder):
    """Nothing entering a frozen encoder requires grad (what reentrant checkpointing would need)."""
    assert_checkpointing_changes_nothing_but_memory(encoder, "combined", "joint", freeze_encoder=True)


@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_a_peft_variant_runs_each_task_through_its_own_adapter_without_touching_requires_grad(encoder, name):
    """peft's own set_adapter would set requires_grad on the active adapter only; DDP and DeepSpeed
    fix the trainable set when they wrap the model, so selecting a task must not change it."""
    model = build_model(copy.deepcopy(encoder), name, make_config(name), "joint", freeze_encoder=True).eval()
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(trainable[n] == (group != "encoder") for n, _, group, _ in grouped_parameters(model))
    batch = batch_for("sst")
    with torch.no_grad():
        before = {t: forward(model, t, batch) for t in model.tasks}
        for pname, p, _, owner in grouped_parameters(model):  # move sst's adapter away from the identity
            if owner == "sst" and not pname.startswith("heads."):
                p.add_(torch.randn_like(p))
        after = {t: forward(model, t, batch) for t in model.tasks}
    assert not torch.allclose(after["sst"], before["sst"])
    for task in model.tasks:
        if task != "sst":
            assert torch.equal(after[task], before[task]), f"{name}: {task}'s pass used sst's adapter"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable


@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_every_adapted_layer_of_a_peft_variant_switches_to_the_task_of_the_pass(encoder, name):
    """Each task's adapter moved in one adapted layer at a time: that task's output changes and no
    other's, in every layer, the last one included (a layer left on the adapter of another task
    would change the other task's output, or not its own)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = build_model(copy.deepcopy(encoder), name, make_config(name), "joint").eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == L * len(make_config(name).sites)
    owned = {(n, owner): p for n, p, _, owner in grouped_parameters(model) if owner}
    batch = batch_for("sst")
    with torch.no_grad():
        before = {t: forward(model, t, batch) for t in model.tasks}
        for layer in layers:
            for task in model.tasks:
                moved = [p for (n, owner), p in owned.items() if owner == task and n.startswith(layer + ".")]
                assert moved, f"{layer}: no adapter of {task}"
                saved = [p.clone() for p in moved]
                for p in moved:
                    p.add_(torch.randn_like(p))
                after = {t: forward(model, t, batch) for t in model.tasks}
                for p, value in zip(moved, saved):
                    p.copy_(value)
                assert not torch.allclose(after[task], before[task]), f"{layer}: {task}'s pass ignored its adapter"
                others = [t for t in model.tasks if t != task and not torch.equal(after[t], before[t])]
                assert not others, f"{layer}: the pass of {others} used {task}'s adapter"


def test_peft_sites_are_options_and_ia3_scales_what_the_paper_scales(encoder):
    lora = build(encoder, "lora", sites="query,key,ffn-in", rank=4)
    per_layer = 2 * 4 * H + 2 * 4 * H + (4 * H + 64 * 4)  # ffn-in: A is 4 x H, B is 64 x 4
    assert count_parameters(lora).task_specific["sts"] == L * per_layer
    ia3 = build(encoder, "ia3")
    scaled = {n.removeprefix("encoder.").rsplit(".ia3_l.", 1)[0]: p.numel()
              for n, p, _, owner in grouped_parameters(ia3) if owner == "sst" and ".ia3_l." in n}
    # l_k and l_v scale the key's and value's outputs, l_ff the feed-forward block's inner activation
    # (the input of its second Linear); the attention's output projection is left alone.
    assert scaled == {f"encoder.layer.{i}.{site}": size for i in range(L)
                      for site, size in (("attention.self.key", H), ("attention.self.value", H), ("output.dense", 64))}
    with pytest.raises(VariantError, match=r"sites: \['keys'\] not among the sites"):
        make_config("ia3", {"sites": "keys"})
    with pytest.raises(VariantError, match=r"sites: \['value', 'value'\] names a site twice"):
        make_config("lora", {"sites": "value,value"})
    with pytest.raises(VariantError, match="rank: expected a positive number"):
        make_config("lora", {"rank": 0})
