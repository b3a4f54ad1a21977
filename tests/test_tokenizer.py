import pytest
import torch

from worldmodel.model import DiT, get_config
from worldmodel.tokenizer import TOKENIZER_PRESETS, Tokenizer, TokenizerConfig


@torch.no_grad()
@pytest.mark.parametrize("name, latent", [("tiny", (4, 4)), ("cpu", (8, 8)), ("cpu-4x", (8, 16))])
def test_presets_downsample_by_two_per_stage(name, latent):
    cfg = TOKENIZER_PRESETS[name]
    tok = Tokenizer(cfg).eval()
    x = torch.rand(2, 3, cfg.frame_size, cfg.frame_size) * 2 - 1
    z = tok.encode(x)
    c, h = latent
    assert z.shape == (2, c, h, h) and cfg.latent_size == h
    assert tok.decode(z).shape == x.shape


def test_downsampling_follows_the_stage_count():
    assert TokenizerConfig(channels=(8,), frame_size=32).latent_size == 16
    assert TokenizerConfig(channels=(8, 8), frame_size=64).latent_size == 16
    assert TokenizerConfig(channels=(8, 8, 8), frame_size=64).latent_size == 8
    with pytest.raises(ValueError, match="multiple of 4"):
        TokenizerConfig(channels=(8, 8), frame_size=66)
    with pytest.raises(ValueError, match="stage widths"):
        TokenizerConfig(channels=())


@torch.no_grad()
def test_cpu_16_dit_takes_the_4x_latents_as_16_tokens_per_frame():
    tok_cfg = TOKENIZER_PRESETS["cpu-4x"]
    cfg = get_config("cpu-16", depth=1)
    assert (cfg.latent_channels, cfg.latent_size) == (tok_cfg.latent_channels, tok_cfg.latent_size)
    assert cfg.tokens_per_frame == get_config("cpu").tokens_per_frame == 16
    model = DiT(cfg).eval()
    B, F = 1, 2
    x = torch.randn(B, F, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    out = model(x, torch.rand(B, F), torch.zeros(B, F, cfg.action_dim), mode="causal")
    assert out.shape == x.shape


def test_every_tokenizer_checkpoint_carries_latent_stats(tiny_pipeline, tmp_path, monkeypatch):
    """A run killed between checkpoints leaves the last one as its tokenizer; its latents
    must be normalised like the final one's."""
    from distill import common
    from distill.train_tokenizer import TokenizerTrainConfig, train

    stds = []
    save = common.Run.save

    def spy(self, model, opt, ema, step, extra=None, export_tensors=None):
        tensors = export_tensors if export_tensors is not None else ema.model.state_dict()
        stds.append(tensors["latent_std"].clone())
        save(self, model, opt, ema, step, extra, export_tensors)

    monkeypatch.setattr(common.Run, "save", spy)
    train(TokenizerTrainConfig(data=str(tiny_pipeline.data), out=str(tmp_path), model="tiny",
                               steps=4, ckpt_every=2, batch_size=4, workers=0))
    assert len(stds) == 3  # steps 2 and 4, then the final export
    assert all(not torch.allclose(s, torch.ones_like(s)) for s in stds)
