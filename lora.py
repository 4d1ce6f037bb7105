"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for llama.py.

A frozen linear layer W gains a trainable low-rank update:

    y = x W^T + (alpha / r) * dropout(x) A^T B^T        A: (r, in), B: (out, r)

A starts Kaiming-uniform and B at zero (as loralib and peft do), so a fresh adapter changes
nothing. SASRecLLM, like TALLRec, puts r=8, alpha=16, dropout 0.05 on q_proj and v_proj.

`LoRALinear` subclasses nn.Linear and keeps the same `weight` Parameter, so the base checkpoint's names survive
injection. Adapters are saved in peft's format (adapter_model.safetensors + adapter_config.json, keys
`base_model.model.<module>.lora_A.weight`), so an adapter trained here loads in peft and one trained with peft (e.g.
TALLRec's) loads here; tests/test_lora.py checks both. Merging W + scale * B A into the base weight is explicit
(merge/unmerge), never a side effect of train() or eval().
"""
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tools import limits, runs, sources

PEFT_PREFIX = "base_model.model."  # peft's PeftModel(LoraModel(model)) prefix in saved keys
# adapter_config.json keys that plain LoRA reads (or that carry no numbers); every other key must be off
PLAIN_LORA_KEYS = {"peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "inference_mode",
                   "base_model_name_or_path", "revision", "init_lora_weights", "peft_version", "auto_mapping",
                   "megatron_core", "qalora_group_size"}


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        # nn.Module.__init__ only: nn.Linear.__init__ would allocate a second weight. The base
        # Parameters are reused as they are, so no memory is copied and names stay `weight`/`bias`.
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        base.requires_grad_(False)  # W (and its bias) frozen
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        dev = base.weight.device  # the adapter lives there, in fp32 (trainable parameters are fp32)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=dev, dtype=torch.float32)   # (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=dev, dtype=torch.float32)  # (out, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's default, as peft
        nn.init.zeros_(self.lora_B.weight)  # a fresh adapter changes nothing

    def delta_weight(self):
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, in)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        # The adapter's weights stay fp32 (they train); it computes in the activations' dtype,
        # as autocast would, so bf16 activations are never copied to fp32 and back.
        A, B = self.lora_A.weight.to(x.dtype), self.lora_B.weight.to(x.dtype)  # (r, in), (out, r)
        return y + F.linear(F.linear(self.lora_dropout(x), A), B) * self.scaling

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):  # exact in fp32 up to rounding; in bf16 merge + unmerge loses the low bits of W
        if self.merged:
            self.weight -= self.delta_weight().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, r={self.r}, alpha={self.alpha}, merged={self.merged}"


def lora_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject(model, targets=("q_proj", "v_proj"), r=8, alpha=16, dropout=0.05):
    """Replace every nn.Linear whose last name is in `targets` by a LoRALinear and freeze all but lora_A / lora_B."""
    model.requires_grad_(False)
    found = [(module, name, child) for module in model.modules() for name, child in module.named_children()
             if name in targets and type(child) is nn.Linear]
    if not found:
        raise ValueError(f"no nn.Linear named any of {targets} in the model")
    if r > (most := min(min(c.in_features, c.out_features) for *_, c in found)):  # (and its (B*T, r) activations)
        raise ValueError(f"LoRA rank r={r} is more than the {most} a layer's B A can reach; expected r <= {most}")
    # A (r, in) and B (out, r) in fp32, with their gradients and AdamW's two moments: refused if they cannot fit
    limits.fits(16 * r * sum(c.in_features + c.out_features for *_, c in found),
                f"LoRA of rank r={r} on {len(found)} layers", found[0][2].weight.device)
    for module, name, child in found:
        # Keep the replaced layer's train/eval mode: a new Dropout would start in train mode.
        setattr(module, name, LoRALinear(child, r, alpha, dropout).train(child.training))
    return model


def merge(model):
    for m in lora_layers(model).values():
        m.merge()
    return model


def unmerge(model):
    for m in lora_layers(model).values():
        m.unmerge()
    return model


def lora_state_dict(model) -> dict:
    """Only the adapter tensors, under the model's own names (`...q_proj.lora_A.weight`)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def adapter_config(model) -> dict:
    """adapter_config.json as peft writes it for plain LoRA (the fields that matter to peft)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers; call inject() first")
    first = next(iter(layers.values()))
    if any((m.r, m.alpha) != (first.r, first.alpha) for m in layers.values()):
        raise ValueError("LoRA layers with different r/alpha cannot be written as one peft config")
    drop = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": first.r, "lora_alpha": first.alpha,
            "lora_dropout": drop, "target_modules": sorted({n.rsplit(".", 1)[-1] for n in layers}), "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
            "layers_pattern": None, "base_model_name_or_path": None, "inference_mode": True}


def save_adapter(model, out_dir):
    """adapter_model.safetensors + adapter_config.json in peft's format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {PEFT_PREFIX + k: v.detach().contiguous() for k, v in lora_state_dict(model).items()}
    save_file(state, out_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(adapter_config(model), indent=2) + "\n")
    return out_dir


def load_adapter(model, adapter_dir):
    """Load a peft LoRA adapter (ours or peft's, .safetensors or the older .bin). Injects LoRA with
    the adapter's r / alpha / dropout / targets first if the model has none. Strict: every adapter
    key must exist in the model with the same shape, and every LoRA layer must be covered."""
    adapter_dir = Path(adapter_dir)
    cfg = sources.read_json(adapter_dir / "adapter_config.json", "peft's adapter_config.json", obj=True)  # (bounded)
    if cfg.get("peft_type") != "LORA":  # (peft refuses a config without it)
        raise ValueError(f"{adapter_dir}: peft_type {cfg.get('peft_type')!r:.40}; lora.py implements LORA only")
    # Any other feature peft writes (DoRA, rsLoRA, aLoRA's invocation tokens, rank patterns, ...) would
    # change the numbers; it is refused unless it is off, never read as plain LoRA.
    off = lambda k: {"layers_to_transform": (None, []),  # (0: layer 0)
                     "bias": ("none",)}.get(k, (None, False, 0, "none", {}, []))  # (peft refuses bias false)
    unknown = sorted(k for k, v in cfg.items() if k not in PLAIN_LORA_KEYS and not any(v is o or v == o for o in off(k)))
    init = cfg.get("init_lora_weights", True)  # pissa and olora move part of W into the adapter: W is not ours
    if unknown or not (init is True or init is False or init in ("gaussian", "eva")):
        raise ValueError(f"{adapter_dir}: adapter uses {unknown or f'init_lora_weights {init!r:.40}'}, which lora.py "
                         "does not implement")
    weights = adapter_dir / "adapter_model.safetensors"
    # peft's older adapter_model.bin has no header to read shapes from: its (small) tensors are read first
    bin_path, state = weights.with_suffix(".bin"), None
    if not weights.exists():
        # read whole, what it will allocate against free memory first; weights_only: no pickle runs code
        limits.fits_torch_zip(sources.regular_file(bin_path, "peft's adapter_model.bin"))
        try:
            state = torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as e:  # (missing, truncated, hostile: one line)
            raise ValueError(f"{bin_path}: cannot read it ({type(e).__name__}: {runs.first_line(e)[:200]})") from None
    limits.check_adapter(adapter_dir, cfg, state)  # r, alpha, dropout, targets, shapes: before inject allocates
    if not lora_layers(model):
        targets = cfg["target_modules"]
        if isinstance(targets, str):
            raise ValueError(f"{adapter_dir}: target_modules as a regex ({targets!r}) is not supported")
        try:
            inject(model, tuple(targets), cfg["r"], cfg["lora_alpha"], cfg.get("lora_dropout", 0.0))
        except ValueError as e:  # (no such layer, r past a layer's width: said of the file that asks for it)
            raise ValueError(f"{adapter_dir}/adapter_config.json: {e}") from None
    elif any((m.r, m.alpha) != (cfg["r"], cfg["lora_alpha"]) for m in lora_layers(model).values()):
        raise ValueError(f"{adapter_dir}: r {cfg['r']}, lora_alpha {cfg['lora_alpha']}, but the model's LoRA has "
                         "others (its scaling would stay): load it into a model without LoRA")
    if state is None:
        try:
            state = load_file(weights)
        except SafetensorError as e:  # a truncated file: "incomplete metadata"
            raise ValueError(f"{weights}: cannot read it ({e})") from None
    if any(m.merged for m in lora_layers(model).values()):
        raise ValueError("unmerge() the model before loading another adapter into it")
    ours, loaded = lora_state_dict(model), {}
    for key, tensor in state.items():  # (peft may keep the adapter name, "default", in a key: tolerated)
        if not key.startswith(PEFT_PREFIX):  # (peft loads none of such a key, and scores the base model)
            raise ValueError(f"{adapter_dir}: adapter key {key!r} lacks peft's prefix {PEFT_PREFIX!r}")
        name = key.removeprefix(PEFT_PREFIX).replace(".lora_A.default.", ".lora_A.")
        name = name.replace(".lora_B.default.", ".lora_B.")
        if name not in ours:
            raise ValueError(f"{adapter_dir}: adapter key {key!r} matches no LoRA layer in the model")
        if name in loaded:  # two spellings of one weight: neither may silently win
            raise ValueError(f"{adapter_dir}: adapter key {key!r} names {name!r} a second time")
        if tensor.shape != ours[name].shape:
            raise ValueError(f"{adapter_dir}: {key!r} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(ours[name].shape)}")
        limits.check_finite(adapter_dir, key, tensor.to(ours[name].dtype))  # (as loaded: 1e300 in F64 is inf)
        loaded[name] = tensor
    if missing := sorted(set(ours) - set(loaded)):
        raise ValueError(f"{adapter_dir}: adapter lacks {missing[0]!r} ({len(missing)} missing)")
    model.load_state_dict(loaded, strict=False)  # strict=False: the base weights are not in it
    return model
