"""Where in each encoder architecture the peft variants' sites are: one regex of module names per
site (peft full-matches a string target against each module's name, relative to the encoder).

Sites: query, key, value (the attention's projections; `qkv` where one fused Linear computes all
three, as in ModernBERT), attention-output (its output projection), ffn-in and ffn-out (the
feed-forward block's two Linear layers). An architecture has the sites its table names; a site it
lacks (ModernBERT has no separate query) is refused naming the architecture and its sites. Each
table was checked on a tiny random model of each architecture (tests/test_variant_architectures.py:
every site matches one Linear per layer).
"""
from __future__ import annotations

from variants.encoders import BERT_STYLE


def _layer_sites(layer: str, names: dict[str, str]) -> dict[str, str]:
    """Site -> regex, from the layers' prefix (a regex ending in the layer's index) and each site's path in a layer."""
    return {site: rf"{layer}\.{path}" for site, path in names.items()}


BERT_SITES = _layer_sites(r"encoder\.layer\.\d+", {
    "query": r"attention\.self\.query", "key": r"attention\.self\.key", "value": r"attention\.self\.value",
    "attention-output": r"attention\.output\.dense", "ffn-in": r"intermediate\.dense", "ffn-out": r"output\.dense"})

SITES_BY_ARCHITECTURE: dict[str, dict[str, str]] = {
    **{model_type: BERT_SITES for model_type in BERT_STYLE},
    "deberta-v2": _layer_sites(r"encoder\.layer\.\d+", {
        "query": r"attention\.self\.query_proj", "key": r"attention\.self\.key_proj",
        "value": r"attention\.self\.value_proj", "attention-output": r"attention\.output\.dense",
        "ffn-in": r"intermediate\.dense", "ffn-out": r"output\.dense"}),
    "distilbert": _layer_sites(r"transformer\.layer\.\d+", {
        "query": r"attention\.q_lin", "key": r"attention\.k_lin", "value": r"attention\.v_lin",
        "attention-output": r"attention\.out_lin", "ffn-in": r"ffn\.lin1", "ffn-out": r"ffn\.lin2"}),
    "modernbert": _layer_sites(r"layers\.\d+", {
        "qkv": r"attn\.Wqkv", "attention-output": r"attn\.Wo", "ffn-in": r"mlp\.Wi", "ffn-out": r"mlp\.Wo"}),
    "mpnet": _layer_sites(r"encoder\.layer\.\d+", {
        "query": r"attention\.attn\.q", "key": r"attention\.attn\.k", "value": r"attention\.attn\.v",
        "attention-output": r"attention\.attn\.o", "ffn-in": r"intermediate\.dense", "ffn-out": r"output\.dense"}),
}
SITE_NAMES = tuple(dict.fromkeys(site for sites in SITES_BY_ARCHITECTURE.values() for site in sites))
FEEDFORWARD_SITES = ("attention-output", "ffn-out")  # (IA)^3 scales these layers' inputs


def check_sites(config, name: str = "sites") -> None:
    """A config's site names: known (in some architecture's table), at least one, none twice."""
    sites = getattr(config, name)
    if not sites:
        raise ValueError(f"{name}: at least one site is needed (one of {list(SITE_NAMES)})")
    unknown = [s for s in sites if s not in SITE_NAMES]
    if unknown:
        raise ValueError(f"{name}: {unknown} not among the sites {list(SITE_NAMES)}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"{name}: {list(sites)} names a site twice")


def site_pattern(sites: tuple[str, ...], model_type: str = "bert") -> str:
    """One regex for `sites` in an encoder of `model_type`; a clear error for a site it lacks."""
    table = SITES_BY_ARCHITECTURE.get(model_type)
    if table is None:
        raise ValueError(f"sites: no site table for model_type {model_type!r} (there are tables for "
                         f"{', '.join(SITES_BY_ARCHITECTURE)}); name the modules with the option target_modules")
    missing = [s for s in sites if s not in table]
    if missing:
        raise ValueError(f"sites: {missing} not in a {model_type} encoder; its sites: {', '.join(table)}")
    return "(?:" + "|".join(table[s] for s in sites) + ")"
