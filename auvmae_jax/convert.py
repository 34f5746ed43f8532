"""Import PyTorch VideoMAE weights: official VideoMAE/V2 `.pth`, HuggingFace `transformers`, MARLIN.

`convert(source, output)` reads the raw tensors (SPEC §5: no library's renaming on
load is relied on), infers the architecture, maps every known name onto the param
tree of `models.VideoMAE` (or of its `Encoder` alone), checks the shapes against
`jax.eval_shape` of that model's init, and writes an orbax checkpoint plus a
`config.json` in the layout of a pre-training workdir, so that
`--config.init_from=DIR`, `auvmae features --checkpoint=DIR` and friends read it.

Layouts (after stripping `module.`/`model.`/`state_dict` wrappers):
- official VideoMAE / V2: `[encoder.]patch_embed.proj`, `[encoder.]blocks.N.attn.qkv`
  + `q_bias`/`v_bias`, `mlp.fc1/fc2`, `[encoder.]norm`; pre-training adds
  `encoder_to_decoder`, `mask_token`, `decoder.blocks.N`, `decoder.norm`, `decoder.head`;
- `transformers`: `[videomae.]embeddings.patch_embeddings.projection`,
  `encoder.layer.N.attention.attention.{query,key,value}` (q/v bias as
  `q_bias`/`v_bias` up to 4.x, `query.bias`/`value.bias` in 5.x), `layernorm`,
  `decoder.decoder_layers.N`, plus `config.json`;
- MARLIN: `encoder.patch_embedding.projection`, `mlp.layers.{0,1}.linear`,
  `pos_embedding.emb` (its fixed table, checked), `enc_dec_proj`, `decoder.mask_token`,
  LayerScale `gamma_1/2` (folded into the branch's last linear layer), and a
  reconstruction head whose outputs are ordered `(c, t, h, w)` (permuted to ours,
  `(t, h, w, c)`); it feeds pixels in [0, 1] without ImageNet normalisation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from typing import Any

import numpy as np
from etils import epath

from auvmae_jax import paths
from auvmae_jax.errors import UserError

log = logging.getLogger("auvmae")

LAYOUTS = ("official", "hf", "marlin")
_PATCH_KEYS = {
    "official": "patch_embed.proj.weight",
    "hf": "embeddings.patch_embeddings.projection.weight",
    "marlin": "patch_embedding.projection.weight",
}
_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}  # ViT-Ti/S/B/L/H/g


# ---------------------------------------------------------------------------- reading files


def read_checkpoint(source: str, trust_pickle: bool = False) -> tuple[dict[str, np.ndarray], dict, str]:
    """`(state dict of float32 arrays, HF config or {}, weights file)` of a file or HF directory."""
    source = os.path.abspath(os.path.expanduser(source))
    hf_config: dict = {}
    if os.path.isdir(source):
        cfg_path = os.path.join(source, "config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                hf_config = json.load(f)
        for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
            if os.path.exists(os.path.join(source, name)):
                weights = os.path.join(source, name)
                break
        else:
            raise UserError(f"{source}: no model.safetensors or pytorch_model.bin in the directory")
    elif os.path.exists(source):
        weights = source
    else:
        raise UserError(f"{source}: no such file")
    if weights.endswith(".index.json"):
        with open(weights) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict = {}
        for shard in shards:
            state.update(_read_safetensors(os.path.join(os.path.dirname(weights), shard)))
    elif weights.endswith(".safetensors"):
        state = _read_safetensors(weights)
    else:
        state = _read_pickle(weights, trust_pickle)
    return state, hf_config, weights


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}
    except (OSError, ValueError, TypeError) as e:
        if "bf16" in str(e).lower() or "bfloat16" in str(e).lower():
            return _read_safetensors_torch(path)
        raise UserError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    except Exception as e:  # safetensors raises its own SafetensorError for corrupt headers
        raise UserError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None


def _read_safetensors_torch(path: str) -> dict[str, np.ndarray]:
    torch = _import_torch(path)
    from safetensors.torch import load_file

    return {k: v.to(torch.float32).numpy() for k, v in load_file(path).items()}


def _import_torch(path: str):
    try:
        import torch
    except ImportError:
        raise UserError(f"{path} is a PyTorch pickle: reading it needs torch "
                        "(pip install torch --index-url https://download.pytorch.org/whl/cpu)") from None
    return torch


def _read_pickle(path: str, trust_pickle: bool) -> dict[str, np.ndarray]:
    """`torch.load(weights_only=True)`, allowing the `argparse.Namespace` of official `args` only."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise UserError(f"{path}: not a readable PyTorch checkpoint (neither a zip archive nor a pickle)")
    torch = _import_torch(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = " ".join(str(e).split())
        found = re.search(r"(Unsupported global: GLOBAL [\w.]+|[\w.]+ was not an allowed global)", text)
        if not trust_pickle:
            if found:
                raise UserError(f"{path}: the pickle holds more than tensors ({found.group(0)}); if you "
                                "trust its origin, pass --trust-pickle to unpickle it fully") from None
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({_short(text)})") from None
        log.warning("%s: loading with full unpickling (--trust-pickle)", path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({_short(str(e2))})") from None
    state = _unwrap(obj)
    if state is None:
        raise UserError(f"{path}: found no state dict of tensors (looked at the top level and under "
                        "'model', 'module', 'state_dict')")
    return {k: v.detach().to(torch.float32).cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _short(text: str) -> str:
    """The first sentence of an error, on one line."""
    text = " ".join(text.split())
    return text.split(". ")[0][:200]


def _unwrap(obj: Any) -> dict | None:
    """The dict of tensors at the top of a checkpoint or under `model`/`module`/`state_dict`."""
    if not isinstance(obj, dict):
        return None
    if any(hasattr(v, "detach") for v in obj.values()) and any(k.endswith("weight") for k in obj):
        return obj
    for key in ("model", "module", "state_dict", "model_state", "encoder"):
        inner = _unwrap(obj.get(key))
        if inner is not None:
            return inner
    return None


# ---------------------------------------------------------------------------- layouts


def detect_layout(state: dict[str, np.ndarray]) -> tuple[str, str]:
    """`(layout, prefix)`: the prefix is what precedes the patch embedding's weight name."""
    for layout in ("hf", "marlin", "official"):  # hf's name contains no official one, marlin's neither
        suffix = _PATCH_KEYS[layout]
        for k in state:
            if k.endswith(suffix) and (k == suffix or k[: -len(suffix)].endswith(".")):
                return layout, k[: -len(suffix)]
    raise UserError("no VideoMAE patch embedding found (looked for "
                    + ", ".join(_PATCH_KEYS.values()) + "); keys start with "
                    + ", ".join(sorted({k.split('.')[0] for k in state})[:8]))


class _Names:
    """Source names of one block and of the model's other tensors, per layout."""

    def __init__(self, layout: str, prefix: str):
        self.layout = layout
        self.enc = prefix  # e.g. '', 'encoder.', 'module.encoder.', 'videomae.'
        root = prefix
        for tail in ("videomae.", "encoder."):
            if root.endswith(tail):
                root = root[: -len(tail)]
                break
        self.root = root

    def block(self, i: int, decoder: bool) -> dict[str, str]:
        if self.layout == "hf":
            p = f"{self.root}decoder.decoder_layers.{i}." if decoder else f"{self.enc}encoder.layer.{i}."
            a = p + "attention.attention."
            return dict(norm1=p + "layernorm_before.", norm2=p + "layernorm_after.",
                        q=a + "query.", k=a + "key.", v=a + "value.",
                        q_bias=a + "q_bias", v_bias=a + "v_bias", proj=p + "attention.output.dense.",
                        fc1=p + "intermediate.dense.", fc2=p + "output.dense.")
        p = f"{self.root}decoder.blocks.{i}." if decoder else f"{self.enc}blocks.{i}."
        marlin = self.layout == "marlin"
        mlp = ("mlp.layers.0.linear.", "mlp.layers.1.linear.") if marlin else ("mlp.fc1.", "mlp.fc2.")
        return dict(norm1=p + "norm1.", norm2=p + "norm2.", qkv=p + "attn.qkv.",
                    q_bias=p + "attn.q_bias", v_bias=p + "attn.v_bias", proj=p + "attn.proj.",
                    fc1=p + mlp[0], fc2=p + mlp[1], gamma1=p + "gamma_1", gamma2=p + "gamma_2")

    def patch(self) -> str:
        return self.enc + _PATCH_KEYS[self.layout][: -len("weight")]

    def final_norm(self) -> str:
        return self.enc + ("layernorm." if self.layout == "hf" else "norm.")

    def enc_to_dec(self) -> str:
        return self.root + ("enc_dec_proj.weight" if self.layout == "marlin" else "encoder_to_decoder.weight")

    def mask_token(self) -> str:
        return self.root + ("decoder.mask_token" if self.layout == "marlin" else "mask_token")

    def dec_norm(self) -> str:
        return self.root + "decoder.norm."

    def dec_head(self) -> str:
        return self.root + "decoder.head."

    def count_blocks(self, state: dict, decoder: bool) -> int:
        n = 0
        while self.block(n, decoder)["norm1"] + "weight" in state:
            n += 1
        return n


# ---------------------------------------------------------------------------- mapping


def _take(state: dict, used: set, name: str, required: bool = True) -> np.ndarray | None:
    if name not in state:
        if required:
            raise UserError(f"checkpoint lacks {name!r}")
        return None
    used.add(name)
    return state[name]


def _norm(state, used, p: str) -> dict:
    return {"scale": _take(state, used, p + "weight"), "bias": _take(state, used, p + "bias")}


def _dense(state, used, p: str, bias: bool = True, gamma: np.ndarray | None = None) -> dict:
    w = _take(state, used, p + "weight").T  # torch Linear is (out, in)
    out = {"kernel": w}
    if bias:
        b = _take(state, used, p + "bias", required=False)
        out["bias"] = np.zeros(w.shape[1], np.float32) if b is None else b
    if gamma is not None:  # LayerScale: gamma * (x W + b) == x (W gamma) + b gamma
        out = {k: v * gamma for k, v in out.items()}
    return out


def _block(state, used, names: dict, width: int, heads: int, layout: str) -> dict:
    if width % heads:
        raise UserError(f"{heads} attention heads do not divide the width {width} (--heads, --dec_heads)")
    dh = width // heads
    if layout == "hf":
        ws = [_take(state, used, names[x] + "weight").T for x in ("q", "k", "v")]
        qkv = np.stack(ws, axis=1)  # [D, 3, D]
        q_bias = _take(state, used, names["q"] + "bias", required=False)
        if q_bias is None:
            q_bias = _take(state, used, names["q_bias"], required=False)
        v_bias = _take(state, used, names["v"] + "bias", required=False)
        if v_bias is None:
            v_bias = _take(state, used, names["v_bias"], required=False)
        _take(state, used, names["k"] + "bias", required=False)  # a k bias shifts every score of a query
        # by the same amount: softmax ignores it, so dropping it is exact.
    else:
        qkv = _take(state, used, names["qkv"] + "weight").T.reshape(width, 3, width)
        full = _take(state, used, names["qkv"] + "bias", required=False)  # timm-style full qkv bias
        q_bias = _take(state, used, names["q_bias"], required=False)
        v_bias = _take(state, used, names["v_bias"], required=False)
        if full is not None:
            q_bias, v_bias = full[:width], full[2 * width:]
    zeros = np.zeros(width, np.float32)
    q_bias = zeros if q_bias is None else q_bias
    v_bias = zeros if v_bias is None else v_bias
    g1 = _take(state, used, names["gamma1"], required=False) if "gamma1" in names else None
    g2 = _take(state, used, names["gamma2"], required=False) if "gamma2" in names else None
    proj = _dense(state, used, names["proj"], gamma=g1)
    return {
        "norm1": _norm(state, used, names["norm1"]),
        "attn": {"qkv_kernel": qkv.reshape(width, 3, heads, dh), "q_bias": q_bias.reshape(heads, dh),
                 "v_bias": v_bias.reshape(heads, dh),
                 "proj_kernel": proj["kernel"].reshape(heads, dh, width), "proj_bias": proj["bias"]},
        "norm2": _norm(state, used, names["norm2"]),
        "fc1": _dense(state, used, names["fc1"]),
        "fc2": _dense(state, used, names["fc2"], gamma=g2),
    }


def _check_table(state, used, name: str, dim: int) -> tuple[int | None, str | None]:
    """A stored position table must be VideoMAE's fixed one (our model has no learned table)."""
    from auvmae_jax.models import sincos_table

    if name not in state:
        return None, None
    table = _take(state, used, name).reshape(-1, dim)
    if not np.allclose(table, sincos_table(len(table), dim), atol=1e-4):
        return len(table), (f"{name} is a learned position table: our model uses the fixed sin-cos "
                            "table, so the imported encoder will not compute what the source did")
    return len(table), None


def infer_and_map(state: dict[str, np.ndarray], hf_config: dict | None = None,
                  overrides: dict | None = None) -> tuple[dict, dict, dict]:
    """`(params, model config, info)` from a state dict; info holds the layout, dropped names, notes."""
    hf_config, overrides = hf_config or {}, dict(overrides or {})
    layout, prefix = detect_layout(state)
    names = _Names(layout, prefix)
    used: set[str] = set()
    notes: list[str] = []
    pw = _take(state, used, names.patch() + "weight")  # [D, C, kt, p, p]
    width, channels, kt, p, p2 = pw.shape
    if channels != 3 or p != p2:
        raise UserError(f"patch embedding {pw.shape}: expected 3 channels and square patches")
    depth = names.count_blocks(state, decoder=False)
    b0 = names.block(0, decoder=False)
    hidden = state[b0["fc1"] + "weight"].shape[0]
    given_heads = overrides.pop("heads", None) or hf_config.get("num_attention_heads")
    heads = given_heads or _HEADS_BY_WIDTH.get(width, max(width // 64, 1))
    if not given_heads:
        notes.append(f"heads not stored in the weights: assumed {heads} for width {width} "
                     "(pass --heads to change)")
    eps = {"hf": hf_config.get("layer_norm_eps", 1e-12), "official": 1e-6, "marlin": 1e-5}[layout]
    patch_kernel = pw.transpose(2, 3, 4, 1, 0).reshape(kt * p * p * 3, width)  # tokens are (t, h, w, c)
    enc: dict[str, Any] = {"patch_embed": {"kernel": patch_kernel,
                                           "bias": _take(state, used, names.patch() + "bias")}}
    for i in range(depth):
        enc[f"block{i}"] = _block(state, used, names.block(i, False), width, heads, layout)
    final_norm = names.final_norm() + "weight" in state
    if final_norm:
        enc["norm"] = _norm(state, used, names.final_norm())
    num_frames = hf_config.get("num_frames")
    image_size = hf_config.get("image_size")
    pos_len, warn = _check_table(state, used, names.enc + "pos_embed", width)
    if pos_len is None:
        pos_len, warn = _check_table(state, used, names.enc + "pos_embedding.emb", width)
    if warn:
        notes.append(warn)
    cfg = dict(width=width, depth=depth, heads=int(heads), mlp_ratio=hidden / width, patch_size=p,
               tubelet_size=kt, layer_norm_eps=float(eps), final_norm=final_norm)
    if layout == "hf":  # transformers' decoder norm and fc_norm keep PyTorch's default eps (SPEC §5)
        cfg["head_norm_eps"] = 1e-5
    params: dict[str, Any] = {"encoder": enc}
    dec_depth = names.count_blocks(state, decoder=True)
    if dec_depth and names.enc_to_dec() in state:
        e2d = _take(state, used, names.enc_to_dec())  # [Dd, D], no bias
        dec_width = e2d.shape[0]
        dec_hidden = state[names.block(0, True)["fc1"] + "weight"].shape[0]
        if dec_hidden / dec_width != hidden / width:
            raise UserError(f"decoder MLP ratio {dec_hidden / dec_width} differs from the encoder's "
                            f"{hidden / width}: our model uses one ratio for both")
        given_dec_heads = overrides.pop("dec_heads", None) or hf_config.get("decoder_num_attention_heads")
        dec_heads = given_dec_heads or max(dec_width // 64, 1)
        if not given_dec_heads:
            notes.append(f"decoder heads not stored in the weights: assumed {dec_heads} for width "
                         f"{dec_width} (pass --dec_heads to change)")
        dec: dict[str, Any] = {"encoder_to_decoder": {"kernel": e2d.T},
                               "mask_token": _take(state, used, names.mask_token()).reshape(1, 1, dec_width)}
        for i in range(dec_depth):
            dec[f"block{i}"] = _block(state, used, names.block(i, True), dec_width, dec_heads, layout)
        dec["norm"] = _norm(state, used, names.dec_norm())
        head = _dense(state, used, names.dec_head())
        if layout == "marlin":  # MARLIN's outputs are (c, t*h*w); ours (t*h*w, c)
            out = head["kernel"].shape[1]
            order = np.arange(out).reshape(3, out // 3).T.reshape(-1)
            head = {"kernel": head["kernel"][:, order], "bias": head["bias"][order]}
        dec["head"] = head
        _check_table(state, used, names.root + "decoder.pos_embedding.emb", dec_width)
        params["decoder"] = dec
        cfg.update(dec_width=dec_width, dec_depth=dec_depth, dec_heads=int(dec_heads))
    else:
        cfg.update(dec_depth=0)
    cfg.update({k: v for k, v in overrides.items() if k in ("layer_norm_eps",)})
    dropped = sorted(k for k in state if k not in used)
    info = dict(layout=layout, dropped=dropped, notes=notes,
                num_frames=int(num_frames) if num_frames else None,
                image_size=int(image_size) if image_size else None, pos_len=pos_len,
                input_norm="unit" if layout == "marlin" else "imagenet")
    return params, cfg, info


def _frames_and_size(info: dict, kt: int, p: int, overrides: dict) -> tuple[int, int, list[str]]:
    """Clip length and resolution: given, from the config, or from the stored position table."""
    notes = []
    t = overrides.get("num_frames") or info["num_frames"]
    s = overrides.get("image_size") or info["image_size"]
    if (t is None or s is None) and info["pos_len"]:
        for cand_s in ([s] if s else [224, 160, 112, 96, 64, 32]):
            per = (cand_s // p) ** 2
            if info["pos_len"] % per == 0 and (t is None or info["pos_len"] == per * t // kt):
                t, s = t or info["pos_len"] // per * kt, cand_s
                break
    if t is None or s is None:
        notes.append(f"clip shape not stored: assumed {t or 16} frames of {s or 224}x{s or 224} "
                     "(pass --num_frames/--image_size)")
        t, s = t or 16, s or 224
    return int(t), int(s), notes


# ---------------------------------------------------------------------------- writing


def convert(source: str, output: str, trust_pickle: bool = False, overrides: dict | None = None) -> dict:
    """Convert `source` into `output` (orbax checkpoint + config.json); returns the written config."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from auvmae_jax.models import Encoder, VideoMAE, ViTConfig

    overrides = {k: v for k, v in (overrides or {}).items() if v}
    state, hf_config, weights = read_checkpoint(source, trust_pickle)
    params, model_cfg, info = infer_and_map(state, hf_config, overrides)
    num_frames, image_size, more = _frames_and_size(info, model_cfg["tubelet_size"], model_cfg["patch_size"],
                                                    overrides)
    info["notes"] += more
    has_decoder = "decoder" in params
    vit = ViTConfig.from_config(model_cfg)
    if int(vit.width * vit.mlp_ratio) != params["encoder"]["block0"]["fc1"]["kernel"].shape[1]:
        raise UserError(f"MLP width {params['encoder']['block0']['fc1']['kernel'].shape[1]} is not "
                        f"int(width * mlp_ratio) for width {vit.width}: unsupported by our model")
    grid = vit.grid(num_frames, image_size)
    video = jnp.zeros((1, num_frames, image_size, image_size, 3))
    if has_decoder:
        s = grid[1] * grid[2]
        shapes = jax.eval_shape(lambda: VideoMAE(vit).init(
            jax.random.key(0), video, jnp.arange(s // 2)[None], jnp.arange(s // 2, s)[None]))["params"]
    else:
        shapes = {"encoder": jax.eval_shape(lambda: Encoder(vit).init(jax.random.key(0), video))["params"]}
    want = jax.tree.map(lambda x: tuple(x.shape), nn.unbox(shapes))
    got = jax.tree.map(lambda x: tuple(np.shape(x)), params)
    if want != got:
        flat_w = dict(jax.tree_util.tree_flatten_with_path(want)[0])
        flat_g = dict(jax.tree_util.tree_flatten_with_path(got)[0])
        diff = sorted(set(map(jax.tree_util.keystr, flat_w)) ^ set(map(jax.tree_util.keystr, flat_g)))
        raise UserError(f"{weights}: mapped weights do not fit the model ({diff[:4] or 'shapes differ'})")
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)

    output = paths.resolve(output)  # local, or gs://
    ckpt_dir = paths.join(output, "checkpoints")
    if paths.exists(ckpt_dir) and any(epath.Path(ckpt_dir).iterdir()):
        raise UserError(f"{output} already holds a checkpoint: choose an empty --output")
    paths.makedirs(output)
    manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(create=True))
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
    manager.wait_until_finished()
    manager.close()
    config = {
        "task": "converted",
        "model": {**model_cfg, "dtype": "float32"},
        "data": {"num_frames": num_frames, "image_size": image_size, "input_norm": info["input_norm"]},
        "source": weights, "layout": info["layout"], "has_decoder": has_decoder,
        "dropped": info["dropped"], "notes": info["notes"],
    }
    paths.write_json(paths.join(output, "config.json"), config)
    return config


def describe(config: dict) -> str:
    """A few lines saying what was converted and what was left out."""
    m = config["model"]
    lines = [f"{config['layout']} checkpoint {config['source']}",
             f"encoder: width {m['width']}, depth {m['depth']}, heads {m['heads']}, patch {m['patch_size']}, "
             f"tubelet {m['tubelet_size']}, clip {config['data']['num_frames']} frames of "
             f"{config['data']['image_size']} px, final norm {m['final_norm']}, "
             f"layer norm eps {m['layer_norm_eps']:g}",
             (f"decoder: width {m['dec_width']}, depth {m['dec_depth']}, heads {m['dec_heads']}"
              if config["has_decoder"] else "decoder: none in the checkpoint")]
    dropped = config["dropped"]
    if dropped:
        groups = sorted({re.sub(r"\.\d+\.", ".N.", k) for k in dropped})
        lines.append(f"dropped {len(dropped)} tensors: {', '.join(groups[:12])}"
                     + (" ..." if len(groups) > 12 else ""))
    lines += [f"note: {n}" for n in config["notes"]]
    return "\n".join(lines)
