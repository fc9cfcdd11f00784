"""Configuration: the shipped file is the defaults and documents every key; every kind of error
names the file, the key and what was expected."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from daemon.config import (
    Config,
    ConfigError,
    DaemonSection,
    HostEntry,
    PollingSection,
    RetentionSection,
    TlsSection,
    load_config,
)

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "taskmgrd.toml"
POOL = "5849b030-626e-47cb-ad90-3ce782d831b3"


def test_shipped_file_loads_to_the_defaults() -> None:
    config = load_config(SHIPPED)
    assert dataclasses.replace(config, source="defaults") == Config()
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    ("section", "cls"),
    [
        ("daemon", DaemonSection),
        ("retention", RetentionSection),
        ("polling", PollingSection),
        ("[hosts]", HostEntry),
        ("tls", TlsSection),
    ],
)
def test_shipped_file_documents_every_key(section: str, cls: type) -> None:
    text = SHIPPED.read_text()
    assert f"[{section}]" in text
    body = text.split(f"[{section}]", 1)[1]
    for f in dataclasses.fields(cls):
        # each key appears (set or commented out) with a comment line explaining it
        assert re.search(rf"^#? ?{f.name} = ", body, re.M), f"{section}.{f.name} undocumented"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taskmgrd.toml"
    path.write_text(text)
    return path


def test_values_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[daemon]
socket = "/tmp/x.sock"
socket_mode = 0o600
socket_group = "wheel"
synchronous = "normal"
log_level = "debug"
max_request_bytes = 4096
[polling]
fast_interval = 0.05
failures_before_non_responsive = 5
[[hosts]]
name = "host1"
address = "10.0.0.1"
port = 54321
pool = "{POOL}"
[[hosts]]
name = "host2"
address = "host2.example.com"
port = 54322
pool = "{POOL}"
transport = "http"
tls = true
[tls]
cert = "/etc/c.pem"
key = "/etc/k.pem"
""",
    )
    config = load_config(path)
    assert config.daemon.socket == Path("/tmp/x.sock") and config.daemon.socket_mode == 0o600
    assert config.daemon.synchronous == "NORMAL" and config.daemon.log_level == "DEBUG"
    assert config.polling.fast_interval == 0.05
    assert config.polling.failures_before_non_responsive == 5
    assert [h.name for h in config.hosts] == ["host1", "host2"]
    assert config.hosts[1] == HostEntry("host2", "host2.example.com", 54322, POOL, "http", True)
    assert config.tls.cert == Path("/etc/c.pem")
    assert (
        load_config(write(tmp_path, '[daemon]\nsocket_mode = "0640"')).daemon.socket_mode == 0o640
    )

    over = config.with_overrides(socket=Path("/run/other.sock"), db=Path("/srv/t.db"))
    assert over.daemon.socket == Path("/run/other.sock") and over.daemon.db == Path("/srv/t.db")
    assert over.daemon.socket_mode == 0o600 and over.hosts == config.hosts
    assert config.with_overrides() == config


BAD: list[tuple[str, str, str]] = [
    ("not toml", "[daemon\nsocket = 1", "not valid TOML"),
    ("unknown section", "[deamon]\nsocket = '/x'", "'deamon'"),
    ("unknown key", "[daemon]\nsockets = '/x'", "[daemon] unknown key 'sockets'"),
    ("section not a table", "daemon = 5", "[daemon] must be a table"),
    ("mode word", '[daemon]\nsocket_mode = "rw"', "[daemon] socket_mode: expected a file mode"),
    ("mode too big", "[daemon]\nsocket_mode = 4096", "[daemon] socket_mode: expected a file mode"),
    ("socket empty", '[daemon]\nsocket = ""', "[daemon] socket: expected a file path"),
    ("db a number", "[daemon]\ndb = 5", "[daemon] db: expected a file path"),
    ("synchronous", '[daemon]\nsynchronous = "OFF"', "[daemon] synchronous: expected one of FULL"),
    ("log level", '[daemon]\nlog_level = "loud"', "[daemon] log_level: expected one of DEBUG"),
    ("group", '[daemon]\nsocket_group = "a b"', "[daemon] socket_group: expected a group"),
    ("max bytes", "[daemon]\nmax_request_bytes = 10", "[daemon] max_request_bytes: expected an"),
    ("commit 2 s", "[daemon]\ncommit_interval = 2", "[daemon] commit_interval: expected a number"),
    ("commit < 0", "[daemon]\ncommit_interval = -1", "[daemon] commit_interval: expected a number"),
    ("commit text", '[daemon]\ncommit_interval = "x"', "[daemon] commit_interval: expected a"),
    ("cancel > idle", "[polling]\ncancel_interval = 10.0", "[polling] cancel_interval: expected"),
    ("retention", "[retention]\nfinished_minutes = -1", "[retention] finished_minutes: expected"),
    ("retention bool", "[retention]\nfailed_minutes = true", "[retention] failed_minutes"),
    ("polling zero", "[polling]\ncall_timeout = 0", "[polling] call_timeout: expected a positive"),
    ("polling string", '[polling]\nmonitor_interval = "2s"', "[polling] monitor_interval"),
    (
        "failures",
        "[polling]\nfailures_before_non_responsive = 0.5",
        "failures_before_non_responsive",
    ),
    ("fast > idle", "[polling]\nfast_interval = 10.0", "[polling] fast_interval: expected at most"),
    ("polling unknown", "[polling]\nfast = 1", "[polling] unknown key 'fast'"),
    ("hosts not array", "hosts = 5", "hosts must be an array"),
    ("host missing", "[[hosts]]\nname = 'h'", "[[hosts]] #1 address: missing"),
    (
        "host port",
        f"[[hosts]]\nname = 'h'\naddress = 'a'\nport = 0\npool = '{POOL}'",
        "[[hosts]] #1 (h) port: expected an integer 1..65535",
    ),
    (
        "host pool",
        "[[hosts]]\nname = 'h'\naddress = 'a'\nport = 1\npool = 'pool1'",
        "[[hosts]] #1 (h) pool: expected a lower-case storage pool UUID",
    ),
    (
        "host transport",
        f"[[hosts]]\nname = 'h'\naddress = 'a'\nport = 1\npool = '{POOL}'\ntransport = 'ssh'",
        "[[hosts]] #1 (h) transport: expected one of stomp, http",
    ),
    (
        "host unknown key",
        f"[[hosts]]\nname = 'h'\naddress = 'a'\nport = 1\npool = '{POOL}'\nspm = true",
        "[[hosts]] #1 unknown key 'spm'",
    ),
    (
        "duplicate host",
        f"[[hosts]]\nname = 'h'\naddress = 'a'\nport = 1\npool = '{POOL}'\n" * 2,
        "[[hosts]] #2 (h) name: expected a name not used",
    ),
    ("tls half", '[tls]\ncert = "/c.pem"', "[tls] key: missing"),
    ("tls unknown", '[tls]\ncrt = "/c.pem"', "[tls] unknown key 'crt'"),
]


@pytest.mark.parametrize(("text", "says"), [(t, s) for _, t, s in BAD], ids=[n for n, _, _ in BAD])
def test_errors_name_file_key_and_expectation(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert says in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_polling_names_are_host_settings_fields() -> None:
    hosts = pytest.importorskip("daemon.hosts")
    known = {f.name for f in dataclasses.fields(hosts.HostSettings)}
    assert {f.name for f in dataclasses.fields(PollingSection)} <= known
    settings = Config().host_settings()
    assert settings.call_timeout == 180.0


def test_check_config_and_run_report_errors_and_start_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.service import main

    good = write(tmp_path, SHIPPED.read_text())
    assert main(["check-config", "--config", str(good)]) == 0
    assert f"configuration OK ({good})" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nlog_level = "loud"\n')
    db = tmp_path / "taskmgrd.db"
    for command in ("check-config", "run"):
        argv = [command, "--config", str(bad), "--db", str(db), "--socket", str(tmp_path / "s")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (
            f"taskmgrd: {bad}: [daemon] log_level: expected one of DEBUG, INFO, WARNING, ERROR, "
            "CRITICAL, got 'loud'\n"
        )
    assert not db.exists() and not (tmp_path / "s").exists(), "a bad file must start nothing"


def test_default_file_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon import config as config_module

    path = write(tmp_path, '[daemon]\nlog_level = "debug"\n')
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG", path)
    assert load_config(config_module.default_config_path()).daemon.log_level == "DEBUG"
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    assert config_module.default_config_path() is None
