"""The cache stack in each mode (replication group, cluster, Serverless): what each mode creates
and outputs, encryption and authentication, failover, engine versions, the parameter group, and
the security group that opens the port to the EKS cluster only."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .cfn import (
    CACHE_MODES,
    MAIN_OUTPUTS,
    evaluate,
    getatt_outputs,
    mode_params,
    one,
    present,
    resources,
    template_of,
    walk,
)

MODE_RESOURCES = {
    "replication-group": {
        "CacheKey", "AuthTokenSecret", "CacheSubnetGroup", "CacheParameterGroup",
        "ReplicationGroup",
    },
    "cluster": {
        "CacheKey", "AuthTokenSecret", "CacheSubnetGroup", "ClusterParameterGroup",
        "ClusterReplicationGroup",
    },
    "serverless": {
        "CacheKey", "UserPasswordSecret", "AppUser", "DisabledDefaultUser", "UserGroup",
        "ServerlessCache",
    },
}  # fmt: skip
# Main-stack outputs each mode has besides MAIN_OUTPUTS (without a certificate).
MODE_MAIN_OUTPUTS = {
    "replication-group": {"AuthTokenSecretArn"},
    "cluster": {"AuthTokenSecretArn"},
    "serverless": {"CacheUsername"},
}
# Parameters for a rendered copy per mode: every conditional resource of the mode switched on
# (usage limits too), since cfn-lint and checkov skip what a false condition leaves out.

# Engine -> (EngineVersion, parameter group family) accepted by ElastiCache.
CACHE_ENGINES = {"redis": ("7.1", "redis7"), "valkey": ("8.2", "valkey8")}


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_each_cache_mode_creates_exactly_its_resources_and_outputs(
    mode: str, templates: dict[str, dict[str, Any]]
) -> None:
    cache, main = templates["cache.yaml"], templates["main.yaml"]
    params = mode_params(mode)
    assert set(cache["Parameters"]["CacheMode"]["AllowedValues"]) == set(CACHE_MODES)
    assert (
        main["Parameters"]["CacheMode"]["AllowedValues"]
        == cache["Parameters"]["CacheMode"]["AllowedValues"]
    )
    assert present(cache["Resources"], cache, params) == MODE_RESOURCES[mode]
    expected = MAIN_OUTPUTS | MODE_MAIN_OUTPUTS[mode]
    assert present(main["Outputs"], main, {**params, "CertificateArn": ""}) == expected
    # Every cache output main.yaml reads in this mode exists in this mode.
    outputs = present(cache["Outputs"], cache, params)
    for name in expected:
        for stack, output in getatt_outputs(main["Outputs"][name]):
            assert stack != "CacheStack" or output in outputs, (mode, name, output)
    # And no output of this mode names a resource the mode does not create.
    for name in outputs:
        value = evaluate(cache["Outputs"][name]["Value"], cache, params)
        refs = {v["Ref"] for v in walk(value) if isinstance(v, dict) and "Ref" in v}
        attrs = {
            v["Fn::GetAtt"][0] for v in walk(value) if isinstance(v, dict) and "Fn::GetAtt" in v
        }
        assert (refs | attrs) & set(cache["Resources"]) <= MODE_RESOURCES[mode], (mode, name)


@pytest.mark.parametrize(
    ("mode", "host", "cluster", "secret", "key"),
    [
        (
            "replication-group",
            ["ReplicationGroup", "PrimaryEndPoint.Address"],
            "false",
            "AuthTokenSecret",
            "token",
        ),
        (
            "cluster",
            ["ClusterReplicationGroup", "ConfigurationEndPoint.Address"],
            "true",
            "AuthTokenSecret",
            "token",
        ),
        (
            "serverless",
            ["ServerlessCache", "Endpoint.Address"],
            "true",
            "UserPasswordSecret",
            "password",
        ),
    ],
)
def test_cache_outputs_give_the_app_what_each_mode_needs(
    mode: str, host: list[str], cluster: str, secret: str, key: str,
    templates: dict[str, dict[str, Any]],
) -> None:  # fmt: skip
    cache = templates["cache.yaml"]
    params = mode_params(mode)
    outputs = {
        name: evaluate(cache["Outputs"][name]["Value"], cache, params)
        for name in present(cache["Outputs"], cache, params)
    }
    assert outputs["Host"] == {"Fn::GetAtt": host}
    assert outputs["Port"] == {"Fn::GetAtt": [host[0], host[1].replace("Address", "Port")]}
    assert (outputs["Cluster"], outputs["SecretArn"], outputs["SecretKey"]) == (
        cluster,
        {"Ref": secret},
        key,
    )
    generate = cache["Resources"][secret]["Properties"]["GenerateSecretString"]
    assert generate["GenerateStringKey"] == key
    assert outputs.get("Username") == ("message-app" if mode == "serverless" else None)
    if mode == "serverless":
        template = json.loads(generate["SecretStringTemplate"])
        assert template == {"username": outputs["Username"]}


def test_cluster_mode_is_sharded_with_failover_and_the_cluster_parameter_group(
    templates: dict[str, dict[str, Any]],
) -> None:
    cache = templates["cache.yaml"]
    group = cache["Resources"]["ClusterReplicationGroup"]["Properties"]
    assert group["ClusterMode"] == "enabled"
    assert "NumCacheClusters" not in group
    assert group["NumNodeGroups"] == {"Ref": "NumNodeGroups"}
    assert group["ReplicasPerNodeGroup"] == {"Ref": "ReplicasPerNodeGroup"}
    assert group["AutomaticFailoverEnabled"] is True
    for replicas in ("0", "1", "2"):
        params = {**mode_params("cluster"), "ReplicasPerNodeGroup": replicas}
        assert evaluate(group["MultiAZEnabled"], cache, params) is (replicas != "0")
    settings = cache["Resources"]["ClusterParameterGroup"]["Properties"]["Properties"]
    assert settings["cluster-enabled"] == "yes"
    assert group["CacheParameterGroupName"] == {"Ref": "ClusterParameterGroup"}
    for name in ("TransitEncryptionEnabled", "AtRestEncryptionEnabled"):
        assert group[name] is True, name
    assert group["KmsKeyId"] == {"Fn::GetAtt": ["CacheKey", "Arn"]}
    # The alarms cover at most 3 shards of 3 nodes.
    main = templates["main.yaml"]["Parameters"]
    assert max(map(int, main["NumNodeGroups"]["AllowedValues"])) <= 3
    assert max(map(int, main["ReplicasPerNodeGroup"]["AllowedValues"])) <= 2


def test_serverless_uses_a_user_group_with_a_disabled_default_user(
    templates: dict[str, dict[str, Any]],
) -> None:
    cache = templates["cache.yaml"]
    res = cache["Resources"]
    serverless = res["ServerlessCache"]["Properties"]
    assert serverless["Engine"] == {"Ref": "CacheEngine"}
    assert serverless["KmsKeyId"] == {"Fn::GetAtt": ["CacheKey", "Arn"]}
    assert serverless["SecurityGroupIds"] == [{"Ref": "ElasticacheSecurityGroup"}]
    assert serverless["SubnetIds"] == {"Ref": "PrivateDBSubnets"}
    assert serverless["UserGroupId"] == {"Ref": "UserGroup"}
    group = res["UserGroup"]["Properties"]
    members = {res[u["Ref"]]["Properties"]["UserName"]: res[u["Ref"]] for u in group["UserIds"]}
    assert set(members) == {"default", "message-app"}
    default = members["default"]["Properties"]
    assert default["AccessString"].split()[0] == "off" and "-@all" in default["AccessString"]
    app = members["message-app"]["Properties"]
    assert app["AccessString"].split()[0] == "on"
    assert app["AuthenticationMode"]["Type"] == "password"
    (password,) = app["AuthenticationMode"]["Passwords"]
    assert password == {
        "Fn::Sub": "{{resolve:secretsmanager:${UserPasswordSecret}:SecretString:password}}"
    }
    # A redis-engine group may hold the password-less disabled default user on a Valkey cache.
    engines = {group["Engine"], *(m["Properties"]["Engine"] for m in members.values())}
    assert engines == {"redis"}
    # Ids unique per stack and lower case, whatever the stack's name.
    ids = [group["UserGroupId"], serverless["ServerlessCacheName"]]
    ids += [m["Properties"]["UserId"] for m in members.values()]
    assert all("AWS::StackId" in json.dumps(i) for i in ids), ids


@pytest.mark.parametrize(
    ("storage", "ecpu", "limits"),
    [
        ("0", "0", None),
        ("10", "0", {"DataStorage": {"Maximum": "10", "Unit": "GB"}}),
        ("0", "5000", {"ECPUPerSecond": {"Maximum": "5000"}}),
        (
            "5",
            "5000",
            {"DataStorage": {"Maximum": "5", "Unit": "GB"}, "ECPUPerSecond": {"Maximum": "5000"}},
        ),
    ],
)
def test_serverless_usage_limits_are_optional_and_zero_means_none(
    storage: str, ecpu: str, limits: dict | None, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    params = {
        **mode_params("serverless"),
        "ServerlessMaxDataStorageGB": storage,
        "ServerlessMaxECPUPerSecond": ecpu,
    }
    value = cache["Resources"]["ServerlessCache"]["Properties"]["CacheUsageLimits"]
    resolved = evaluate(value, cache, params)
    no_value = {"Ref": "AWS::NoValue"}
    if limits is None:
        assert resolved == no_value
    else:
        assert {k: v for k, v in resolved.items() if v != no_value} == limits


def test_serverless_ecpu_limit_is_none_or_in_elasticaches_range(
    templates: dict[str, dict[str, Any]],
) -> None:
    """ElastiCache takes an ECPUPerSecond Maximum of 1,000 to 15,000,000 only: main.yaml refuses
    anything else but 0 (no limit) before creating anything, with a message that says why.
    CloudFormation matches AllowedPattern against the whole value, as re.fullmatch does."""
    parameter = templates["main.yaml"]["Parameters"]["ServerlessMaxECPUPerSecond"]
    assert parameter["Default"] == "0"
    pattern = re.compile(parameter["AllowedPattern"])
    accepted = ["0", "1000", "5000", "100000", "999999", "1000000", "14999999", "15000000"]
    refused = ["1", "500", "999", "15000001", "16000000", "99999999", "01000", "-1", "1e4", ""]
    assert [v for v in accepted if not pattern.fullmatch(v)] == []
    assert [v for v in refused if pattern.fullmatch(v)] == []
    assert "1000" in parameter["ConstraintDescription"]
    assert "15000000" in parameter["ConstraintDescription"]


@pytest.mark.parametrize("name", ["ReplicationGroup", "ClusterReplicationGroup"])
def test_cache_is_an_encrypted_authenticated_replication_group(
    name: str, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    assert not resources(cache, "AWS::ElastiCache::CacheCluster")
    group = cache["Resources"][name]["Properties"]
    assert group["TransitEncryptionEnabled"] is True
    assert group["AtRestEncryptionEnabled"] is True
    assert group["Engine"] == {"Ref": "CacheEngine"}
    token = group["AuthToken"]["Fn::Sub"]
    match = re.fullmatch(r"\{\{resolve:secretsmanager:\$\{(\w+)\}:SecretString:(\w+)\}\}", token)
    assert match, f"AuthToken is not a Secrets Manager dynamic reference: {token!r}"
    secret = cache["Resources"][match.group(1)]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    generate = secret["Properties"]["GenerateSecretString"]
    assert generate["GenerateStringKey"] == match.group(2)
    assert int(generate.get("PasswordLength", 32)) >= 32
    # ElastiCache refuses AUTH tokens containing @, " or /.
    excluded = generate.get("ExcludeCharacters", "")
    assert generate.get("ExcludePunctuation") is True or set('@"/') <= set(excluded)
    key_id, attribute = group["KmsKeyId"]["Fn::GetAtt"]
    key = cache["Resources"][key_id]
    assert attribute == "Arn"
    assert key["Type"] == "AWS::KMS::Key" and key["Properties"]["EnableKeyRotation"] is True


@pytest.mark.parametrize("replicas", [0, 1, 2, 5])
def test_failover_follows_the_replica_count(
    replicas: int, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    allowed = [int(v) for v in cache["Parameters"]["CacheReplicaCount"]["AllowedValues"]]
    assert replicas in allowed
    group = cache["Resources"]["ReplicationGroup"]["Properties"]
    params = {"CacheReplicaCount": str(replicas), "CacheEngine": "redis"}
    resolved = {
        k: evaluate(group[k], cache, params)
        for k in ("MultiAZEnabled", "AutomaticFailoverEnabled", "NumCacheClusters")
    }
    assert resolved == {
        "MultiAZEnabled": replicas >= 1,
        "AutomaticFailoverEnabled": replicas >= 1,
        "NumCacheClusters": str(replicas + 1),
    }


@pytest.mark.parametrize("engine", sorted(CACHE_ENGINES))
def test_engine_version_and_parameter_family_follow_the_engine(
    engine: str, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    assert set(cache["Parameters"]["CacheEngine"]["AllowedValues"]) == set(CACHE_ENGINES)
    assert set(templates["main.yaml"]["Parameters"]["CacheEngine"]["AllowedValues"]) == set(
        CACHE_ENGINES
    )
    params = {"CacheEngine": engine, "CacheReplicaCount": "1"}
    for group_name, family_name in (
        ("ReplicationGroup", "CacheParameterGroup"),
        ("ClusterReplicationGroup", "ClusterParameterGroup"),
    ):
        group = cache["Resources"][group_name]["Properties"]
        family = cache["Resources"][family_name]["Properties"]["CacheParameterGroupFamily"]
        assert (
            evaluate(group["EngineVersion"], cache, params),
            evaluate(family, cache, params),
        ) == CACHE_ENGINES[engine]
    serverless = cache["Resources"]["ServerlessCache"]["Properties"]
    major = evaluate(serverless["MajorEngineVersion"], cache, params)
    assert CACHE_ENGINES[engine][0].split(".")[0] == major


def test_parameter_group_holds_what_the_session_store_relies_on(
    templates: dict[str, dict[str, Any]],
) -> None:
    """Every key the app writes has a TTL: volatile-lru evicts the least recently used sessions
    when memory runs out (noeviction would fail every save). close-on-replica-write drops the
    connection of a write to a demoted primary, so the client reconnects to the new one."""
    res = templates["cache.yaml"]["Resources"]
    settings = res["CacheParameterGroup"]["Properties"]["Properties"]
    assert "timeout" not in settings
    assert settings == {
        "tcp-keepalive": "60",
        "maxmemory-policy": "volatile-lru",
        "close-on-replica-write": "yes",
    }
    cluster = res["ClusterParameterGroup"]["Properties"]["Properties"]
    assert cluster == {**settings, "cluster-enabled": "yes"}
    group = res["ReplicationGroup"]["Properties"]
    assert group["CacheParameterGroupName"] == {"Ref": "CacheParameterGroup"}


def test_valkey_is_the_default_engine(templates: dict[str, dict[str, Any]]) -> None:
    assert templates["main.yaml"]["Parameters"]["CacheEngine"]["Default"] == "valkey"


def test_cache_port_is_open_only_to_the_eks_cluster_security_group(
    templates: dict[str, dict[str, Any]],
) -> None:
    sgs = templates["securitygroups.yaml"]
    group = one(sgs, "AWS::EC2::SecurityGroup")
    assert not resources(sgs, "AWS::EC2::SecurityGroupIngress")
    rules = group["SecurityGroupIngress"] + group.get("SecurityGroupEgress", [])
    assert all(len(str(r.get("Description", "")).split()) >= 3 for r in rules), rules
    ingress = [
        (r["IpProtocol"], int(r["FromPort"]), int(r["ToPort"]), r.get("SourceSecurityGroupId"))
        for r in group["SecurityGroupIngress"]
    ]
    assert ingress == [("tcp", 6379, 6379, {"Ref": "EKSClusterSecurityGroup"})]
    assert not any("CidrIp" in r or "CidrIpv6" in r for r in group["SecurityGroupIngress"])
    assert [r["CidrIp"] for r in group["SecurityGroupEgress"]] == [{"Ref": "VPCcidr"}]
    # Follow the parameter back to the security group EKS creates for the cluster.
    main_stacks = resources(templates["main.yaml"], "AWS::CloudFormation::Stack")
    passed = main_stacks["SecurityGroupStack"]["Properties"]["Parameters"]
    source, output = getatt_outputs(passed["EKSClusterSecurityGroup"])[0]
    assert template_of(main_stacks[source]) == "eks.yaml"
    cluster_output = templates["eks.yaml"]["Outputs"][output]["Value"]
    assert cluster_output == {"Fn::GetAtt": ["Cluster", "ClusterSecurityGroupId"]}
    cache_sg = main_stacks["CacheStack"]["Properties"]["Parameters"]["ElasticacheSecurityGroup"]
    assert getatt_outputs(cache_sg) == [("SecurityGroupStack", "ElasticacheSecurityGroup")]
    res = templates["cache.yaml"]["Resources"]
    for name in ("ReplicationGroup", "ClusterReplicationGroup", "ServerlessCache"):
        assert res[name]["Properties"]["SecurityGroupIds"] == [{"Ref": "ElasticacheSecurityGroup"}]
