"""``notifiers:``, ``public_url``, ``ack_link_ttl``, ``ack_secret_file``: checked once,
with reasons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.alerting.notify import NOTIFIER_CLASSES, build_notifiers
from hub.config import load_hub_config, parse_hub_config
from yizhan.config import ConfigError

DB = "sqlite:////tmp/yz-notify-config.db"
WECOM = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx"
DING = "https://oapi.dingtalk.com/robot/send?access_token=abc123"
FEISHU = "https://open.feishu.cn/open-apis/bot/v2/hook/xyz"


def parse(*notifiers: dict[str, Any], base: Path | None = None, **top: Any):
    return parse_hub_config({"database": DB, "notifiers": list(notifiers), **top}, base=base)


def test_every_type_parses_and_builds(tmp_path: Path) -> None:
    (tmp_path / "mail.pw").write_text("mail-password\n")
    (tmp_path / "hook.secret").write_text("webhook-secret-0123456789\n")
    config = parse(
        {"name": "ops-webhook", "type": "webhook", "url": "https://ops.example.cn/yizhan",
         "secret_file": "hook.secret"},
        {"name": "chumen-wecom", "type": "wecom", "url": WECOM},
        {"name": "chumen-ding", "type": "dingtalk", "url": DING, "secret": "SECabc",
         "language": "en", "timeout": "5s"},
        {"name": "chumen-feishu", "type": "feishu", "webhook": FEISHU, "secret": "s",
         "format": "text"},
        {"name": "ops-mail", "type": "email", "host": "smtp.example.cn", "username": "hub",
         "password_file": "mail.pw", "from": "yizhan@example.cn", "to": ["li@example.cn"]},
        base=tmp_path, public_url="https://hub.example.cn/", ack_link_ttl="12h")
    specs = {s.name: s for s in config.notifier_specs}
    assert specs["ops-webhook"].secret == "webhook-secret-0123456789"
    assert specs["chumen-ding"].language == "en" and specs["chumen-ding"].timeout == 5.0
    assert specs["chumen-feishu"].url == FEISHU and specs["chumen-feishu"].format == "text"
    mail = specs["ops-mail"]
    assert (mail.port, mail.tls, mail.password) == (587, "starttls", "mail-password")
    assert config.public_url == "https://hub.example.cn" and config.ack_link_ttl == 43200
    assert config.notifier_spec("chumen-wecom") is specs["chumen-wecom"]
    built = build_notifiers(config.notifier_specs, "Asia/Shanghai")
    assert {n.type for n in built.values()} == set(NOTIFIER_CLASSES)


def test_robot_keys_may_be_given_alone_or_from_files(tmp_path: Path) -> None:
    (tmp_path / "wecom.key").write_text("k-123\n")
    (tmp_path / "wecom.url").write_text(WECOM + "\n")
    config = parse({"name": "w", "type": "wecom", "key_file": "wecom.key"},
                   {"name": "d", "type": "dingtalk", "access_token": "t-456"},
                   {"name": "u", "type": "wecom", "url_file": "wecom.url"}, base=tmp_path)
    w, d, u = config.notifier_specs
    assert w.url == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k-123"
    assert d.url == "https://oapi.dingtalk.com/robot/send?access_token=t-456"
    assert u.url == WECOM


def test_secrets_stay_out_of_repr_and_redacted() -> None:
    config = parse({"name": "d", "type": "dingtalk", "url": DING, "secret": "SECsecret"},
                   {"name": "m", "type": "email", "host": "smtp.example.cn", "username": "u",
                    "password": "pw-secret", "from": "a@example.cn", "to": ["b@example.cn"]})
    text = repr(config.notifier_specs) + repr([s.redacted() for s in config.notifier_specs])
    for secret in ("SECsecret", "abc123", "pw-secret"):
        assert secret not in text
    assert config.notifier_specs[0].redacted()["url"] == \
        "https://oapi.dingtalk.com/robot/send?***"


@pytest.mark.parametrize(("entry", "key", "words"), [
    ({"type": "webhook", "url": "https://x.cn/h", "secret": "s" * 16}, "notifiers[0].name",
     "required"),
    ({"name": "a b", "type": "webhook"}, "notifiers[0].name", "letters"),
    ({"name": "x", "type": "slack"}, "notifiers[0].type", "one of webhook, wecom"),
    ({"name": "x", "type": "webhook", "secret": "s" * 16}, "notifiers[0].url", "required"),
    ({"name": "x", "type": "webhook", "url": "ftp://x.cn/", "secret": "s" * 16},
     "notifiers[0].url", "http"),
    ({"name": "x", "type": "webhook", "url": "https://x.cn/h"}, "notifiers[0].secret",
     "X-Yizhan-Signature"),
    ({"name": "x", "type": "webhook", "url": "https://x.cn/h", "secret": "short"},
     "notifiers[0].secret", "16"),
    ({"name": "x", "type": "wecom"}, "notifiers[0].url", "qyapi.weixin.qq.com"),
    ({"name": "x", "type": "wecom", "url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"},
     "notifiers[0].url", "?key="),
    ({"name": "x", "type": "dingtalk", "url": "https://oapi.dingtalk.com/robot/send"},
     "notifiers[0].url", "access_token"),
    ({"name": "x", "type": "dingtalk", "url": DING, "secret": "abc"}, "notifiers[0].secret",
     "SEC"),
    ({"name": "x", "type": "feishu"}, "notifiers[0].url", "open.feishu.cn"),
    ({"name": "x", "type": "feishu", "url": FEISHU, "format": "post"}, "notifiers[0].format",
     "card, text"),
    ({"name": "x", "type": "wecom", "url": WECOM, "language": "fr"},
     "notifiers[0].language", "zh, en"),
    ({"name": "x", "type": "wecom", "url": WECOM, "timeout": "10m"}, "notifiers[0].timeout",
     "2m"),
    ({"name": "x", "type": "email", "from": "a@x.cn", "to": ["b@x.cn"]}, "notifiers[0].host",
     "required"),
    ({"name": "x", "type": "email", "host": "h", "from": "a@x.cn"}, "notifiers[0].to",
     "at least one"),
    ({"name": "x", "type": "email", "host": "h", "from": "a@x.cn", "to": ["nobody"]},
     "notifiers[0].to[0]", "e-mail address"),
    ({"name": "x", "type": "email", "host": "h", "from": "a@x.cn", "to": ["b@x.cn"],
      "password": "p"}, "notifiers[0].username", "with a password"),
    ({"name": "x", "type": "wecom", "url_file": "/nonexistent/wecom.url"},
     "notifiers[0].url_file", "cannot read"),
])
def test_a_bad_notifier_is_refused_naming_the_key(entry: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(entry)
    assert err.value.key == key, str(err.value)
    assert words in err.value.problem, str(err.value)


def test_a_robot_url_is_never_quoted_back_in_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        parse({"name": "x", "type": "wecom", "url": "ftp://qyapi.weixin.qq.com/?key=SECRETKEY"})
    assert "SECRETKEY" not in str(err.value)


def test_names_are_unique_and_top_level_keys_are_checked() -> None:
    one = {"name": "x", "type": "wecom", "url": WECOM}
    with pytest.raises(ConfigError, match=r"notifiers\[1\].name: x is listed twice"):
        parse(one, one)
    with pytest.raises(ConfigError, match="public_url: must be the hub's address"):
        parse(public_url="hub.example.cn")
    with pytest.raises(ConfigError, match="ack_link_ttl: must be at least 1m"):
        parse(ack_link_ttl="10s")
    with pytest.raises(ConfigError, match="ack_secret: the ack link secret must be at least"):
        parse(ack_secret="short")
    plain = parse()
    assert (plain.public_url, plain.ack_link_ttl, plain.ack_secret) == (None, 86400.0, None)


def test_a_bad_configuration_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("database: sqlite:///hub.db\nnotifiers:\n  - {name: x, type: wecom}\n")
    with pytest.raises(ConfigError) as err:
        load_hub_config(path)
    assert str(err.value).startswith(f"{path}: notifiers[0].url: is required")
