"""How the app signs in to the cache, per cache mode and CacheAuth: the ElastiCache IAM user and
its user group bound to the cache, the pods' role (exactly elasticache:Connect on that cache and
user) and its Pod Identity association, or the AUTH token / RBAC password; and the SECRET_KEY
secret. cfn-lint and checkov run over a copy of the templates rendered for each combination
(both skip what a false condition leaves out); the structural tests evaluate the conditions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT

from .cfn import (
    CACHE_MODES,
    MODE_DEFAULTS,
    cfn_lint,
    checkov_grouped,
    evaluate,
    failed_checks,
    getatt_outputs,
    lint_problems,
    load,
    load_path,
    present,
    rendered_copies,
    walk,
)

AUTH_MODES = ("iam", "token")
COMBOS = [f"{mode}-{auth}" for mode in CACHE_MODES for auth in AUTH_MODES]
TEMPLATES = ("main.yaml", "cache.yaml", "app.yaml")
CACHE_RESOURCE = {
    "replication-group": "ReplicationGroup",
    "cluster": "ClusterReplicationGroup",
    "serverless": "ServerlessCache",
}
SERVICE_ACCOUNT = yaml.safe_load((REPO_ROOT / "k8s" / "serviceaccount.yaml").read_text())


def _split(combo: str) -> tuple[str, str]:
    mode, auth = combo.rsplit("-", 1)
    return mode, auth


def _params(combo: str) -> dict[str, str]:
    mode, auth = _split(combo)
    # main.yaml names it CacheAuth, the nested templates AuthMode.
    return {**MODE_DEFAULTS, "CacheMode": mode, "CacheAuth": auth, "AuthMode": auth}


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cfn-auth")
    return rendered_copies(root, TEMPLATES, {combo: _params(combo) for combo in COMBOS})


@pytest.fixture(scope="module")
def lint_findings(copies: dict[str, Path]) -> dict[str, list[dict]]:
    files = [folder / name for folder in copies.values() for name in TEMPLATES]
    _, matches = cfn_lint(files)
    findings: dict[str, list[dict]] = {combo: [] for combo in copies}
    for match in matches:
        findings[Path(match["Filename"]).parent.name].append(match)
    return findings


@pytest.mark.parametrize("combo", COMBOS)
def test_cfn_lint_is_clean(combo: str, lint_findings: dict[str, list[dict]]) -> None:
    assert lint_problems(lint_findings[combo]) == []


@pytest.fixture(scope="module")
def checkov_results(copies: dict[str, Path]) -> dict[str, dict[str, list]]:
    files = [folder / name for folder in copies.values() for name in TEMPLATES]
    return checkov_grouped(files, lambda p: p.parent.name, COMBOS)


@pytest.mark.parametrize("combo", COMBOS)
def test_checkov_passes(combo: str, checkov_results: dict[str, dict[str, list]]) -> None:
    result = checkov_results[combo]
    assert failed_checks(result) == []
    checked = {c["resource"] for c in result["passed"]}
    # What checkov must have looked at, so a resource dropped by a condition cannot pass unseen.
    assert "AWS::SecretsManager::Secret.SecretKey" in checked
    assert ("AWS::IAM::Role.AppRole" in checked) == combo.endswith("-iam"), sorted(checked)


@pytest.fixture(scope="module")
def templates() -> dict[str, dict[str, Any]]:
    return {name: load(name) for name in TEMPLATES}


NO_VALUE = {"Ref": "AWS::NoValue"}


def _made(template: dict[str, Any], combo: str) -> dict[str, dict[str, Any]]:
    """The resources the combination creates, their properties evaluated (AWS::NoValue ones
    left out, as CloudFormation leaves them out)."""
    params = _params(combo)
    made = {}
    for name in present(template["Resources"], template, params):
        props = evaluate(template["Resources"][name].get("Properties", {}), template, params)
        made[name] = {k: v for k, v in props.items() if v != NO_VALUE}
    return made


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_iam_is_a_user_group_bound_to_the_cache_and_no_secret(
    mode: str, templates: dict[str, dict[str, Any]]
) -> None:
    cache = templates["cache.yaml"]
    made = _made(cache, f"{mode}-iam")
    user = made["AppIamUser"]
    assert user["AuthenticationMode"] == {"Type": "iam"}
    # ElastiCache: an IAM-enabled user's id and name must be the same.
    assert user["UserId"] == user["UserName"]
    assert made["UserGroup"]["UserIds"] == [{"Ref": "DisabledDefaultUser"}, {"Ref": "AppIamUser"}]
    default = made["DisabledDefaultUser"]
    assert (default["UserName"], default["AccessString"]) == ("default", "off -@all")
    bound = made[CACHE_RESOURCE[mode]]
    if mode == "serverless":
        assert bound["UserGroupId"] == {"Ref": "UserGroup"}
    else:
        assert bound["UserGroupIds"] == [{"Ref": "UserGroup"}]
        assert bound["TransitEncryptionEnabled"] is True  # IAM tokens need TLS
    # No password of any kind exists.
    assert not {"AuthTokenSecret", "UserPasswordSecret", "AppUser"} & set(made)
    assert all("AuthToken" not in props for props in made.values())
    outputs = present(cache["Outputs"], cache, _params(f"{mode}-iam"))
    assert {"CacheArn", "UserArn", "Username"} <= outputs
    assert not {"SecretArn", "SecretKey"} & outputs


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_token_keeps_the_auth_token_or_password(
    mode: str, templates: dict[str, dict[str, Any]]
) -> None:
    made = _made(templates["cache.yaml"], f"{mode}-token")
    assert "AppIamUser" not in made
    if mode == "serverless":
        assert made["AppUser"]["AuthenticationMode"]["Type"] == "password"
        assert "UserPasswordSecret" in made
    else:
        assert "AuthTokenSecret" in made and "UserGroup" not in made
        assert "resolve:secretsmanager" in str(made[CACHE_RESOURCE[mode]]["AuthToken"])
        assert "UserGroupIds" not in made[CACHE_RESOURCE[mode]]


def test_the_role_may_only_connect_to_the_cache_as_its_user(
    templates: dict[str, dict[str, Any]],
) -> None:
    app = templates["app.yaml"]
    role = _made(app, "replication-group-iam")["AppRole"]
    (policy,) = role["Policies"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement == {
        "Effect": "Allow",
        "Action": "elasticache:Connect",
        "Resource": [{"Ref": "CacheArn"}, {"Ref": "CacheUserArn"}],
    }
    assert "ManagedPolicyArns" not in role
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert sorted(trust["Action"]) == ["sts:AssumeRole", "sts:TagSession"]
    # Pod Identity's session tags name the one cluster, namespace and service account.
    assert trust["Condition"]["StringEquals"] == {
        "aws:SourceAccount": {"Ref": "AWS::AccountId"},
        "aws:RequestTag/eks-cluster-name": {"Ref": "ClusterName"},
        "aws:RequestTag/kubernetes-namespace": {"Ref": "AppNamespace"},
        "aws:RequestTag/kubernetes-service-account": {"Ref": "ServiceAccountName"},
    }
    # Pod Identity's source is the association, whose ARN names the cluster.
    source = trust["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    assert source.endswith(":podidentityassociation/${ClusterName}/*")


def test_the_cache_arns_are_the_ones_elasticache_connect_names(
    templates: dict[str, dict[str, Any]],
) -> None:
    """arn:...:replicationgroup:<id> for both node-based modes, the Serverless cache's own ARN,
    and the user's: what the IAM policy must name (ElastiCache user guide, Authenticating with
    IAM)."""
    cache = templates["cache.yaml"]
    outputs = cache["Outputs"]
    arns = {
        mode: evaluate(outputs["CacheArn"]["Value"], cache, _params(f"{mode}-iam"))
        for mode in CACHE_MODES
    }
    assert arns["serverless"] == {"Fn::GetAtt": ["ServerlessCache", "ARN"]}
    for mode, logical in (
        ("replication-group", "ReplicationGroup"),
        ("cluster", "ClusterReplicationGroup"),
    ):
        assert arns[mode]["Fn::Sub"].endswith(
            ":elasticache:${AWS::Region}:${AWS::AccountId}:replicationgroup:${" + logical + "}"
        )
    assert outputs["UserArn"]["Value"] == {"Fn::GetAtt": ["AppIamUser", "Arn"]}


@pytest.mark.parametrize("auth", AUTH_MODES)
def test_main_wires_the_app_stack(auth: str, templates: dict[str, dict[str, Any]]) -> None:
    main = templates["main.yaml"]
    params = _params(f"replication-group-{auth}")
    stack = evaluate(main["Resources"]["AppStack"]["Properties"], main, params)["Parameters"]
    assert stack["ServiceAccountName"] == SERVICE_ACCOUNT["metadata"]["name"]
    assert stack["AppNamespace"] == {"Ref": "AppNamespace"}
    assert stack["AuthMode"] == auth
    if auth == "iam":
        assert stack["CacheArn"] == {"Fn::GetAtt": ["CacheStack", "Outputs.CacheArn"]}
        assert stack["CacheUserArn"] == {"Fn::GetAtt": ["CacheStack", "Outputs.UserArn"]}
    else:
        assert (stack["CacheArn"], stack["CacheUserArn"]) == ("", "")
    app = _made(templates["app.yaml"], f"replication-group-{auth}")
    assert ("PodIdentityAssociation" in app) == (auth == "iam")
    outputs = present(main["Outputs"], main, params)
    assert {"CacheAuth", "CacheName", "SecretKeyArn", "AppNamespace"} <= outputs
    assert ({"CacheSecretArn", "CacheSecretKey"} <= outputs) == (auth == "token")
    assert main["Parameters"]["CacheAuth"]["Default"] == "iam"


def test_the_association_names_the_service_account_and_namespace(
    templates: dict[str, dict[str, Any]],
) -> None:
    association = _made(templates["app.yaml"], "serverless-iam")["PodIdentityAssociation"]
    assert association == {
        "ClusterName": {"Ref": "ClusterName"},
        "Namespace": {"Ref": "AppNamespace"},
        "ServiceAccount": {"Ref": "ServiceAccountName"},
        "RoleArn": {"Fn::GetAtt": ["AppRole", "Arn"]},
    }


def test_secret_key_is_generated_encrypted_and_never_an_output(
    templates: dict[str, dict[str, Any]],
) -> None:
    app = templates["app.yaml"]
    secret = app["Resources"]["SecretKey"]["Properties"]
    assert "SecretString" not in secret  # generated by Secrets Manager, in no template
    assert secret["GenerateSecretString"] == {"PasswordLength": 64, "ExcludePunctuation": True}
    assert secret["KmsKeyId"] == {"Ref": "KeyArn"}
    values = [str(o["Value"]) for o in app["Outputs"].values()]
    assert all("SecretString" not in v and "resolve" not in v for v in values)


def test_rendered_copies_have_their_combination(copies: dict[str, Path]) -> None:
    for combo, folder in copies.items():
        mode, auth = _split(combo)
        main = load_path(folder / "main.yaml")["Parameters"]
        assert (main["CacheMode"]["Default"], main["CacheAuth"]["Default"]) == (mode, auth)
        assert load_path(folder / "app.yaml")["Parameters"]["AuthMode"]["Default"] == auth


@pytest.mark.parametrize("mode", CACHE_MODES)
def test_with_iam_every_cache_output_read_exists_and_names_a_made_resource(
    mode: str, templates: dict[str, dict[str, Any]]
) -> None:
    """cfn-lint cannot follow a nested stack: a GetAtt of an output the IAM combination leaves
    out (or one naming a resource it does not make) would first fail in AWS."""
    cache, main = templates["cache.yaml"], templates["main.yaml"]
    params = _params(f"{mode}-iam")
    made = present(cache["Resources"], cache, params)
    outputs = present(cache["Outputs"], cache, params)
    read = [
        evaluate(main["Outputs"][name]["Value"], main, params)
        for name in present(main["Outputs"], main, {**params, "CertificateArn": ""})
    ]
    read += list(
        evaluate(main["Resources"]["AppStack"]["Properties"]["Parameters"], main, params).values()
    )
    for stack, output in getatt_outputs(read):
        assert stack != "CacheStack" or output in outputs, (mode, output)
    for name in outputs:
        value = evaluate(cache["Outputs"][name]["Value"], cache, params)
        refs = {v["Ref"] for v in walk(value) if isinstance(v, dict) and "Ref" in v}
        attrs = {
            v["Fn::GetAtt"][0] for v in walk(value) if isinstance(v, dict) and "Fn::GetAtt" in v
        }
        assert (refs | attrs) & set(cache["Resources"]) <= made, (mode, name)
