import json

import pytest

from rnnpolicy import ActionSpec, ImageSpec, LmuSpec, ObsEncoding, ObsNormSpec, PolicySpec
from rnnpolicy.spec import FORMAT_VERSION


def make_spec(**overrides) -> PolicySpec:
    values = dict(
        kind="policy",
        cell="lstm",
        num_layers=2,
        hidden_size=16,
        obs_encoding=ObsEncoding.flat(3),
        action=ActionSpec("box", shape=(2,), low=(-1.0, -2.0), high=(1.0, 2.0)),
        num_cores=2,
        obs_norm=ObsNormSpec(mean=(0.0, 1.0, 2.0), var=(1.0, 2.0, 3.0)),
        env_id="rnnpolicy/PendulumNoVel-v0",
        algo="ppo",
    )
    values.update(overrides)
    return PolicySpec(**values)


def test_json_round_trip_keeps_every_field():
    spec = make_spec()
    assert PolicySpec.from_json(spec.to_json()) == spec


def test_state_tensors_and_io_names_follow_the_cell():
    lstm = make_spec()
    assert [s.name for s in lstm.state_tensors] == ["state_h", "state_c"]
    assert lstm.state_tensors[0].shape == (4, "batch", 16)  # 2 layers x 2 cores
    assert lstm.input_names == ("obs", "episode_start", "state_h", "state_c")
    assert lstm.output_names == ("mean", "log_std", "action", "value", "next_state_h", "next_state_c")
    gru_q = make_spec(kind="q", cell="gru", num_cores=1, action=ActionSpec("discrete", n=3))
    assert gru_q.input_names == ("obs", "episode_start", "state_h")
    assert gru_q.output_names == ("q_values", "action", "next_state_h")
    discrete = make_spec(action=ActionSpec("discrete", n=3))
    assert discrete.output_names[:3] == ("logits", "action", "value")


def test_dict_form_documents_shapes_and_initial_state():
    data = json.loads(make_spec().to_json())
    assert data["state_tensors"][0] == {"name": "state_h", "shape": [4, "batch", 16]}
    assert data["initial_state"] == "zeros"
    assert data["format_version"] == 1  # nothing here needs version 2: older readers still load it
    assert "image" not in data and "nvec" not in data["action"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(kind="value"), "policy kind must be one of"),
        (dict(cell="rnn"), "cell must be one of"),
        (dict(hidden_size=0), "hidden_size >= 1"),
        (dict(kind="q"), "Q-network needs a discrete action space, got box"),
        (dict(kind="q", action=ActionSpec.multi_binary((2,))), "Q-network needs a discrete action space, got multi_binary"),
    ],
)
def test_invalid_specs_name_the_bad_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_spec(**overrides)


def test_foreign_format_version_is_refused():
    data = json.loads(make_spec().to_json())
    data["format_version"] = 99
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        PolicySpec.from_dict(data)


def test_malformed_json_is_refused():
    with pytest.raises(ValueError, match="not valid JSON"):
        PolicySpec.from_json("{nope")
    data = json.loads(make_spec().to_json())
    del data["action"]
    with pytest.raises(ValueError, match="missing or has a malformed field"):
        PolicySpec.from_dict(data)


def test_action_spec_validation():
    with pytest.raises(ValueError, match="n >= 1, got n=0"):
        ActionSpec("discrete", n=0)
    with pytest.raises(ValueError, match="equal size"):
        ActionSpec("box", shape=(2,), low=(0.0,), high=(1.0, 1.0))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(action=ActionSpec.multi_discrete((3, 2, 4))),
        dict(action=ActionSpec.multi_discrete((3, 2, 4, 5), shape=(2, 2))),
        dict(action=ActionSpec.multi_binary((2, 3))),
        dict(obs_encoding=ObsEncoding.flat(147), obs_norm=None, image=ImageSpec("hwc", 7, 7, 3, 1 / 255)),
        dict(obs_encoding=ObsEncoding.flat(48), obs_norm=None, image=ImageSpec("chw", 4, 4, 3),
             action=ActionSpec.multi_binary((5,))),
        dict(obs_encoding=ObsEncoding.flat(147), obs_norm=None, image=ImageSpec("hwc", 7, 7, 3, codes=32)),
    ],
)
def test_version_2_specs_round_trip_and_say_so(overrides):
    spec = make_spec(**overrides)
    data = json.loads(spec.to_json())
    assert data["format_version"] == 2
    assert PolicySpec.from_json(spec.to_json()) == spec


def test_a_legendre_memory_cell_has_a_memory_state_of_its_own_width_and_format_3():
    spec = make_spec(cell="lmu", lmu=LmuSpec(order=8, theta=20.0, memory_inputs=3))
    assert [(s.name, s.shape) for s in spec.state_tensors] == [("state_h", (4, "batch", 16)), ("state_m", (4, "batch", 24))]
    assert spec.input_names[-2:] == ("state_h", "state_m") and spec.output_names[-2:] == ("next_state_h", "next_state_m")
    data = json.loads(spec.to_json())
    assert data["format_version"] == 3 == FORMAT_VERSION
    assert data["lmu"] == {"order": 8, "theta": 20.0, "memory_inputs": 3}
    assert PolicySpec.from_json(spec.to_json()) == spec
    assert "lmu" not in json.loads(make_spec().to_json())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(cell="lmu"), "a Legendre memory \\(lmu\\) is set exactly for cell 'lmu', got cell 'lmu' with lmu=None"),
        (dict(lmu=LmuSpec()), "got cell 'lstm' with lmu=LmuSpec"),
    ],
)
def test_a_legendre_memory_needs_its_cell_and_sane_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_spec(**overrides)
    with pytest.raises(ValueError, match="a finite theta > 0, got order=32, memory_inputs=2, theta=0.0"):
        LmuSpec(theta=0.0)
    with pytest.raises(ValueError, match="a finite theta > 0, got order=32, memory_inputs=2, theta=inf"):
        LmuSpec(theta=float("inf"))  # the delay system's matrix would be singular


def test_an_image_spec_written_before_codes_reads_as_intensities():
    data = json.loads(make_spec(obs_encoding=ObsEncoding.flat(147), obs_norm=None, image=ImageSpec("hwc", 7, 7, 3, 1 / 255)).to_json())
    del data["image"]["codes"]
    assert PolicySpec.from_dict(data).image == ImageSpec("hwc", 7, 7, 3, 1 / 255, codes=0)


def test_a_version_1_spec_written_before_version_2_still_loads():
    # What rnnpolicy 0.1 wrote: format_version 1, no "image" key, no "nvec" in the action.
    data = json.loads(make_spec(action=ActionSpec("discrete", n=3)).to_json())
    assert data["format_version"] == 1
    spec = PolicySpec.from_dict(data)
    assert spec.action == ActionSpec("discrete", n=3) and spec.image is None and spec.format_version == 1


def test_factored_action_spec_validation():
    spec = ActionSpec.multi_discrete((3, 2))
    assert (spec.dim, spec.num_logits, spec.is_factored, spec.is_discrete) == (2, 5, True, False)
    with pytest.raises(ValueError, match=r"one count >= 1 per entry of its shape, got shape=\(3,\), nvec=\(3, 2\)"):
        ActionSpec("multi_discrete", shape=(3,), nvec=(3, 2))
    with pytest.raises(ValueError, match=r"2 choices per entry, got nvec=\(2, 3\)"):
        ActionSpec("multi_binary", shape=(2,), nvec=(2, 3))
    with pytest.raises(ValueError, match="action kind must be one of"):
        ActionSpec("multi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"image layout must be one of \('hwc', 'chw'\), got 'whc'"):
        ImageSpec("whc", 7, 7, 3)  # type: ignore[arg-type]
