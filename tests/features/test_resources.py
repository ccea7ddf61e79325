"""features/resources.py: each client built once per process, from the settings alone."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from urllib.parse import urlparse

import pytest

from core import s3
from features import resources as resources_mod
from features.resources import Resources

from helpers import isolated


def test_a_process_builds_its_resources_once_per_settings(stack, tmp_path):
    first = Resources.for_process(stack)
    assert Resources.for_process(replace(stack)) is first, "equal settings share one object"
    assert first.store is first.store and first.redis is first.redis, "clients are built once"
    assert first.s3 is s3.client(stack), "the S3 client is the process's one for these settings"
    other = Resources.for_process(isolated(stack, tmp_path, "res"))
    assert other is not first and other.store is not first.store


def _built_in_child(settings, parent_id, queue) -> None:
    queue.put(id(Resources.for_process(settings)) != parent_id)


def test_a_forked_child_builds_its_own(stack):
    parent = Resources.for_process(stack)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_built_in_child, args=(stack, id(parent), queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and queue.get(timeout=5) is True, "the child must not reuse its parent's connections"


def test_the_store_is_configured_from_the_settings_not_the_environment(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("FP_FEAST_REPO_PROJECT", "not_this_one")
    before = dict(os.environ)
    mine = isolated(stack, tmp_path, "cfg")
    store = Resources(mine).store
    assert dict(os.environ) == before, "building a store must leave the process environment alone"
    assert store.config.project == mine.feast_project
    assert store.config.registry.path == mine.registry_url
    assert store.config.online_store.connection_string == mine.redis_connection_string
    assert store.config.materialization_config.online_write_batch_size == mine.materialize_batch_size
    assert Resources(stack).store.config.project == stack.feast_project, "two settings, two configurations"


def test_the_redis_client_is_the_online_stores_own(stack):
    resources = Resources(stack)
    online_store = resources.store._get_provider().online_store
    assert resources.redis is online_store._get_client(resources.store.config.online_store)
    url = urlparse(stack.redis_url)
    kwargs = resources.redis.connection_pool.connection_kwargs
    assert (kwargs["host"], int(kwargs["port"])) == (url.hostname, url.port or 6379)
    assert resources.redis.ping()


def test_a_configuration_naming_an_unknown_setting_says_which(stack, tmp_path, monkeypatch):
    config = tmp_path / "feature_store.yaml"
    config.write_text(resources_mod.CONFIG_FILE.read_text() + "\nextra: ${FP_NOT_A_SETTING}\n")
    monkeypatch.setattr(resources_mod, "CONFIG_FILE", config)
    with pytest.raises(SystemExit, match=r"\$\{FP_NOT_A_SETTING\}.*Settings.feast_env"):
        resources_mod.repo_config(stack)
