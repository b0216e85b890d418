"""The microphone adapter on real ALSA: the ``file`` plugin plays known samples as a capture PCM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diemcau.config import Media
from diemcau.media.defs import MediaFault
from diemcau.media.microphone import Microphone
from tests.harness.alsa import make_microphone, microphone_from_samples


@pytest.fixture
def alsa_env(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    def use(mic) -> None:  # noqa: ANN001
        for key, value in mic.env.items():
            monkeypatch.setenv(key, value)
    return use


def test_reads_one_20_ms_period_of_the_samples_as_they_were(tmp_path: Path, alsa_env) -> None:  # noqa: ANN001
    ramp = (np.arange(48000 * 2) % 2000 - 1000) / 32767  # a known sawtooth, two seconds
    mic_file = microphone_from_samples(tmp_path, ramp)
    alsa_env(mic_file)
    mic = Microphone(Media(microphone=mic_file.pcm, sample_rate_hz=48000, channels=1))
    assert mic.period_frames == 960
    mic.open()
    try:
        periods = [np.frombuffer(mic.read(), "<i2") for _ in range(5)]
    finally:
        mic.close()
    got = np.concatenate(periods)
    assert [p.size for p in periods] == [960] * 5
    assert np.array_equal(got, np.round(ramp[:got.size] * 32767).astype(np.int16))


def test_stereo_periods_are_interleaved(tmp_path: Path, alsa_env) -> None:  # noqa: ANN001
    mic_file = make_microphone(tmp_path, channels=2, seconds=2)
    alsa_env(mic_file)
    mic = Microphone(Media(microphone=mic_file.pcm, channels=2))
    mic.open()
    try:
        samples = np.frombuffer(mic.read(), "<i2").reshape(-1, 2)
    finally:
        mic.close()
    assert samples.shape == (960, 2)
    assert np.array_equal(samples[:, 0], samples[:, 1]), "the tone is on both channels"
    assert np.abs(samples).max() > 8000  # -12 dBFS peak: about 8,200


def test_a_microphone_that_is_not_there_is_a_fault_naming_it(tmp_path: Path, alsa_env) -> None:  # noqa: ANN001
    alsa_env(make_microphone(tmp_path, seconds=1))
    mic = Microphone(Media(microphone="diemcau_no_such_mic"))
    with pytest.raises(MediaFault, match="microphone 'diemcau_no_such_mic' cannot be opened"):
        mic.open()
    mic.close()  # nothing to close: fine
