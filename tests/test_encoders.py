"""Frozen encoders against independent references: random-init tiny models, all offline."""
import numpy as np
import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bacl.encoders import EncoderConfig, EncoderUnavailable, load_encoder, validate_encoder
from bacl.encoders.roberta import ByteTokenizer
from bacl.errors import ConfigError

TINY_CLIP = {"name": "open_clip", "model": "bacl-tiny-vit", "pretrained": None}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls are slower with threads fighting over a shared machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No download can succeed and none may wait on retries: an empty cache and the hub's offline mode."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return str(tmp_path / "empty-cache")


def images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


def reference_clip(encoder):
    """A separately built open_clip model holding the encoder's weights."""
    ref = open_clip.create_model("bacl-tiny-vit")
    ref.load_state_dict(encoder.module.state_dict())
    return ref.eval()


def test_open_clip_image_matches_open_clip_and_first_token_is_pooled():
    enc = load_encoder(EncoderConfig(**TINY_CLIP, patch_grid=0), "image")
    x = torch.stack([enc.preprocess(im) for im in images(3)])
    tokens, pooled = enc.encode(x)
    assert (enc.dim, enc.tokens) == (64, 1 + 16) and enc.sample_rate is None
    assert tokens.shape == (3, 17, 64) and pooled.shape == (3, 64) and tokens.dtype == torch.float32

    ref = reference_clip(enc)
    torch.testing.assert_close(pooled, ref.encode_image(x))
    torch.testing.assert_close(tokens[:, 0], pooled)
    ref.visual.output_tokens = True
    _, patches = ref.visual(x)  # after ln_post, before the projection
    torch.testing.assert_close(tokens[:, 1:], patches @ ref.visual.proj)


def test_patch_grid_is_a_block_average_of_the_patch_tokens():
    x = torch.stack([load_encoder(EncoderConfig(**TINY_CLIP), "image").preprocess(im) for im in images(2)])
    full, _ = load_encoder(EncoderConfig(**TINY_CLIP, patch_grid=0), "image").encode(x)
    pooled_grid, pooled = load_encoder(EncoderConfig(**TINY_CLIP, patch_grid=2), "image").encode(x)
    assert pooled_grid.shape == (2, 1 + 4, 64)
    blocks = full[:, 1:].reshape(2, 2, 2, 2, 2, 64).mean(dim=(2, 4)).reshape(2, 4, 64)  # 4x4 -> 2x2, row-major
    torch.testing.assert_close(pooled_grid[:, 1:], blocks)
    torch.testing.assert_close(pooled_grid[:, 0], pooled)


def test_open_clip_text_fixed_length_and_pooled_at_end_of_text():
    enc = load_encoder(EncoderConfig(**TINY_CLIP, text_tokens=12), "text")
    captions = ["a dog", "a small brown dog runs across a wet field of grass after a red ball"]
    ids = torch.stack([enc.preprocess(c) for c in captions])
    tokens, pooled = enc.encode(ids)
    assert tokens.shape == (2, 12, 64) and pooled.shape == (2, 64)
    torch.testing.assert_close(pooled, reference_clip(enc).encode_text(ids))
    eot = ids.argmax(dim=-1)  # open_clip's end-of-text id is the largest
    assert eot[0] < 12 <= eot[1]
    torch.testing.assert_close(tokens[0, eot[0]], pooled[0])


def test_image_and_text_share_one_model_and_stay_frozen():
    cfg = OmegaConf.structured(EncoderConfig(**TINY_CLIP))
    image, text = load_encoder(cfg, "image"), load_encoder(cfg, "text")
    assert image.module is text.module
    assert not any(p.requires_grad for p in image.module.parameters())
    assert not image.module.training
    x = torch.stack([image.preprocess(im) for im in images(2)])
    first, second = image.encode(x), image.encode(x)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not first[0].requires_grad


def test_byte_tokenizer_round_trip_and_fixed_length():
    tok = ByteTokenizer()
    text = "Un café, s'il vous plaît ✓"
    ids = tok.encode(text, 64)
    assert len(ids) == 64 and ids[0] == tok.bos and ids[len(text.encode()) + 1] == tok.eos and ids[-1] == tok.pad
    assert tok.decode(ids) == text
    cut = tok.encode("abcdefgh", 5)
    assert cut == [tok.bos, *(b + tok.offset for b in b"abc"), tok.eos]


def test_roberta_random_init_pooled_is_mean_of_real_tokens():
    enc = load_encoder(EncoderConfig(name="roberta", model="tiny", pretrained=None, text_tokens=16), "text")
    ids = torch.stack([enc.preprocess(c) for c in ["a cat", "a dog barks at the postman"]])
    tokens, pooled = enc.encode(ids)
    assert tokens.shape == (2, 16, 64) and pooled.shape == (2, 64)
    real = len("a cat") + 2
    torch.testing.assert_close(pooled[0], tokens[0, :real].mean(0))
    # padding is masked out: the same caption padded further has the same pooled embedding
    longer = load_encoder(EncoderConfig(name="roberta", model="tiny", pretrained=None, text_tokens=32), "text")
    _, pooled_32 = longer.encode(longer.preprocess("a cat")[None])
    torch.testing.assert_close(pooled_32[0], pooled[0], atol=1e-5, rtol=1e-5)


def test_clap_fixed_token_count_with_documented_pad_and_crop():
    enc = load_encoder(EncoderConfig(name="clap", model="tiny", pretrained=None), "audio")
    rate, n = enc.sample_rate, enc.extractor.nb_max_samples
    assert (rate, n, enc.tokens, enc.dim) == (48000, 48000, 16, 32)
    rng = np.random.default_rng(0)
    short, long = rng.standard_normal(n * 2 // 5).astype(np.float32), rng.standard_normal(n * 3 // 2).astype(np.float32)
    tiled = np.pad(np.tile(short, n // len(short)), (0, n - len(short) * (n // len(short))))  # repeatpad
    batch = torch.stack([enc.preprocess(w) for w in (short, long, tiled, long[:n])])
    tokens, pooled = enc.encode(batch)
    assert tokens.shape == (4, 16, 32) and pooled.shape == (4, 32)
    torch.testing.assert_close(tokens[0], tokens[2])  # short: tiled, then zero-padded
    torch.testing.assert_close(tokens[1], tokens[3])  # long: its first max_length_s seconds
    no_fusion = torch.zeros(4, 1, dtype=torch.bool)
    torch.testing.assert_close(pooled, enc.module(input_features=batch, is_longer=no_fusion).audio_embeds)
    with pytest.raises(ValueError, match="mono"):
        enc.preprocess(np.zeros((2, 100), dtype=np.float32))


@pytest.mark.parametrize("override, key", [
    ({"name": "nope"}, "name"),
    ({"text_tokens": 0}, "text_tokens"),
    ({"patch_grid": -1}, "patch_grid"),
    ({"model": "ViT-Q-99"}, "model"),
    ({"model": "RN50"}, "model"),
    ({"patch_grid": 15}, "patch_grid"),  # ViT-B-16 has a 14x14 grid
    ({"text_tokens": 78}, "text_tokens"),
    ({"pretrained": "no_such_tag"}, "pretrained"),
    ({"name": "roberta", "model": "roberta-large", "pretrained": None}, "model"),
    ({"name": "roberta", "text_tokens": 1}, "text_tokens"),
    ({"name": "clap", "model": "huge", "pretrained": None}, "model"),
])
def test_bad_config_names_the_key(override, key):
    cfg = OmegaConf.structured(EncoderConfig(**override))
    with pytest.raises(ConfigError, match=rf"^dataset\.text_encoder\.{key}="):
        validate_encoder(cfg, "dataset.text_encoder")


def test_default_configs_validate_and_modality_is_checked():
    validate_encoder(EncoderConfig(), "dataset.vision_encoder")
    validate_encoder(EncoderConfig(name="clap", model="x", pretrained="laion/clap-htsat-unfused"), "a")
    with pytest.raises(ConfigError, match="no audio tower"):
        load_encoder(EncoderConfig(**TINY_CLIP), "audio")


def test_open_clip_offline_error_says_what_where_and_how(offline):
    with pytest.raises(EncoderUnavailable) as err:
        load_encoder(EncoderConfig(model="ViT-B-16", pretrained="laion400m_e32", cache_dir=offline), "image")
    msg = str(err.value)
    assert "open_clip weights ViT-B-16 / laion400m_e32" in msg
    assert "https://huggingface.co/timm/vit_base_patch16_clip_224.laion400m_e32" in msg
    assert "vit_b_16-laion400m_e32-55e67d44.pt" in msg  # the release URL too
    assert (f"python -c \"import open_clip; open_clip.create_model('ViT-B-16', pretrained='laion400m_e32', "
            f"cache_dir={offline!r})\"") in msg
    assert "HF_HUB_CACHE" in msg


def test_transformers_offline_error_says_what_where_and_how(offline):
    with pytest.raises(EncoderUnavailable) as err:
        load_encoder(EncoderConfig(name="roberta", model="roberta-base", pretrained="roberta-base", cache_dir=offline),
                     "text")
    msg = str(err.value)
    assert "roberta weights roberta-base" in msg and "https://huggingface.co/roberta-base" in msg
    assert f"AutoModel.from_pretrained('roberta-base', cache_dir={offline!r})" in msg
