"""Config: the documented default file equals the built-in defaults; errors
are one clear line naming the key."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from smtpfw.config import Config, ConfigError, from_mapping, load_config
from tests.support.cli import run
from tests.support.server import REPO


def test_documented_default_file_matches_builtin_defaults():
    cfg = load_config(REPO / "config" / "smtpfw.yaml")
    assert replace(cfg, source="") == Config()


def test_every_setting_is_documented():
    """Each setting is a key of its own section in the file (not a substring
    of another key's line: `timeout:` is in `idle_timeout:`)."""
    from smtpfw.config import SCHEMA
    documented = yaml.safe_load((REPO / "config" / "smtpfw.yaml").read_text())
    for section, keys in SCHEMA.items():
        table = documented if section == "" else documented.get(section)
        assert isinstance(table, dict), f"section {section} is not in config/smtpfw.yaml"
        for key in keys:
            assert key in table, f"{section}.{key} is not in config/smtpfw.yaml"


@pytest.mark.parametrize("data,message", [
    ({"limits": {"max_recipient": 5}}, "unknown setting limits.max_recipient (did you mean limits.max_recipients?)"),
    ({"listn": ["1.2.3.4:25"]}, "unknown setting listn (did you mean listen?)"),
    ({"limits": {"max_recipients": "many"}}, "limits.max_recipients: expected a whole number, got 'many'"),
    ({"dns": {"timeout": -1}}, "dns.timeout: must not be negative"),
    ({"delivery": {"mode": "smtp"}}, "delivery.mode: expected one of maildir, forward, got 'smtp'"),
    ({"delivery": {"mode": "forward"}}, "delivery.mode is forward but delivery.forward (HOST:PORT) is not set"),
    ({"listen": ["localhost"]}, "listen[0]: expected HOST:PORT"),
    ({"recording": {"enabled": "yes"}}, "recording.enabled: expected true or false, got 'yes'"),
    ([1, 2], "the top level must be a mapping"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_mapping(data, "site.yaml")
    assert message in str(err.value)


def test_sizes_and_forward():
    cfg = from_mapping({"limits": {"max_message_size": "25M"},
                        "delivery": {"mode": "forward", "forward": "[::1]:2526"}})
    assert cfg.max_message_size == 25 * 1024 * 1024
    assert (cfg.forward_host, cfg.forward_port) == ("::1", 2526)


def test_cli_config_error_exit_2_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits:\n  max_recipient: 3\n")
    proc = run("serve", "--config", bad)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown setting limits.max_recipient (did you mean limits.max_recipients?)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits: [\n")
    proc = run("serve", "--config", bad)
    assert proc.returncode == 2 and "invalid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_nameservers_take_ipv6_with_or_without_a_port():
    cfg = from_mapping({"dns": {"nameservers": ["192.0.2.53", "2001:db8::53", "[2001:db8::54]", "[::1]:5353"]}})
    assert cfg.dns_nameservers == (("192.0.2.53", 53), ("2001:db8::53", 53), ("2001:db8::54", 53), ("::1", 5353))
    with pytest.raises(ConfigError, match=r"dns.nameservers\[0\]"):
        from_mapping({"dns": {"nameservers": ["2001:db8::zz"]}})


def test_a_listener_can_have_its_own_greet_wait():
    cfg = from_mapping({"listen": [{"address": "127.0.0.1:25", "name": "mx"},
                                   {"address": "127.0.0.1:587", "name": "submission", "greet_wait": 0}],
                        "smtp": {"greet_wait": 6}})
    assert [(l.name, l.greet_wait) for l in cfg.listen] == [("mx", None), ("submission", 0.0)]
    with pytest.raises(ConfigError, match="greet_wait"):
        from_mapping({"listen": [{"address": "127.0.0.1:25", "greet_wait": "soon"}]})
