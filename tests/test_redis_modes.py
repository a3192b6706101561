"""`[redis] mode`: a single server, a Cluster or a Sentinel-managed master, parsed with errors
that name the file, line and key, and the redis-py client each one gets (without a server: the
deployments themselves are tests/test_redis_cluster.py and tests/test_redis_sentinel.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway.config import ConfigError, load_config
from gateway.ratelimit.config import RedisConfig
from gateway.ratelimit.connect import connect


def load(tmp_path: Path, text: str) -> RedisConfig | None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_config(path).redis


def test_a_cluster_starts_from_its_url_and_the_nodes_listed(tmp_path: Path) -> None:
    config = load(tmp_path, '[redis]\nmode = "cluster"\nurl = "redis://a:7000"\n'
                            'nodes = ["b:7001", "[::1]:7002"]\n')
    assert config == RedisConfig("redis://a:7000", mode="cluster",
                                 nodes=(("b", 7001), ("::1", 7002)))


def test_sentinels_with_the_masters_credentials_and_their_own_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_PW", "s3cret")
    config = load(tmp_path, '[redis]\nmode = "sentinel"\nsentinels = ["s1:26379", "s2:26379"]\n'
                            'service_name = "main"\nurl = "redis://:pw@/2"\n'
                            'sentinel_password_env = "SENTINEL_PW"\n')
    assert config == RedisConfig("redis://:pw@/2", mode="sentinel",
                                 sentinels=(("s1", 26379), ("s2", 26379)),
                                 service_name="main", sentinel_password="s3cret")
    # No URL: a master without a password, database 0.
    bare = load(tmp_path, '[redis]\nmode = "sentinel"\nsentinels = ["s1:26379"]\n'
                          'service_name = "main"\n')
    assert bare is not None and bare.url == "" and bare.sentinels == (("s1", 26379),)


SENTINEL = '[redis]\nmode = "sentinel"\nsentinels = ["s:26379"]\nservice_name = "m"\n'


@pytest.mark.parametrize(("text", "fragments"), [
    ('[redis]\nurl = "redis://r"\nmode = "ring"\n', [":3:", "redis.mode", "'cluster'"]),
    ('[redis]\nurl = "redis://r"\nnodes = ["b:1"]\n',
     [":3:", "redis.nodes", 'only with mode = "cluster"']),
    ('[redis]\nmode = "cluster"\nurl = "redis://r"\nservice_name = "m"\n',
     [":4:", "redis.service_name", 'only with mode = "sentinel"']),
    ('[redis]\nmode = "cluster"\nurl = "redis://r"\nnodes = ["b"]\n',
     [":4:", "redis.nodes", "host:port, got 'b'"]),
    ('[redis]\nmode = "cluster"\nurl = "redis://r"\nnodes = ["b:70000"]\n',
     ["redis.nodes", "host:port"]),
    ('[redis]\nmode = "cluster"\nurl = "redis://r"\nnodes = "b:1"\n',
     ["redis.nodes", "a list of strings"]),
    ('[redis]\nmode = "cluster"\n', [":2:", "redis.mode", "a cluster needs url"]),
    ('[redis]\nmode = "cluster"\nurl = "redis://r:7000/1"\n',
     [":3:", "redis.url", "database 0"]),
    ('[redis]\nmode = "sentinel"\nservice_name = "m"\n', ["redis.sentinels", "missing"]),
    ('[redis]\nmode = "sentinel"\nsentinels = ["s:26379"]\n',
     ["redis.service_name", "missing"]),
    (SENTINEL + 'url = "redis://:pw@master:6379/0"\n',
     [":5:", "redis.url", "only credentials and database"]),
    (SENTINEL + 'sentinel_password_env = "GATEWAY_TEST_UNSET"\n',
     [":5:", "redis.sentinel_password_env", "GATEWAY_TEST_UNSET is not set"]),
])
def test_invalid_deployments(tmp_path: Path, text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    for fragment in fragments:
        assert fragment in str(error.value)


async def test_each_mode_gets_redis_pys_client_for_it() -> None:
    single = connect(RedisConfig("redis://r:6379/3"), 0.05)
    assert type(single) is Redis
    assert single.connection_pool.connection_kwargs["db"] == 3
    await single.aclose()

    cluster = connect(RedisConfig("redis://a:7000", mode="cluster", nodes=(("b", 7001),)), 0.05)
    assert isinstance(cluster, RedisCluster)
    assert set(cluster.nodes_manager.startup_nodes) == {"a:7000", "b:7001"}
    await cluster.aclose()

    master = connect(RedisConfig("redis://:pw@/2", mode="sentinel", sentinels=(("s", 26379),),
                                 service_name="main", sentinel_password="s3cret"), 0.05)
    assert isinstance(master, Redis)
    pool = master.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "main"
    assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == ("pw", 2)
    asked = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert (asked["host"], asked["port"], asked["password"]) == ("s", 26379, "s3cret")
    assert asked["socket_timeout"] == 0.05  # asking where the master is is bounded too
    await master.aclose()
