"""The EKS stack: Kubernetes versions in standard support, access through an access entry,
envelope encryption and control-plane logs, Auto Mode's capabilities, the metrics-server add-on."""

from __future__ import annotations

from datetime import date
from typing import Any

from .cfn import one, resources

# End of EKS standard support per the EKS Kubernetes release calendar
# (docs.aws.amazon.com/eks/latest/userguide/kubernetes-versions.html), as read when the templates
# were written. Adding a version to AllowedValues means adding its date here.
EKS_STANDARD_SUPPORT_END = {
    "1.33": date(2026, 7, 29),
    "1.34": date(2026, 12, 2),
    "1.35": date(2027, 3, 27),
    # On EKS since 2026-06-02 (checked 2026-12-06); standard support is 14 months from the EKS
    # release, so the calendar's exact day may differ by a day or two.
    "1.36": date(2027, 8, 2),
}
TEMPLATES_WRITTEN = date(2026, 11, 30)
# A version on offer must keep standard support for at least this long after the templates were
# checked: a new cluster should not need an upgrade (or extended support) within weeks.
MIN_SUPPORT_LEFT_DAYS = 60


EKS_LOG_TYPES = {"api", "audit", "authenticator", "controllerManager", "scheduler"}


def test_kubernetes_versions_are_in_standard_support(
    templates: dict[str, dict[str, Any]],
) -> None:
    main = templates["main.yaml"]["Parameters"]["KubernetesVersion"]
    child = templates["eks.yaml"]["Parameters"]["KubernetesVersion"]
    assert main["AllowedValues"] == child["AllowedValues"]
    assert main["Default"] in main["AllowedValues"]
    short = [
        v
        for v in main["AllowedValues"]
        if (EKS_STANDARD_SUPPORT_END.get(v, date.min) - TEMPLATES_WRITTEN).days
        < MIN_SUPPORT_LEFT_DAYS
    ]
    assert not short, f"under {MIN_SUPPORT_LEFT_DAYS} days of standard support left: {short}"
    cluster = one(templates["eks.yaml"], "AWS::EKS::Cluster")
    assert cluster["Version"] == {"Ref": "KubernetesVersion"}


def test_cluster_access_is_through_an_admin_access_entry(
    templates: dict[str, dict[str, Any]],
) -> None:
    eks = templates["eks.yaml"]
    cluster = one(eks, "AWS::EKS::Cluster")
    assert cluster["AccessConfig"]["AuthenticationMode"] == "API"
    entry = one(eks, "AWS::EKS::AccessEntry")
    assert entry["PrincipalArn"] == {"Ref": "ClusterAdminPrincipalArn"}
    assert entry["ClusterName"] == {"Ref": "Cluster"}
    policies = [
        (p["PolicyArn"]["Fn::Sub"].rsplit("/", 1)[1], p["AccessScope"]["Type"])
        for p in entry["AccessPolicies"]
    ]
    assert policies == [("AmazonEKSClusterAdminPolicy", "cluster")]


def test_secrets_are_envelope_encrypted_and_control_plane_logged(
    templates: dict[str, dict[str, Any]],
) -> None:
    eks = templates["eks.yaml"]
    cluster = one(eks, "AWS::EKS::Cluster")
    [encryption] = cluster["EncryptionConfig"]
    assert encryption["Resources"] == ["secrets"]
    key_id, attribute = encryption["Provider"]["KeyArn"]["Fn::GetAtt"]
    key = eks["Resources"][key_id]
    assert (attribute, key["Type"]) == ("Arn", "AWS::KMS::Key")
    assert key["Properties"]["EnableKeyRotation"] is True
    logged = {t["Type"] for t in cluster["Logging"]["ClusterLogging"]["EnabledTypes"]}
    assert logged == EKS_LOG_TYPES
    vpc = cluster["ResourcesVpcConfig"]
    assert vpc["EndpointPrivateAccess"] is True
    assert vpc["SubnetIds"] == {"Ref": "PrivateSubnets"}


def test_auto_mode_has_all_three_capabilities_and_their_roles(
    templates: dict[str, dict[str, Any]],
) -> None:
    """EKS accepts Auto Mode only with compute, load balancing and block storage together."""
    eks = templates["eks.yaml"]
    assert not resources(eks, "AWS::EKS::Nodegroup")
    cluster = one(eks, "AWS::EKS::Cluster")
    compute = cluster["ComputeConfig"]
    assert compute["Enabled"] is True
    assert compute["NodePools"] == ["system", "general-purpose"]
    assert compute["NodeRoleArn"] == {"Fn::GetAtt": ["NodeRole", "Arn"]}
    assert cluster["KubernetesNetworkConfig"]["ElasticLoadBalancing"]["Enabled"] is True
    assert cluster["StorageConfig"]["BlockStorage"]["Enabled"] is True
    assert cluster["BootstrapSelfManagedAddons"] is False
    role = eks["Resources"]["ClusterRole"]["Properties"]
    policies = {p["Fn::Sub"].rsplit("/", 1)[1] for p in role["ManagedPolicyArns"]}
    assert policies == {
        "AmazonEKSClusterPolicy",
        "AmazonEKSComputePolicy",
        "AmazonEKSBlockStoragePolicy",
        "AmazonEKSLoadBalancingPolicy",
        "AmazonEKSNetworkingPolicy",
    }
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert sorted(trust["Action"]) == ["sts:AssumeRole", "sts:TagSession"]


def test_metrics_server_is_a_managed_add_on_at_eks_default_version(
    templates: dict[str, dict[str, Any]],
) -> None:
    """The HPA needs the metrics API; no add-on version is pinned by hand."""
    addons = [a["Properties"] for a in resources(templates["eks.yaml"], "AWS::EKS::Addon").values()]
    assert [a["AddonName"] for a in addons] == ["metrics-server"]
    assert all("AddonVersion" not in a for a in addons)
