"""Weight import: transformers parity (tokens, reconstruction), official and MARLIN layouts, pickles."""

import argparse
import dataclasses
import fractions
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from auvmae_jax import convert, finetune  # noqa: E402
from auvmae_jax.errors import UserError  # noqa: E402
from auvmae_jax.models import Encoder, VideoMAE, ViTConfig, sincos_table  # noqa: E402

S = 16  # spatial positions of a 32x32 frame with 8x8 patches


def _hf_config(**kw):
    base = dict(image_size=32, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=32,
                num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, decoder_hidden_size=24,
                decoder_num_hidden_layers=1, decoder_num_attention_heads=3, decoder_intermediate_size=96)
    base.update(kw)
    return transformers.VideoMAEConfig(**base)


def _randomise(model):
    """Random values everywhere (the default init leaves biases at 0 and norms at 1)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.5))
    return model.eval()


@pytest.fixture(scope="module")
def hf_pretraining(tmp_path_factory):
    """A random VideoMAEForPreTraining (final encoder norm on) saved as safetensors + config.json."""
    model = _randomise(transformers.VideoMAEForPreTraining(_hf_config(use_mean_pooling=False)))
    path = str(tmp_path_factory.mktemp("hf_pre"))
    model.save_pretrained(path)
    return model, path


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 4, 32, 32, 3)).astype(np.float32)
    visible = np.stack([np.sort(rng.permutation(S)[:5]) for _ in range(2)])
    masked = np.stack([np.setdiff1d(np.arange(S), v) for v in visible])
    bool_masked = np.ones((2, 2 * S), bool)  # transformers: True = masked, tokens in (t, h, w) order
    for b in range(2):
        for t in range(2):
            bool_masked[b, t * S + visible[b]] = False
    pixels = torch.tensor(x).permute(0, 1, 4, 2, 3)  # [B, T, C, H, W]
    return x, visible, masked, pixels, torch.tensor(bool_masked)


def test_transformers_pretraining_tokens_and_reconstruction_match(hf_pretraining, tmp_path):
    model, path = hf_pretraining
    config = convert.convert(path, str(tmp_path / "out"))
    assert config["layout"] == "hf" and config["has_decoder"]
    assert config["model"]["final_norm"] and config["model"]["layer_norm_eps"] == 1e-12
    m = config["model"]
    assert (m["heads"], m["dec_heads"], m["dec_width"]) == (2, 3, 24)
    assert config["data"] == {"num_frames": 4, "image_size": 32, "input_norm": "imagenet"}
    params = finetune.load_checkpoint_params(str(tmp_path / "out"))  # as --config.init_from reads it
    vit = ViTConfig.from_config(config["model"])
    x, visible, masked, pixels, bool_masked = _inputs()
    with torch.no_grad():
        tokens_pt = model.videomae(pixels, bool_masked_pos=bool_masked).last_hidden_state.numpy()
        recon_pt = model(pixels, bool_masked_pos=bool_masked).logits.numpy()
    tokens = Encoder(vit).apply({"params": params["encoder"]}, jnp.asarray(x), jnp.asarray(visible))
    recon = VideoMAE(vit).apply({"params": params}, jnp.asarray(x), jnp.asarray(visible), jnp.asarray(masked))
    assert tokens.shape == tokens_pt.shape == (2, 10, 32)
    np.testing.assert_allclose(np.asarray(tokens), tokens_pt, atol=1e-4)
    assert recon.shape == recon_pt.shape == (2, 22, 2 * 8 * 8 * 3)
    np.testing.assert_allclose(np.asarray(recon), recon_pt, atol=1e-4)
    assert np.abs(recon_pt).max() > 1  # the comparison is not between near-zero outputs


def test_transformers_encoder_only_model_matches(tmp_path):
    model = _randomise(transformers.VideoMAEModel(_hf_config()))  # use_mean_pooling: no final norm
    model.save_pretrained(tmp_path / "hf")
    config = convert.convert(str(tmp_path / "hf"), str(tmp_path / "out"))
    assert not config["has_decoder"] and not config["model"]["final_norm"]
    params = finetune.load_checkpoint_params(str(tmp_path / "out"))
    assert set(params) == {"encoder"} and "norm" not in params["encoder"]
    x, visible, _, pixels, bool_masked = _inputs(1)
    with torch.no_grad():
        full_pt = model(pixels).last_hidden_state.numpy()
    vit = ViTConfig.from_config(config["model"])
    full = Encoder(vit).apply({"params": params["encoder"]}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(full), full_pt, atol=1e-4)


def _official_state(hf_state: dict) -> dict:
    """The official VideoMAE pre-training names for the same tensors (fused qkv, q_bias/v_bias)."""
    out = {}
    for k, v in hf_state.items():
        k = k.replace("videomae.embeddings.patch_embeddings.projection", "encoder.patch_embed.proj")
        k = k.replace("videomae.layernorm", "encoder.norm")
        k = k.replace("videomae.encoder.layer.", "encoder.blocks.")
        k = k.replace("decoder.decoder_layers.", "decoder.blocks.")
        k = k.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
        k = k.replace("attention.output.dense", "attn.proj")
        k = k.replace("intermediate.dense", "mlp.fc1").replace("output.dense", "mlp.fc2")
        out[k] = v
    for k in [k for k in out if k.endswith("attention.attention.query.weight")]:
        p = k[: -len("attention.attention.query.weight")]
        a = p + "attention.attention."
        qkv = [out.pop(a + n + ".weight") for n in ("query", "key", "value")]
        out[p + "attn.qkv.weight"] = torch.cat(qkv)
        out[p + "attn.q_bias"] = out.pop(a + "query.bias")
        out[p + "attn.v_bias"] = out.pop(a + "value.bias")
    return out


def test_official_pth_with_args_under_model_gives_the_same_weights(hf_pretraining, tmp_path):
    model, path = hf_pretraining
    convert.convert(path, str(tmp_path / "ref"))
    reference = finetune.load_checkpoint_params(str(tmp_path / "ref"))
    state = _official_state(model.state_dict())
    state["encoder.head.weight"] = torch.zeros(5, 32)  # a classification head: dropped, and reported
    pth = tmp_path / "checkpoint-799.pth"
    args = argparse.Namespace(model="pretrain_videomae_tiny")
    torch.save({"model": state, "epoch": 799, "args": args}, pth)
    config = convert.convert(str(pth), str(tmp_path / "out"),
                             overrides={"heads": 2, "dec_heads": 3, "num_frames": 4, "image_size": 32})
    assert config["layout"] == "official" and config["model"]["layer_norm_eps"] == 1e-6
    assert config["dropped"] == ["encoder.head.weight"]
    assert "encoder.head.weight" in convert.describe(config)
    got = finetune.load_checkpoint_params(str(tmp_path / "out"))
    import jax

    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), got, reference)
    # without --heads the count is inferred from the width (64 per head) and said so
    guessed = convert.convert(str(pth), str(tmp_path / "out2"))
    assert guessed["model"]["heads"] == 1 and any("heads not stored" in n for n in guessed["notes"])


def test_marlin_layout_reorders_its_reconstruction_head(hf_pretraining, tmp_path):
    model, _ = hf_pretraining
    state = {}
    for k, v in _official_state(model.state_dict()).items():
        k = k.replace("patch_embed.proj", "patch_embedding.projection")
        k = k.replace("encoder_to_decoder", "enc_dec_proj")
        k = k.replace("mlp.fc1", "mlp.layers.0.linear").replace("mlp.fc2", "mlp.layers.1.linear")
        k = "decoder.mask_token" if k == "mask_token" else k
        state[k] = v
    w, b = state["decoder.head.weight"], state["decoder.head.bias"]  # ours: (p, c); MARLIN: (c, p)
    order = np.arange(w.shape[0]).reshape(-1, 3).T.reshape(-1)
    state["decoder.head.weight"], state["decoder.head.bias"] = w[order], b[order]
    state["encoder.pos_embedding.emb"] = torch.tensor(sincos_table(2 * S, 32))[None]
    state["decoder.pos_embedding.emb"] = torch.tensor(sincos_table(2 * S, 24))[None]
    gamma = torch.rand(32) + 0.5  # LayerScale on block 1's MLP branch, folded into fc2
    fc2 = "encoder.blocks.1.mlp.layers.1.linear."
    state["encoder.blocks.1.gamma_2"] = gamma
    state[fc2 + "weight"] = state[fc2 + "weight"] / gamma[:, None]
    state[fc2 + "bias"] = state[fc2 + "bias"] / gamma
    path = tmp_path / "marlin.full.pt"
    torch.save(state, path)
    config = convert.convert(str(path), str(tmp_path / "out"), overrides={"heads": 2, "dec_heads": 3})
    assert config["layout"] == "marlin" and config["data"]["input_norm"] == "unit"
    assert config["data"]["num_frames"] == 4 and config["data"]["image_size"] == 32  # from the table
    assert config["model"]["layer_norm_eps"] == 1e-5 and config["dropped"] == []
    params = finetune.load_checkpoint_params(str(tmp_path / "out"))
    vit = ViTConfig.from_config({**config["model"], "layer_norm_eps": 1e-12})
    x, visible, masked, pixels, bool_masked = _inputs(2)
    with torch.no_grad():
        recon_pt = model(pixels, bool_masked_pos=bool_masked).logits.numpy()
    recon = VideoMAE(vit).apply({"params": params}, jnp.asarray(x), jnp.asarray(visible), jnp.asarray(masked))
    np.testing.assert_allclose(np.asarray(recon), recon_pt, atol=1e-4)


def test_pickles_beyond_tensors_need_trust_pickle(tmp_path):
    model = _randomise(transformers.VideoMAEModel(_hf_config()))
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": model.state_dict(), "extra": fractions.Fraction(1, 3)}, path)
    with pytest.raises(UserError, match="--trust-pickle"):
        convert.convert(str(path), str(tmp_path / "out"))
    config = convert.convert(str(path), str(tmp_path / "out"), trust_pickle=True)
    assert config["layout"] == "hf"
    assert json.load(open(os.path.join(tmp_path, "out", "config.json")))["task"] == "converted"
    with pytest.raises(UserError, match="already holds a checkpoint"):
        convert.convert(str(path), str(tmp_path / "out"), trust_pickle=True)


def test_unreadable_sources_are_one_line_errors(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"weights\.pth: not a readable PyTorch checkpoint"):
        convert.convert(str(bad), str(tmp_path / "o"))
    with pytest.raises(UserError, match="no such file"):
        convert.convert(str(tmp_path / "missing.pth"), str(tmp_path / "o"))
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="no VideoMAE patch embedding"):
        convert.convert(str(tmp_path / "other.pth"), str(tmp_path / "o"))


def test_fine_tuning_initialises_from_a_converted_dir(hf_pretraining, tmp_path, caplog):
    import logging

    import flax.linen as nn
    import jax

    from auvmae_jax.models import AUDetector

    _, path = hf_pretraining
    convert.convert(path, str(tmp_path / "out"))
    converted = finetune.load_checkpoint_params(str(tmp_path / "out"))
    cfg = ViTConfig.from_config(dict(preset="mini", patch_size=8))  # width 32, depth 2, heads 2, eps 1e-6
    params = AUDetector(cfg, 3).init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)))["params"]
    init = finetune.encoder_initialiser(str(tmp_path / "out"), cfg, num_frames=8, image_size=32)
    with caplog.at_level(logging.WARNING, logger="auvmae"):
        new = init(jax.tree.map(np.asarray, nn.unbox(params)))
    jax.tree.map(np.testing.assert_array_equal, new["encoder"], converted["encoder"])
    assert set(new) == {"encoder", "fc_norm", "head"}  # the head stays the fine-tuning model's
    assert "layer_norm_eps=1e-12" in caplog.text and "4 frames of 32 px" in caplog.text
    # an encoder without a final norm (transformers' mean pooling) into a model that has one
    model = transformers.VideoMAEModel(_hf_config())
    model.save_pretrained(tmp_path / "pooled")
    convert.convert(str(tmp_path / "pooled"), str(tmp_path / "pooled_out"))
    with pytest.raises(UserError, match=r"lacks \['norm'\].*--config.model.final_norm=False"):
        finetune.encoder_initialiser(str(tmp_path / "pooled_out"))(
            jax.tree.map(np.asarray, nn.unbox(params)))
    # another depth (a preset mix-up): named, not half-loaded
    deeper = AUDetector(dataclasses.replace(cfg, depth=3), 3).init(jax.random.key(0),
                                                                  jnp.zeros((1, 8, 32, 32, 3)))
    with pytest.raises(UserError, match="its encoder has 2 blocks, the config's 3"):
        init(jax.tree.map(np.asarray, nn.unbox(deeper["params"])))
