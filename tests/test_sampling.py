"""SamplingConfig: the defaults of Generator.generate, checked when built (in code or from config.json)."""

import dataclasses

import pytest

from vssflow.errors import InputError
from vssflow.sampling import GV_MODES, SamplingConfig


def test_defaults_are_the_papers_sampler_with_the_postfilter_off():
    s = SamplingConfig()
    assert (s.steps, s.cfg_scale, s.method, s.cfg_rescale, s.noise_scale) == (16, 3.0, "euler", 0.0, 1.0)
    assert s.gv_max_ratio == 1.0 and s.gv_mode == "level" and s.gv_mode in GV_MODES
    assert SamplingConfig(**s.__dict__) == s  # what save_pretrained writes, from_pretrained rebuilds


@pytest.mark.parametrize(
    "field,value",
    [("gv_max_ratio", 0.5), ("gv_max_ratio", float("nan")), ("gv_mode", "loud"), ("noise_scale", -0.1),
     ("noise_scale", 3.0)],
)  # fmt: skip
def test_a_bad_option_is_a_one_line_error_naming_it(field, value):
    with pytest.raises(InputError, match=field) as e:
        dataclasses.replace(SamplingConfig(), **{field: value})
    assert "\n" not in str(e.value)
    assert dataclasses.replace(SamplingConfig(), gv_max_ratio=10.0, noise_scale=0.0).noise_scale == 0.0  # the bounds
