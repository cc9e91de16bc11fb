"""DGMR network, its blocks and losses: sizes, parameter counts, randomness, frame selection.

The paper-size networks are only built on the meta device (no memory, no forward pass); the
forward tests use tiny widths.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from geogen.losses import grid_cell_regulariser, hinge_discriminator_loss, hinge_generator_loss
from geogen.models.dgmr import (
    DGMR,
    Discriminator,
    Generator,
    SpatialDiscriminator,
    TemporalDiscriminator,
    parameter_counts,
)
from geogen.nn import ConvGRU, DBlock, GBlock, LBlock, MeanOnlyBatchNorm, SequenceBatchNorm2d
from geogen.training import compose_train_config

#: Parameter counts, pinned. Paper widths (base_channels=24) and experiment=dgmr_tiny.
PAPER_COUNTS = {
    "generator": 53_067_157,
    "generator.conditioning_stack": 9_785_280,
    "generator.latent_stack": 7_228_305,
    "generator.sampler": 36_053_572,
    "discriminator": 43_521_890,
    "discriminator.spatial": 21_614_065,
    "discriminator.temporal": 21_907_825,
    "total": 96_589_047,
}
TINY_COUNTS = {  # the CPU recipe has no batch norm in the sampler (norm: none)
    "generator": 1_476_317,
    "generator.conditioning_stack": 272_480,
    "generator.latent_stack": 201_401,
    "generator.sampler": 1_002_436,
    "discriminator": 1_212_050,
    "discriminator.spatial": 601_705,
    "discriminator.temporal": 610_345,
    "total": 2_688_367,
}


def experiment_network(name: str) -> DGMR:
    cfg = compose_train_config([f"experiment={name}", "data.path=x.zarr"], output_dir="/tmp/x")
    with torch.device("meta"):
        return instantiate(cfg.network)


@pytest.mark.parametrize(
    ("experiment", "expected"), [("dgmr", PAPER_COUNTS), ("dgmr_tiny", TINY_COUNTS)]
)
def test_parameter_counts_are_pinned(experiment, expected, capsys):
    counts = parameter_counts(experiment_network(experiment))
    with capsys.disabled():
        print(f"\n{experiment} parameters: {counts}")
    assert counts == expected


def test_paper_layout_widths():
    with torch.device("meta"):
        gen = Generator()
    stack = gen.conditioning_stack
    # DeepMind's pseudocode: per-frame DBlock(48/96/192/384), then SNConv2D to the same width
    # over the concatenation of the 4 frames -> 48/96/192/384-channel states
    assert [b.out_channels for b in stack.blocks] == [48, 96, 192, 384]
    assert [(m.in_channels, m.out_channels) for m in stack.mixing] == [
        (192, 48),
        (384, 96),
        (768, 192),
        (1536, 384),
    ]
    assert [g.hidden_channels for g in gen.sampler.grus] == [384, 192, 96, 48]
    assert [g.input_channels for g in gen.sampler.grus] == [768, 384, 192, 96]
    latent = gen.latent_stack
    assert [b.out_channels for b in (latent.lblock1, latent.lblock2, latent.lblock3)] == [
        24,
        48,
        192,
    ]
    assert latent.lblock4.out_channels == 768 and latent.attention.channels == 192
    with torch.device("meta"):
        disc = Discriminator()
    assert [b.out_channels for b in disc.spatial.blocks] == [48, 96, 192, 384, 768, 768]
    assert [b.dims for b in disc.temporal.blocks3d] == [3, 3]
    assert [b.out_channels for b in disc.temporal.blocks3d] == [48, 96]
    assert [b.out_channels for b in disc.temporal.blocks2d] == [192, 384, 768, 768]


def test_paper_states_at_256():
    """The conditioning states of a 256 x 256 input: 64x64x48 ... 8x8x384 (tiny widths x 12)."""
    gen = Generator(base_channels=2, latent_channels=2)
    states = gen.conditioning_stack(torch.rand(1, 4, 256, 256))
    assert [tuple(s.shape[1:]) for s in states] == [
        (4, 64, 64),
        (8, 32, 32),
        (16, 16, 16),
        (32, 8, 8),
    ]


def tiny_generator(**kw) -> Generator:
    torch.manual_seed(0)
    return Generator(base_channels=2, latent_channels=2, lead_frames=3, **kw)


@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (96, 64)])
def test_generator_shapes_at_several_sizes(shape):
    gen = tiny_generator()
    out = gen(torch.rand(2, 4, *shape), 5)
    assert out.shape == (2, 5, *shape)
    assert (out >= 0).all() and torch.isfinite(out).all()


def test_generator_rejects_bad_inputs():
    gen = tiny_generator()
    with pytest.raises(ValueError, match="multiples of 32"):
        gen(torch.rand(1, 4, 48, 64))
    with pytest.raises(ValueError, match="expects 4 frames, got 3"):
        gen(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"z must have shape \(1, 2, 1, 1\)"):
        gen(torch.rand(1, 4, 32, 32), z=torch.rand(1, 2, 2, 2))
    with pytest.raises(ValueError, match="LBlock widens"):
        Generator(base_channels=4, latent_channels=8)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batched_members_differ_and_are_seeded(mode):
    """One context repeated along the batch: every row draws its own latent noise."""
    gen = tiny_generator().train(mode == "train")
    # in training mode each forward advances the spectral-norm power iteration: fresh copies
    copies = [copy.deepcopy(gen) for _ in range(3)]
    context = torch.rand(1, 4, 64, 64).repeat(4, 1, 1, 1)
    with torch.no_grad():
        a = copies[0](context, generator=torch.Generator().manual_seed(1))
        b = copies[1](context, generator=torch.Generator().manual_seed(1))
        c = copies[2](context, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    for i in range(4):
        for j in range(i + 1, 4):
            assert (a[i] - a[j]).abs().max() > 1e-4, f"members {i} and {j} are identical"
    # the same latent for every row gives identical rows: the latent is what differs
    z = torch.randn(1, 2, 2, 2).repeat(4, 1, 1, 1)
    with torch.no_grad():
        same = gen(context, z=z)
    torch.testing.assert_close(same, same[:1].expand_as(same), rtol=1e-3, atol=1e-4)


def test_generator_without_batch_norm_is_the_same_network_in_training_and_forecasting():
    """norm="none": no batch norm; a member does not depend on the rest of its batch."""
    torch.manual_seed(0)
    gen = Generator(base_channels=2, latent_channels=2, norm="none")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in gen.modules())
    assert sum(p.numel() for p in gen.parameters()) < sum(
        p.numel() for p in Generator(base_channels=2, latent_channels=2).parameters()
    )
    context = torch.rand(3, 4, 64, 64)
    z = torch.randn(3, 2, 2, 2)
    gen.eval()
    with torch.no_grad():
        together = gen(context, 3, z=z)
        alone = gen(context[1:2], 3, z=z[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="norm"):
        Generator(base_channels=2, latent_channels=2, norm="layer")


def test_latent_draws_are_independent_per_example():
    gen = tiny_generator()
    z = gen.sample_latent(64, 256, 320, generator=torch.Generator().manual_seed(0))
    assert z.shape == (64, 2, 8, 10)
    corr = torch.corrcoef(z.flatten(1))
    off_diagonal = corr[~torch.eye(64, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.5
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


def marked_sequence(b: int, t: int, h: int, w: int) -> torch.Tensor:
    """Frame ``i`` of example ``n`` filled with ``100 * n + i``."""
    values = 100 * torch.arange(b)[:, None] + torch.arange(t)[None, :]
    return values[:, :, None, None].float().expand(b, t, h, w).clone()


def test_spatial_discriminator_sees_only_lead_frames_eight_distinct():
    disc = Discriminator(context_frames=4, base_channels=2)
    frames = marked_sequence(16, 22, 256, 256)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        pooled, indices = disc.select_spatial_frames(frames, generator)
        assert pooled.shape == (16, 8, 128, 128) and indices.shape == (16, 8)
        assert (indices >= 4).all() and (indices < 22).all()
        for row in indices.tolist():
            assert len(set(row)) == 8
        expected = 100 * torch.arange(16)[:, None] + indices
        torch.testing.assert_close(pooled[:, :, 0, 0], expected.float())
        seen.update(indices.flatten().tolist())
        assert not torch.equal(indices[0], indices[1]) or not torch.equal(indices[1], indices[2])
    assert seen == set(range(4, 22))


def test_spatial_discriminator_input_in_forward():
    disc = Discriminator(context_frames=4, base_channels=2)
    captured = {}
    disc.spatial.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    disc.temporal.register_forward_pre_hook(lambda m, args: captured.setdefault("t", args[0]))
    frames = marked_sequence(2, 22, 256, 256)
    scores = disc(frames)
    assert scores.shape == (2, 2)
    frame_numbers = captured["x"] - 100 * torch.arange(2)[:, None, None, None]
    assert frame_numbers.min() >= 4  # never a context frame
    assert captured["t"].shape == (2, 22, 128, 128)  # all frames, a 128 x 128 crop


def test_temporal_discriminator_crop_is_a_window_of_all_frames():
    disc = Discriminator(context_frames=4, base_channels=2)
    b, t, h, w = 6, 22, 256, 256
    frames = torch.arange(b * t * h * w, dtype=torch.float32).reshape(b, t, h, w)
    crops, offsets = disc.crop_temporal(frames, torch.Generator().manual_seed(3))
    assert crops.shape == (b, t, 128, 128)
    for i, (y0, x0) in enumerate(offsets.tolist()):
        assert 0 <= y0 <= h - 128 and 0 <= x0 <= w - 128
        torch.testing.assert_close(crops[i], frames[i, :, y0 : y0 + 128, x0 : x0 + 128])
    assert len({tuple(o) for o in offsets.tolist()}) > 1  # drawn per example


def test_discriminators_sum_their_scores():
    torch.manual_seed(0)
    spatial = SpatialDiscriminator(base_channels=2).eval()
    frames = torch.rand(3, 4, 128, 128)
    per_frame = torch.stack([spatial(frames[:, i : i + 1]) for i in range(4)], dim=1)
    torch.testing.assert_close(spatial(frames), per_frame.sum(1), rtol=1e-5, atol=1e-5)
    temporal = TemporalDiscriminator(base_channels=2)
    assert temporal(torch.rand(2, 22, 128, 128)).shape == (2,)
    with pytest.raises(ValueError, match="at least 4 frames"):
        temporal(torch.rand(2, 3, 128, 128))


# -- blocks -----------------------------------------------------------------------------------
def test_conv_gru_matches_its_equations():
    torch.manual_seed(0)
    gru = ConvGRU(3, 5)
    x, h = torch.rand(2, 3, 8, 8), torch.rand(2, 5, 8, 8)

    def conv(layer, inputs):
        return F.conv2d(inputs, layer.weight, layer.bias, padding=1)

    xh = torch.cat([x, h], 1)
    r = torch.sigmoid(conv(gru.read_gate, xh))
    u = torch.sigmoid(conv(gru.update_gate, xh))
    c = F.relu(conv(gru.output, torch.cat([x, r * h], 1)))
    gru.eval()  # no power iteration between the reference weights and the forward
    torch.testing.assert_close(gru(x, h), u * h + (1 - u) * c)


def test_spectral_norm_bounds_the_weights():
    block = DBlock(4, 8)
    for _ in range(30):  # power iterations run on each training forward
        block(torch.rand(2, 4, 16, 16))
    weight = block.conv1.weight.detach().flatten(1)
    assert torch.linalg.matrix_norm(weight, ord=2) == pytest.approx(1.0, abs=0.02)
    lblock = LBlock(4, 8)
    assert not hasattr(lblock.conv1, "parametrizations")  # plain convs, as the pseudocode


def test_blocks_shapes():
    assert DBlock(4, 8, dims=3)(torch.rand(1, 4, 6, 16, 16)).shape == (1, 8, 3, 8, 8)
    assert DBlock(8, 8, downsample=False)(torch.rand(1, 8, 16, 16)).shape == (1, 8, 16, 16)
    assert GBlock(8, 4, upsample=True)(torch.rand(2, 8, 4, 4)).shape == (2, 4, 8, 8)
    assert LBlock(2, 6)(torch.rand(1, 2, 4, 4)).shape == (1, 6, 4, 4)
    with pytest.raises(ValueError, match=r"DBlock expects \(N, C, H, W\) with C=4"):
        DBlock(4, 8)(torch.rand(1, 3, 16, 16))


def test_sequence_batch_norm_uses_per_step_statistics():
    torch.manual_seed(0)
    bn = SequenceBatchNorm2d(3)
    b, t = 4, 5
    x = torch.randn(b, t, 3, 6, 6) * torch.arange(1, t + 1).view(1, t, 1, 1, 1)
    out = bn(x.flatten(0, 1), steps=t).unflatten(0, (b, t))
    for step in range(t):
        expected = F.batch_norm(x[:, step], None, None, training=True, eps=bn.eps)
        torch.testing.assert_close(out[:, step], expected, rtol=1e-4, atol=1e-4)
    step_means = x.mean(dim=(0, 3, 4))  # (t, C)
    torch.testing.assert_close(bn.running_mean, 0.1 * step_means.mean(0), rtol=1e-4, atol=1e-5)


def test_mean_only_batch_norm_centres_without_scaling():
    bn = MeanOnlyBatchNorm(2)
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    torch.testing.assert_close(bn(x), torch.tensor([[-1.0, -10.0], [1.0, 10.0]]))
    torch.testing.assert_close(bn.running_mean, torch.tensor([0.2, 2.0]))
    bn.eval()
    torch.testing.assert_close(bn(x), x - torch.tensor([0.2, 2.0]))


# -- losses -----------------------------------------------------------------------------------
def test_hinge_losses_by_hand():
    real = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    fake = torch.tensor([[-2.0, 0.0], [0.5, -0.5]])
    # relu(1 - real) = [0, .5, 2, 0] -> .625 ; relu(1 + fake) = [0, 1, 1.5, .5] -> .75
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(1.375)
    assert hinge_generator_loss(fake).item() == pytest.approx(0.5)


def test_grid_cell_regulariser_by_hand():
    target = torch.tensor([[[[0.0, 2.0], [30.0, 1.0]]]])  # (batch 1, lead 1, 2, 2) mm/h
    samples = torch.stack([target + 1.0, target - 3.0])  # mean: target - 1
    # |mean - target| = 1 everywhere; weights clip(target, 0, 24) = [0, 2, 24, 1] -> mean 6.75
    assert grid_cell_regulariser(samples, target).item() == pytest.approx(6.75)
    mask = torch.tensor([[[[True, True], [False, True]]]])
    assert grid_cell_regulariser(samples, target, mask=mask).item() == pytest.approx(0.75)
    log_target = torch.log1p(target)
    value = grid_cell_regulariser(
        torch.stack([log_target + 1.0, log_target - 3.0]), log_target, weight_target=target
    )
    assert value.item() == pytest.approx(6.75)
    with pytest.raises(ValueError, match="samples must be"):
        grid_cell_regulariser(target, target)


def test_model_configs_nest_their_targets():
    cfg = compose_train_config(["experiment=dgmr", "data.path=x.zarr"], output_dir="/tmp/x")
    model = OmegaConf.to_container(cfg.network, resolve=True)
    assert model["_target_"] == "geogen.models.dgmr.DGMR"
    assert model["discriminator"]["context_frames"] == 4
    assert cfg.optimizer.generator.lr == 5e-5 and cfg.optimizer.discriminator.lr == 2e-4
    assert list(cfg.optimizer.generator.betas) == [0.0, 0.999]
    assert cfg.data.batch_size == 16 and cfg.method.num_samples == 6
    assert cfg.method.disc_steps == 2 and cfg.method.grid_lambda == 20
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.get("detect_anomaly") in (None, False)


def test_sequence_batch_norm_chunks_use_their_own_steps_statistics():
    """Evaluating steps in chunks (``first_step``) equals evaluating them all at once."""
    torch.manual_seed(0)
    bn = SequenceBatchNorm2d(3).eval()
    bn.step_mean.copy_(torch.randn_like(bn.step_mean))
    bn.step_var.copy_(0.5 + torch.rand_like(bn.step_var))
    bn.step_tracked.fill_(1)
    b, t = 2, 6
    x = torch.randn(b, t, 3, 4, 4)
    whole = bn(x.flatten(0, 1), steps=t).unflatten(0, (b, t))
    for chunk in range(1, t + 1):
        parts = [
            bn(
                x[:, first : first + chunk].flatten(0, 1),
                steps=x[:, first : first + chunk].shape[1],
                first_step=first,
            ).unflatten(0, (b, -1))
            for first in range(0, t, chunk)
        ]
        torch.testing.assert_close(torch.cat(parts, dim=1), whole)
    assert (whole[:, 1] - bn(x[:, 1], steps=1)).abs().max() > 0.1  # lead 0's statistics differ
