"""Image observations: a rank-3 Box gets the convolutional encoder, in training and in the exported graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from gymnasium import spaces

from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.export import export_checkpoint, graph_inputs, load_onnx_policy, zero_state
from rnnpolicy.spec import ActionSpec, ImageSpec, PolicySpec
from rnnpolicy.train import drqn, ppo
from rnnpolicy.train.api import resolve, run_defaults, train
from rnnpolicy.train.checkpoint import load_checkpoint, save_checkpoint
from rnnpolicy.train.config import TrainConfig
from rnnpolicy.train.envs import CODED_IMAGE_LIMIT, image_spec, is_coded_image
from rnnpolicy.train.evaluate import evaluate
from rnnpolicy.train.models import ImageEncoder, build_model, initial_state


class _Env:
    def __init__(self, space):
        self.observation_space = space


@pytest.mark.parametrize(
    "space, expected",
    [
        (spaces.Box(0, 255, (7, 7, 3), np.uint8), ImageSpec("hwc", 7, 7, 3, 1 / 255)),  # without a resolved scale
        (spaces.Box(0, 255, (84, 84, 4), np.uint8), ImageSpec("hwc", 84, 84, 4, 1 / 255)),
        (spaces.Box(0, 1, (3, 64, 48), np.float32), ImageSpec("chw", 64, 48, 3, 1.0)),
        (spaces.Box(0, 1, (5, 5, 5), np.float32), ImageSpec("hwc", 5, 5, 5, 1.0)),  # a tie: channels last
    ],
)
def test_image_layout_is_detected_from_the_smallest_axis(space, expected):
    assert image_spec(_Env(space)) == expected


def test_a_given_scale_replaces_the_dtype_rule():
    assert image_spec(_Env(spaces.Box(0, 255, (7, 7, 3), np.uint8)), 1.0) == ImageSpec("hwc", 7, 7, 3, 1.0)


class _FirstObsEnv(_Env):
    def __init__(self, space, first):
        super().__init__(space)
        self.first, self.seeds = first, []

    def reset(self, *, seed=None):
        self.seeds.append(seed)
        return self.first, {}


@pytest.mark.parametrize(
    "space, peak, expected",
    [
        (spaces.Box(0, 255, (7, 7, 3), np.uint8), 10, True),  # codes (MiniGrid's object, colour, state indices)
        (spaces.Box(0, 255, (7, 7, 3), np.uint8), 31, True),
        (spaces.Box(0, 255, (7, 7, 3), np.uint8), 32, False),  # intensities
        (spaces.Box(0, 255, (84, 84, 4), np.uint8), 255, False),
        (spaces.Box(0, 1, (3, 8, 8), np.float32), 1, False),
    ],
)
def test_a_uint8_image_whose_first_observation_stays_below_32_holds_codes(space, peak, expected):
    first = np.zeros(space.shape, space.dtype)
    first.flat[-1] = peak
    env = _FirstObsEnv(space, first)
    assert is_coded_image(env, seed=7) == expected
    assert env.seeds == ([7] if space.dtype == np.uint8 else [])


@pytest.mark.parametrize(
    "env, wrappers, given, expected",
    [
        ("fake_envs:FakeCodedImage-v0", (), {}, (None, CODED_IMAGE_LIMIT)),  # codes 0-10, as MiniGrid's ImgObsWrapper gives
        ("fake_envs:FakeCodedImage-v0", (), {"image_codes": 0}, (1.0, 0)),  # codes read as numbers: unscaled
        ("fake_envs:FakeCodedImage-v0", (), {"image_scale": 0.5}, (0.5, 0)),
        ("fake_envs:FakeImageCue-v0", (), {}, (1 / 255, 0)),
        ("fake_envs:FakeImageCue-v0", (), {"image_scale": 0.5}, (0.5, 0)),
        ("fake_envs:FakeImageCue-v0", (), {"image_codes": 4}, (None, 4)),
        ("rnnpolicy/TMaze-v0", (), {}, (None, None)),
    ],
)
def test_training_resolves_how_the_image_is_read_from_the_first_observation_unless_given(tmp_path, env, wrappers, given, expected):
    config, _ = resolve(TrainConfig(algo="ppo", env=env, out=str(tmp_path), wrapper=wrappers, **given))
    assert (config.image_scale, config.image_codes) == expected


CODE_IMAGE = ("the defaults for images of codes", "gru", 64, 2, 8, 3e-3)
GENERIC = ("the generic defaults", "lstm", 128, 4, 4, 1e-3)


@pytest.mark.parametrize(
    "env, given, expected",
    [
        ("fake_envs:FakeCodedImage-v0", {}, CODE_IMAGE),
        ("fake_envs:FakeCodedImage-v0", {"image_codes": 0}, GENERIC),  # codes read as numbers
        ("fake_envs:FakeImageCue-v0", {}, GENERIC),  # intensities
        ("fake_envs:FakeImageCue-v0", {"image_codes": 4}, CODE_IMAGE),
        ("rnnpolicy/TMaze-v0", {}, ("the entry for rnnpolicy/TMaze-v0", "lstm", 128, 2, 8, 3e-3)),
    ],
)
def test_an_image_read_as_codes_without_an_entry_takes_ppos_code_image_defaults(tmp_path, env, given, expected):
    config, algo = resolve(TrainConfig(algo="ppo", env=env, out=str(tmp_path), **given))
    source, _ = run_defaults("ppo", env, config.image_codes)
    assert (source, config.cell, algo.rollout_steps, algo.num_minibatches, algo.update_epochs, algo.learning_rate) == expected


def test_options_given_override_the_code_image_defaults_and_drqn_has_none(tmp_path):
    config, algo = resolve(TrainConfig(algo="ppo", env="fake_envs:FakeCodedImage-v0", out=str(tmp_path), cell="lstm"),
                           {"learning_rate": 5e-4})
    assert (config.cell, algo.learning_rate, algo.update_epochs) == ("lstm", 5e-4, ppo.CODE_IMAGE_DEFAULTS["update_epochs"])
    config, algo = resolve(TrainConfig(algo="drqn", env="fake_envs:FakeCodedImage-v0", out=str(tmp_path)))
    assert run_defaults("drqn", "fake_envs:FakeCodedImage-v0", config.image_codes) == ("the generic defaults", {})
    assert (config.cell, algo) == ("lstm", drqn.Config())


@pytest.mark.parametrize(
    "given, encoder, expected",
    [({"image_scale": 0.5}, "cnn", (0.5, 0)), ({"image_codes": 8}, "cnn", (None, 8)), ({}, "flatten", (None, None))],
)
def test_training_resets_no_environment_for_a_reading_it_is_given_or_will_not_use(tmp_path, monkeypatch, given, encoder, expected):
    def probe(env, seed):
        raise AssertionError("the image was probed although its reading is given or unused")

    monkeypatch.setattr("rnnpolicy.train.api.is_coded_image", probe)
    config, _ = resolve(TrainConfig(algo="ppo", env="fake_envs:FakeImageCue-v0", out=str(tmp_path), image_encoder=encoder, **given))
    assert (config.image_scale, config.image_codes) == expected


@pytest.mark.parametrize(
    "given, message",
    [
        ({"image_scale": 0.0}, "image_scale must be a finite number > 0, got 0.0"),
        ({"image_codes": -1}, r"image_codes must be >= 0 \(0: read the image as intensities\), got -1"),
        ({"image_codes": 4, "image_scale": 0.5}, "image_scale 0.5 has nothing to scale: image_codes 4 reads the image one-hot"),
    ],
)
def test_bad_image_reading_is_named(given, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(algo="ppo", env="rnnpolicy/TMaze-v0", out="x", **given)


def test_an_image_of_codes_is_not_scaled():
    with pytest.raises(ValueError, match="an image of codes is not scaled, got codes=8, scale=0.5"):
        ImageSpec("hwc", 7, 7, 3, scale=0.5, codes=8)
    with pytest.raises(ValueError, match="codes=-2"):
        ImageSpec("hwc", 7, 7, 3, codes=-2)
    assert image_spec(_Env(spaces.Box(0, 255, (7, 7, 3), np.uint8)), codes=16) == ImageSpec("hwc", 7, 7, 3, 1.0, codes=16)


def test_only_rank_3_boxes_are_images():
    assert image_spec(_Env(spaces.Box(0, 1, (4,), np.float32))) is None
    assert image_spec(_Env(spaces.Box(0, 1, (4, 4), np.float32))) is None
    assert image_spec(_Env(spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8)}))) is None


@pytest.mark.parametrize(
    "image, convs",
    [(ImageSpec("hwc", 7, 7, 3, 1 / 255), 2), (ImageSpec("chw", 3, 4, 2), 2), (ImageSpec("hwc", 40, 36, 1), 3)],
)
def test_encoder_shapes_for_small_and_large_images(image, convs):
    encoder = ImageEncoder(image, hidden=12)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in encoder.modules()) == convs
    obs = torch.rand(5, 2, image.size)  # (T, B, obs_dim)
    assert encoder(obs).shape == (5, 2, 12)
    assert encoder(obs[0]).shape == (2, 12)


@pytest.mark.parametrize("image, count", [(ImageSpec("hwc", 7, 7, 3, codes=32), 3), (ImageSpec("hwc", 40, 36, 1), 4)])
def test_encoder_layers_start_orthogonal_with_gain_sqrt_2(image, count):
    """CleanRL's and SB3's initialisation: PyTorch's default shrinks the features layer by layer."""
    encoder = ImageEncoder(image, hidden=16)
    layers = [m for m in encoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == count  # the convolutions and the linear layer
    for layer in layers:
        weight = layer.weight.detach().flatten(1)  # (out, in * kh * kw)
        gram = weight @ weight.T if weight.shape[0] <= weight.shape[1] else weight.T @ weight
        torch.testing.assert_close(gram, 2.0 * torch.eye(gram.shape[0]), atol=1e-4, rtol=0)
        assert not layer.bias.detach().any()


def test_encoder_reads_channels_last_and_first_alike():
    hwc, chw = ImageSpec("hwc", 6, 5, 3), ImageSpec("chw", 6, 5, 3)
    a, b = ImageEncoder(hwc, 8), ImageEncoder(chw, 8)
    b.load_state_dict(a.state_dict())
    images = torch.rand(4, 6, 5, 3)  # (N, H, W, C)
    torch.testing.assert_close(a(images.reshape(4, -1)), b(images.permute(0, 3, 1, 2).reshape(4, -1)))


def test_uint8_pixels_are_scaled_to_unit_range():
    raw, scaled = ImageEncoder(ImageSpec("hwc", 5, 5, 3, 1 / 255), 8), ImageEncoder(ImageSpec("hwc", 5, 5, 3), 8)
    scaled.load_state_dict(raw.state_dict())
    pixels = torch.randint(0, 256, (3, 75)).float()
    torch.testing.assert_close(raw(pixels), scaled(pixels / 255))


def test_codes_enter_the_convolutions_one_hot_per_channel():
    encoder = ImageEncoder(ImageSpec("hwc", 5, 4, 2, codes=3), 8)
    assert encoder.convs[0].in_channels == 2 * 3
    codes = torch.tensor([0, 1, 2, 3, -1]).repeat(4 * 2).reshape(1, 5, 4, 2).float()  # (N, H, W, C); 3 and -1 out of range
    planes = encoder.planes(codes.reshape(1, -1))
    expected = torch.stack([(codes[..., c] == k).float() for c in range(2) for k in range(3)], dim=1)  # (N, C * K, H, W)
    torch.testing.assert_close(planes, expected)
    assert planes.sum() == 4 * 2 * 3  # the values outside 0-2 read as all zeros
    assert encoder(codes.reshape(1, -1)).shape == (1, 8)


def test_codes_read_channels_last_and_first_alike():
    hwc, chw = ImageEncoder(ImageSpec("hwc", 6, 5, 3, codes=11), 8), ImageEncoder(ImageSpec("chw", 6, 5, 3, codes=11), 8)
    chw.load_state_dict(hwc.state_dict())
    images = torch.randint(0, 11, (4, 6, 5, 3)).float()  # (N, H, W, C)
    torch.testing.assert_close(hwc(images.reshape(4, -1)), chw(images.permute(0, 3, 1, 2).reshape(4, -1)))


def test_spec_refuses_an_image_that_does_not_fill_the_observation():
    with pytest.raises(ValueError, match=r"image \(7, 7, 3\) holds 147 values, but the observation has 100"):
        PolicySpec(kind="policy", cell="gru", num_layers=1, hidden_size=8, obs_encoding=ObsEncoding.flat(100),
                   action=ActionSpec("discrete", n=2), image=ImageSpec("hwc", 7, 7, 3))


@pytest.mark.parametrize("kind, cell, layout, codes", [("policy", "lstm", "hwc", 0), ("q", "gru", "chw", 0), ("policy", "gru", "hwc", 11)])
def test_cnn_policy_exports_with_onnxruntime_parity(tmp_path, kind, cell, layout, codes):
    image = ImageSpec(layout, 7, 6, 3, 1.0, codes) if codes else ImageSpec(layout, 7, 6, 3, 1 / 255)
    spec = PolicySpec(kind=kind, cell=cell, num_layers=1, hidden_size=16, obs_encoding=ObsEncoding.flat(image.size),
                      action=ActionSpec("discrete", n=3), image=image)
    torch.manual_seed(0)
    model = build_model(spec)
    report = export_checkpoint(save_checkpoint(tmp_path / "checkpoint.pt", spec, model, {}), tmp_path / "export")
    assert report.verify is not None and report.verify.passed, report.verify.failures
    session, onnx_spec = load_onnx_policy(report.onnx_path)
    reading = "one-hot over codes 0-10" if codes else "scaled by 0.00392157"
    assert onnx_spec.image == image and reading in graph_inputs(spec)[0].doc
    assert any(node.op_type == "Conv" for node in onnx.load(str(report.onnx_path)).graph.node)
    # onnxruntime against eager torch on pixel values (or codes, some out of range), batch 5.
    pixels = np.random.default_rng(1).integers(-1, codes + 2 if codes else 256, (5, image.size)).astype(np.float32)
    feed = {"obs": pixels, "episode_start": np.ones(5, np.float32), **zero_state(spec, 5)}
    outputs = session.run(None, feed)
    with torch.no_grad():
        heads, _ = model.step(torch.from_numpy(pixels), initial_state(spec, 5), torch.ones(5))
    np.testing.assert_allclose(outputs[0], heads[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(outputs[1], heads[1].numpy())


def _train(tmp_path, env="fake_envs:FakeImageCue-v0", **config):
    return train(TrainConfig(algo="ppo", env=env, out=str(tmp_path), hidden_size=16, progress=False, **config),
                 dict(num_envs=4, rollout_steps=32, seq_len=16, num_minibatches=2, update_epochs=1))


def test_training_on_images_uses_the_cnn_by_default_and_flattening_on_request(tmp_path):
    cnn = load_checkpoint(_train(tmp_path / "cnn", total_steps=256))
    assert cnn.spec.image == ImageSpec("hwc", 7, 7, 3, 1 / 255) and cnn.spec.format_version == 2
    assert isinstance(cnn.build().actor_encoder, ImageEncoder)
    given = load_checkpoint(_train(tmp_path / "given", total_steps=256, image_scale=0.5))
    assert given.spec.image == ImageSpec("hwc", 7, 7, 3, 0.5)
    flat = load_checkpoint(_train(tmp_path / "flat", total_steps=256, image_encoder="flatten"))
    assert flat.spec.image is None and flat.spec.format_version == 1
    assert not isinstance(flat.build().actor_encoder, ImageEncoder)
    assert evaluate(tmp_path / "cnn" / "checkpoint.pt", episodes=4).episodes == 4


def test_training_on_a_code_image_reads_it_one_hot_and_exports_it(tmp_path):
    path = _train(tmp_path, env="fake_envs:FakeCodedImage-v0", total_steps=256)
    assert load_checkpoint(path).spec.image == ImageSpec("hwc", 7, 7, 3, 1.0, codes=CODED_IMAGE_LIMIT)
    report = export_checkpoint(path, tmp_path / "export")
    assert report.verify is not None and report.verify.passed, report.verify.failures


@pytest.mark.slow
def test_cnn_policy_learns_an_image_cue(tmp_path):
    path = train(TrainConfig(algo="ppo", env="fake_envs:FakeImageCue-v0", out=str(tmp_path), hidden_size=32,
                             total_steps=20_000, progress=False),
                 dict(num_envs=8, rollout_steps=32, seq_len=32, num_minibatches=2, update_epochs=4, learning_rate=3e-3))
    assert evaluate(path, episodes=100).success_rate >= 0.95
