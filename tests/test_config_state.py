"""
`state` (per section, merged from defaults), top-level `state_dir`, and the
rule that `state` and the older `breaker.storage` must agree when both are given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from resilient_client._config import Config, load_config
from resilient_client._policy import Policy
from resilient_client.exceptions import ConfigError

REDIS = "redis://127.0.0.1:6379/0"


def _error(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(doc)
    return info.value


class TestState:
    def test_memory_is_the_default(self) -> None:
        """With no `state`, every endpoint keeps its state in the process."""
        config = load_config({"endpoints": [{"match": "http://127.0.0.1/"}]})
        assert config.defaults.state == "memory"
        assert config.endpoints[0].policy.state == "memory"
        assert config.state_dir is None

    def test_an_endpoint_inherits_and_overrides_state(self) -> None:
        """`state` in defaults applies to every endpoint that does not set its own."""
        config = load_config({
            "defaults": {"state": "host"},
            "endpoints": [
                {"match": "http://127.0.0.1:1/", "name": "a"},
                {"match": "http://127.0.0.1:2/", "name": "b", "state": "memory"},
            ],
        })
        assert [e.policy.state for e in config.endpoints] == ["host", "memory"]
        assert config.endpoints[0].policy.breaker_storage == "host"
        assert config.endpoints[0].policy.host_shared

    @pytest.mark.parametrize("bad", ["hosts", "", 3, "redis://", ["host"]])
    def test_a_bad_state_names_its_key_path(self, bad: object) -> None:
        """A value that is not memory, host or a Redis URL is a ConfigError at its path."""
        err = _error({"endpoints": [{"match": "http://127.0.0.1/", "state": bad}]})
        assert err.errors[0][0] == "endpoints[0].state"

    def test_state_and_breaker_storage_that_disagree(self) -> None:
        """Both given and different: a ConfigError, wherever each was given."""
        assert _error({"defaults": {"state": "host", "breaker": {"storage": REDIS}}}).path == "defaults.state"
        err = _error({"defaults": {"state": "host"},
                      "endpoints": [{"match": "http://127.0.0.1/", "breaker": {"storage": REDIS}}]})
        assert err.path == "endpoints[0].state"
        err = _error({"defaults": {"breaker": {"storage": REDIS}},
                      "endpoints": [{"match": "http://127.0.0.1/", "state": "memory"}]})
        assert err.path == "endpoints[0].state"

    def test_state_and_breaker_storage_that_agree(self) -> None:
        """The same Redis URL in both, or breaker.storage alone, is fine."""
        both = load_config({"defaults": {"state": REDIS, "breaker": {"storage": REDIS}}})
        assert both.defaults.breaker_storage == REDIS
        old = load_config({"defaults": {"breaker": {"storage": REDIS}}})
        assert old.defaults.breaker_storage == REDIS and not old.defaults.host_shared

    def test_namesakes_must_agree_on_state(self) -> None:
        """Endpoints sharing a name share its state, so their `state` must match."""
        err = _error({"endpoints": [
            {"match": "http://127.0.0.1:1/", "name": "n", "state": "host"},
            {"match": "http://127.0.0.1:2/", "name": "n"},
        ]})
        assert err.path == "endpoints[1].state"

    def test_policy_replace_validates_state(self) -> None:
        """Built in Python, a bad state fails where it was written."""
        with pytest.raises(ConfigError) as info:
            Policy().replace(state="disk")
        assert info.value.path == "state"


class TestStateDir:
    def test_state_dir_is_read(self) -> None:
        """A top-level path is kept as given."""
        assert load_config({"state_dir": "/tmp/rc-state"}).state_dir == "/tmp/rc-state"

    @pytest.mark.parametrize("bad", [3, "", ["/tmp"]])
    def test_a_bad_state_dir(self, bad: object) -> None:
        """Not a path: a ConfigError at `state_dir`."""
        assert _error({"state_dir": bad}).path == "state_dir"

    def test_a_relative_state_dir_is_relative_to_the_config_file(self, tmp_path: Path) -> None:
        """In a file, a relative state_dir means next to the file, wherever the process starts."""
        config = tmp_path / "conf" / "rc.json"
        config.parent.mkdir()
        config.write_text(json.dumps({"state_dir": "run/state"}))
        assert load_config(str(config)).state_dir == str(tmp_path / "conf" / "run" / "state")

    def test_a_relative_state_dir_without_a_file_is_an_error(self) -> None:
        """A mapping has no directory to be relative to: the cwd would be a guess."""
        error = _error({"state_dir": "run/state"})
        assert error.path == "state_dir" and "must be an absolute path" in str(error)
        with pytest.raises(ConfigError, match="absolute"):
            Config(state_dir="run/state")

    def test_state_at_the_top_level_says_where_it_goes(self) -> None:
        """A top-level `state: host` is not merely 'unknown': the message says to put it under defaults."""
        error = _error({"state": "host"})
        assert error.path == "state" and "put it under defaults" in str(error)

    def test_a_bad_state_names_every_accepted_url_scheme(self) -> None:
        """`state: hosts`: the message lists rediss:// and unix://, which are accepted too."""
        message = str(_error({"defaults": {"state": "hosts"}}))
        assert all(scheme in message for scheme in ("redis://", "rediss://", "unix://"))
        load_config({"defaults": {"state": "rediss://127.0.0.1:6380/0"}})

    def test_state_is_not_one_calls_to_change(self) -> None:
        """`state` belongs to the endpoint: a call's policy= may not change it."""
        from resilient_client._config import call_policy

        with pytest.raises(ConfigError, match="shared state"):
            call_policy(Policy(), {"state": "host"})
