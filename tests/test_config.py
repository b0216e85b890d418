"""The configuration file: what loads, what is refused, and how the refusal reads.

Every problem is reported at once, named by its key path; ``diemcau check``
prints the effective configuration with secrets masked and exits 2 on problems.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from diemcau.config import Config, ConfigError, effective_config, load_config, parse_config
from diemcau.protocol import generate_signing_key, public_key_to_text
from tests.harness.box import box_config

KEY = public_key_to_text(generate_signing_key().public_key())
OTHER_KEY = public_key_to_text(generate_signing_key().public_key())

# Only what has no default.
MINIMAL = f"""\
[device]
id = "c00001-r1"

[site]
name = "UBND xã Thử Nghiệm"
province = "p01"
district = "d001"
commune = "c00001"

[mqtt]
host = "mqtt.diemcau.gov.vn"

[commands]
media_hosts = ["media.diemcau.gov.vn"]

[commands.centre_keys]
centre-2024 = "{KEY}"
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "endpoint.toml")
    assert caught.value.source == "endpoint.toml"
    assert caught.value.problems
    return caught.value.problems


def edit(text: str, section: str, *lines: str) -> str:
    """``text`` with ``lines`` added at the top of ``[section]``."""
    header = f"[{section}]\n"
    assert header in text, section
    return text.replace(header, header + "".join(f"{line}\n" for line in lines), 1)


def toml_string(value: str) -> str:
    """``value`` written as a TOML string, escapes and all."""
    return tomli_w.dumps({"x": value}).removeprefix("x = ").rstrip("\n")


def without(text: str, line: str) -> str:
    assert line in text, line
    return text.replace(line + "\n", "", 1)


# ---------------------------------------------------------------- valid files


def test_the_test_harness_config_loads(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    broker = SimpleNamespace(port=18883, tls=True, ca_file=ca_file)
    text = box_config(device_id="c00001-r1", broker=broker, state_dir=tmp_path / "state",  # type: ignore[arg-type]
                      keys={"k1": KEY, "k2": OTHER_KEY})
    cfg = parse_config(text)
    assert cfg.config_version == "test-1"
    assert cfg.device.id == "c00001-r1"
    assert cfg.device.state_dir == str(tmp_path / "state")
    assert cfg.site.room == "Phòng họp 1"
    assert (cfg.mqtt.port, cfg.mqtt.keepalive_s, cfg.mqtt.reconnect_min_s) == (18883, 5, 0.2)
    assert cfg.mqtt.tls.enabled and cfg.mqtt.tls.ca_file == str(ca_file)
    assert cfg.commands.centre_keys == {"k1": KEY, "k2": OTHER_KEY}
    assert cfg.media.microphone == "diemcau_mic"
    assert cfg.health.clock_check == "none"
    assert cfg.log.level == "debug"
    assert cfg.groups == ["p01", "d001", "c00001", "all"]
    assert cfg.audiences == {"c00001-r1", "group:p01", "group:d001", "group:c00001",
                             "group:all"}


def test_defaults_are_filled_in() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.config_version == "unversioned"
    assert (cfg.device.model, cfg.device.serial, cfg.device.state_dir) == (
        "auto", "auto", "/var/lib/diemcau")
    assert cfg.site.room == ""
    assert cfg.mqtt.port == 8883
    assert (cfg.mqtt.username, cfg.mqtt.password) == ("", "")
    assert cfg.mqtt.tls.enabled is True
    assert cfg.mqtt.tls.insecure_skip_verify is False
    assert cfg.commands.allowed_schemes == ["srt"]
    assert cfg.commands.leeway_s == 30.0
    assert cfg.commands.max_token_lifetime_s == 86400
    assert cfg.outbox.max_messages == 2000
    assert cfg.media.camera == "test_pattern"
    assert (cfg.media.sample_rate_hz, cfg.media.channels, cfg.media.audio_codec) == (48000, 1, "aac")
    assert cfg.health.interval_s == 30.0
    assert cfg.log.level == "info"


def test_the_effective_config_is_itself_a_valid_config() -> None:
    cfg = parse_config(MINIMAL)
    printed = tomli_w.dumps(effective_config(cfg))
    assert parse_config(printed) == cfg
    assert "max_messages = 2000" in printed


def test_secrets_are_masked_in_the_effective_config() -> None:
    cfg = parse_config(edit(MINIMAL, "mqtt", 'username = "c00001-r1"', 'password = "hunter2"'))
    assert cfg.mqtt.password == "hunter2"
    shown = effective_config(cfg)
    assert shown["mqtt"]["password"] == "***"
    assert shown["mqtt"]["username"] == "c00001-r1"
    assert "hunter2" not in repr(shown)
    # An empty password is shown as empty: "***" would suggest there is one.
    assert effective_config(parse_config(MINIMAL))["mqtt"]["password"] == ""


def test_the_srt_passphrase_is_masked_too() -> None:
    cfg = parse_config(MINIMAL + '\n[media]\nsrt_passphrase = "tre-xanh-nuoc-bac"\n')
    assert cfg.media.srt_passphrase == "tre-xanh-nuoc-bac"
    shown = effective_config(cfg)
    assert shown["media"]["srt_passphrase"] == "***"
    assert "tre-xanh" not in repr(shown)


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoint.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert load_config(path) == parse_config(MINIMAL)
    assert load_config(str(path)).site.name == "UBND xã Thử Nghiệm"


# ---------------------------------------------------------------- refused, with reasons


def test_an_unknown_key_suggests_the_known_one() -> None:
    problems = problems_of(edit(MINIMAL, "mqtt", "prot = 1883"))
    assert problems == ["mqtt.prot: unknown key (did you mean 'port'?)"]


def test_unknown_keys_at_every_level() -> None:
    text = edit(MINIMAL, "mqtt", "keepalive = 30", "tls.ca_flie = '/etc/ssl/ca.pem'")
    text = "config_versoin = 'x'\n" + text + "\n[mdia]\ncamera = 'test_pattern'\n[outbox]\nqwertyuiop = 1\n"
    problems = problems_of(text)
    assert "config_versoin: unknown key (did you mean 'config_version'?)" in problems
    assert "mqtt.keepalive: unknown key (did you mean 'keepalive_s'?)" in problems
    assert "mqtt.tls.ca_flie: unknown key (did you mean 'ca_file'?)" in problems
    assert "mdia: unknown key (did you mean 'media'?)" in problems
    assert "outbox.qwertyuiop: unknown key" in problems  # nothing close: no suggestion
    assert len(problems) == 5


def test_wrong_types_are_all_named_by_key_path() -> None:
    text = edit(MINIMAL, "mqtt", 'port = "8883"', "tls.enabled = 'yes'")
    text += '\n[media]\nsample_rate_hz = "48000"\naudio_codec = "mp3"\n[log]\nlevel = 3\n'
    problems = problems_of(text)
    assert "mqtt.port: expected int, got str" in problems
    assert "mqtt.tls.enabled: expected bool, got str" in problems
    assert "media.sample_rate_hz: expected int, got str" in problems
    assert any(p.startswith("media.audio_codec: invalid enum value 'mp3'") for p in problems)
    assert any(p.startswith("log.level: expected str") for p in problems)
    assert len(problems) == 5


def test_wrong_types_inside_lists_and_tables() -> None:
    text = MINIMAL.replace('media_hosts = ["media.diemcau.gov.vn"]', 'media_hosts = ["a", 7]')
    text = text.replace(f'centre-2024 = "{KEY}"', "centre-2024 = 5")
    problems = problems_of(text)
    assert "commands.media_hosts.1: expected str, got int" in problems
    assert "commands.centre_keys.centre-2024: expected str, got int" in problems


def test_unknown_keys_and_wrong_types_are_reported_together() -> None:
    problems = problems_of(edit(MINIMAL, "mqtt", "prot = 1", 'port = "x"'))
    assert len(problems) == 2
    assert problems[0].startswith("mqtt.prot: unknown key")
    assert problems[1] == "mqtt.port: expected int, got str"


def test_a_section_that_is_not_a_table() -> None:
    problems = problems_of("outbox = 5\n" + MINIMAL)
    assert problems == ["outbox: expected object, got int"]


@pytest.mark.parametrize("section", ["device", "site", "mqtt", "commands"])
def test_a_missing_section(section: str) -> None:
    start = MINIMAL.index(f"[{section}]")
    end = MINIMAL.find("\n[", start + 1)
    end = len(MINIMAL) if end < 0 else end
    if section == "commands":  # [commands.centre_keys] goes with it
        end = len(MINIMAL)
    problems = problems_of(MINIMAL[:start] + MINIMAL[end:])
    assert f"{section}: missing section [{section}]" in problems


@pytest.mark.parametrize(("line", "key"), [
    ('id = "c00001-r1"', "device.id"),
    ('host = "mqtt.diemcau.gov.vn"', "mqtt.host"),
    ('province = "p01"', "site.province"),
    ('media_hosts = ["media.diemcau.gov.vn"]', "commands.media_hosts"),
])
def test_a_missing_required_key(line: str, key: str) -> None:
    assert problems_of(without(MINIMAL, line)) == [f"{key}: missing (required)"]


@pytest.mark.parametrize("device_id", ["C00001-R1", "c00001 r1", "", "-c00001", "c00001/r1",
                                       "c00001-r1\n", "c00001+", "x" * 65, "xã-1"])
def test_a_bad_device_id(device_id: str) -> None:
    text = MINIMAL.replace('id = "c00001-r1"', f"id = {toml_string(device_id)}")
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("device.id: "), problems
    assert "lower-case letters" in problems[0]


def test_bad_group_codes_are_all_reported() -> None:
    text = (MINIMAL.replace('province = "p01"', 'province = "P01"')
            .replace('district = "d001"', 'district = "d 001"')
            .replace('commune = "c00001"', 'commune = "c00001#"'))
    problems = problems_of(text)
    assert [p.split(":")[0] for p in problems] == ["site.province", "site.district", "site.commune"]


@pytest.mark.parametrize("key_text", [
    "not-a-key",
    KEY[:-4],  # too short
    KEY + "AAAA",  # too long
    "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
    "",
])
def test_bad_centre_key_text(key_text: str) -> None:
    text = MINIMAL.replace(f'centre-2024 = "{KEY}"', f"centre-2024 = {toml_string(key_text)}")
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("commands.centre_keys.centre-2024: not an Ed25519 public key")


@pytest.mark.parametrize(("line", "problem"), [
    ("max_token_lifetime_s = 119", "commands.max_token_lifetime_s: must be 120-604800 s"),
    ("max_token_lifetime_s = 604801", "commands.max_token_lifetime_s: must be 120-604800 s"),
    ("max_token_lifetime_s = 315360000", "commands.max_token_lifetime_s: must be 120-604800 s"),
    ("leeway_s = -1", "commands.leeway_s: must be 0-300 s"),
    ("leeway_s = 301", "commands.leeway_s: must be 0-300 s"),
    ("max_token_lifetime_s = 1.5", "commands.max_token_lifetime_s: expected int, got float"),
])
def test_command_time_limits_are_bounded(line: str, problem: str) -> None:
    problems = problems_of(edit(MINIMAL, "commands", line))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize("line", ["max_token_lifetime_s = 120", "max_token_lifetime_s = 604800",
                                  "leeway_s = 0", "leeway_s = 300"])
def test_command_time_limits_at_their_bounds(line: str) -> None:
    parse_config(edit(MINIMAL, "commands", line))


def test_a_pem_centre_key_is_accepted() -> None:
    from cryptography.hazmat.primitives import serialization

    pem = generate_signing_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    text = MINIMAL.replace(f'centre-2024 = "{KEY}"', f"pem = {toml_string(pem)}")
    assert list(parse_config(text).commands.centre_keys) == ["pem"]


def test_no_centre_key_at_all() -> None:
    problems = problems_of(without(MINIMAL, f'centre-2024 = "{KEY}"'))
    assert problems == ["commands.centre_keys: at least one centre key is needed"]


def test_missing_tls_files(tmp_path: Path) -> None:
    text = MINIMAL + (f'\n[mqtt.tls]\nca_file = "{tmp_path}/ca.pem"\ncert_file = "{tmp_path}/box.pem"\n'
                      f'key_file = "{tmp_path}/box.key"\n')
    problems = problems_of(text)
    assert problems == [
        f"mqtt.tls.ca_file: no such file '{tmp_path}/ca.pem'",
        f"mqtt.tls.cert_file: no such file '{tmp_path}/box.pem'",
        f"mqtt.tls.key_file: no such file '{tmp_path}/box.key'",
    ]


def test_tls_files_that_exist(tmp_path: Path) -> None:
    for name in ("ca.pem", "box.pem", "box.key"):
        (tmp_path / name).write_text("x")
    text = MINIMAL + (f'\n[mqtt.tls]\nca_file = "{tmp_path}/ca.pem"\ncert_file = "{tmp_path}/box.pem"\n'
                      f'key_file = "{tmp_path}/box.key"\n')
    assert parse_config(text).mqtt.tls.key_file == f"{tmp_path}/box.key"


def test_a_certificate_without_its_key(tmp_path: Path) -> None:
    (tmp_path / "box.pem").write_text("x")
    problems = problems_of(MINIMAL + f'\n[mqtt.tls]\ncert_file = "{tmp_path}/box.pem"\n')
    assert problems == ["mqtt.tls: cert_file and key_file go together"]


def test_a_tls_directory_is_not_a_file(tmp_path: Path) -> None:
    problems = problems_of(MINIMAL + f'\n[mqtt.tls]\nca_file = "{tmp_path}"\n')
    assert problems == [f"mqtt.tls.ca_file: no such file '{tmp_path}'"]


@pytest.mark.parametrize(("lines", "section", "key"), [
    (["port = 0"], "mqtt", "mqtt.port"),
    (["port = 65536"], "mqtt", "mqtt.port"),
    (["reconnect_min_s = 10.0", "reconnect_max_s = 5.0"], "mqtt", "mqtt.reconnect_min_s"),
    (["reconnect_min_s = 0.0"], "mqtt", "mqtt.reconnect_min_s"),
    (['allowed_schemes = ["srt", "http"]'], "commands", "commands.allowed_schemes"),
])
def test_values_out_of_range(lines: list[str], section: str, key: str) -> None:
    problems = problems_of(edit(MINIMAL, section, *lines))
    assert len(problems) == 1
    assert problems[0].startswith(key), problems


@pytest.mark.parametrize(("extra", "key"), [
    ("[outbox]\nmax_messages = 5", "outbox.max_messages"),
    ("[media]\nchannels = 3", "media.channels"),
    ("[health]\ninterval_s = 0.5", "health.interval_s"),
    ("[media]\nsrt_passphrase = 'short'", "media.srt_passphrase"),
    ("[media]\nsend_queue_ms = 50", "media.send_queue_ms"),
    ("[media]\nreconnect_min_s = 5.0\nreconnect_max_s = 2.0", "media.reconnect_min_s"),
])
def test_section_values_out_of_range(extra: str, key: str) -> None:
    problems = problems_of(MINIMAL + "\n" + extra + "\n")
    assert len(problems) == 1
    assert problems[0].startswith(key), problems


@pytest.mark.parametrize("text", [
    "[mqtt\nhost = 'x'",
    "device = {id = 'a'",
    "a = 1\na = 2",
    "key = \"unterminated",
    "= 5",
    "x = 1\0",
])
def test_text_that_is_not_toml(text: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("not valid TOML: ")


@pytest.mark.parametrize("nested", ["a = " + "[" * 5000, "a = " + "{b = " * 5000])
def test_toml_nested_too_deeply_is_a_config_error(nested: str) -> None:
    assert problems_of(nested) == ["not valid TOML: nested too deeply"]


def test_an_empty_file_lists_every_missing_section() -> None:
    problems = problems_of("")
    assert problems == [f"{s}: missing section [{s}]" for s in ("device", "site", "mqtt", "commands")]


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert caught.value.problems == ["file not found"]


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(MINIMAL.encode("utf-8").replace("xã".encode(), "xã".encode("latin-1")))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(latin1)


def test_the_report_lists_every_problem_on_its_own_line() -> None:
    error = ConfigError("/etc/diemcau/endpoint.toml", ["mqtt.prot: unknown key", "media.channels: 1 or 2"])
    assert error.report() == (
        "configuration /etc/diemcau/endpoint.toml has 2 problem(s):\n"
        "  mqtt.prot: unknown key\n"
        "  media.channels: 1 or 2"
    )
    assert str(error) == "/etc/diemcau/endpoint.toml: mqtt.prot: unknown key; media.channels: 1 or 2"


# ---------------------------------------------------------------- diemcau check


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DIEMCAU_CONFIG"}
    return subprocess.run([sys.executable, "-m", "diemcau", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_check_prints_the_effective_config_with_the_password_masked(tmp_path: Path) -> None:
    path = tmp_path / "endpoint.toml"
    path.write_text(edit(MINIMAL, "mqtt", 'username = "c00001-r1"', 'password = "hunter2"'),
                    encoding="utf-8")
    done = run_check(path)
    assert done.returncode == 0, done.stderr
    assert "configuration is valid" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr
    shown = tomllib.loads(done.stdout)
    assert shown["mqtt"]["password"] == "***"
    assert shown["mqtt"]["username"] == "c00001-r1"
    assert shown["outbox"]["max_messages"] == 2000  # a default, filled in
    assert shown["commands"]["centre_keys"] == {"centre-2024": KEY}
    assert shown["site"]["name"] == "UBND xã Thử Nghiệm"


def test_check_of_a_config_with_a_typo_exits_2_and_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "endpoint.toml"
    path.write_text(edit(MINIMAL, "mqtt", "prot = 1883"), encoding="utf-8")
    done = run_check(path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"configuration {path} has 1 problem(s)" in done.stderr
    assert "mqtt.prot: unknown key (did you mean 'port'?)" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    done = run_check(tmp_path / "nowhere.toml")
    assert done.returncode == 2
    assert "file not found" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- properties

TOML_BITS = st.sampled_from([
    "[device]", "[mqtt]", "[mqtt.tls]", "[commands.centre_keys]", "[[a]]", "[", "]", "{", "}",
    "id", "port", "host", "tls", "=", " = ", ".", ",", "'", '"', '"""', "'''", "\n", "\\", "#",
    "8883", "-1", "1e400", "nan", "inf", "0x1F", "true", "1979-05-27", "07:32:00",
    "1979-05-27T07:32:00Z", '"c00001-r1"', "[1, 2]", "{a = 1}", "ă", "\t", "\r\n",
])
TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)


@given(st.text(max_size=200) | st.lists(TOML_BITS, max_size=40).map("".join))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        cfg = parse_config(text)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        exc.report()
    else:
        assert isinstance(cfg, Config)


def valid_dict() -> dict[str, Any]:
    return tomllib.loads(MINIMAL + """
[mqtt.tls]
enabled = false
[outbox]
max_messages = 2000
[media]
channels = 1
audio_codec = "aac"
[health]
interval_s = 30.0
[log]
level = "info"
""")


FIELDS = ["id", "model", "state_dir", "name", "province", "commune", "host", "port", "password",
          "tls", "enabled", "ca_file", "cert_file", "centre_keys", "media_hosts", "allowed_schemes",
          "max_messages", "camera", "channels", "sample_rate_hz", "interval_s", "level",
          "centre-2024", "config_version", "device", "site", "mqtt", "commands", "media", "log"]
# Values of about the right type, so that some changes pass the type checks and
# reach the checks of meaning (ranges, names, keys, files).
PLAUSIBLE = st.sampled_from([
    0, 1, 2, 3, 9, 65536, -1, 0.0, 0.5, 1e9, float("nan"), float("inf"), True, False,
    "", "P01", "c00001", "d 001", "srt", "http", "/nonexistent/ca.pem", "not-a-key", KEY,
    "info", "loud", "aac", "test_pattern", ["srt"], ["http", "srt"], [], {}, {"k": KEY},
    {"k": "x"},
])


@st.composite
def mutated_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid configuration with a few keys changed, removed or added, anywhere."""
    data = valid_dict()
    for _ in range(draw(st.integers(1, 3))):
        node: Any = data
        while draw(st.integers(0, 2)):
            tables = sorted(k for k, v in node.items() if isinstance(v, dict))
            if not tables:
                break
            node = node[draw(st.sampled_from(tables))]
        # Mostly a key that is there, now and then a misspelt or made-up one.
        known = node and draw(st.integers(0, 3)) > 0
        key = draw(st.sampled_from(sorted(node)) if known else st.sampled_from(FIELDS)
                   | st.text(max_size=8))
        if key in node and draw(st.integers(0, 4)) == 0:
            del node[key]
        else:
            # A copy: a drawn table is mutated by later steps and must not leak into
            # the next example.
            node[key] = copy.deepcopy(draw(PLAUSIBLE if draw(st.integers(0, 3)) > 0 else TOML_VALUES))
    return data


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_dicts())
def test_any_nested_data_gives_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(data)
    except Exception:  # noqa: BLE001 - data TOML cannot express is not the loader's problem
        reject()
    try:
        parse_config(text)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert ": " in problem, problem  # "key.path: what is wrong"


# ---------------------------------------------------------------- several brokers


def test_fallback_hosts_come_after_host_in_order() -> None:
    cfg = parse_config(edit(MINIMAL, "mqtt", "port = 1883",
                            'fallback_hosts = ["b.example", "c.example:8884", "[2001:db8::3]:1884"]'),
                       "endpoint.toml")
    assert cfg.mqtt.addresses() == [("mqtt.diemcau.gov.vn", 1883), ("b.example", 1883),
                                     ("c.example", 8884), ("2001:db8::3", 1884)]
    assert parse_config(MINIMAL, "x").mqtt.addresses() == [("mqtt.diemcau.gov.vn", 8883)]


@pytest.mark.parametrize("address", ["b.example:0", "b.example:http", "b example", "", "b.example:",
                                     "[2001:db8::3"])
def test_a_bad_fallback_host_is_named(address: str) -> None:
    problems = problems_of(edit(MINIMAL, "mqtt", f"fallback_hosts = [{toml_string(address)}]"))
    assert len(problems) == 1 and problems[0].startswith("mqtt.fallback_hosts: "), problems
