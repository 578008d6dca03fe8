"""The network stack: three subnets per tier in the zones deploy.sh chose, isolated database
route tables, and the load balancer role tags."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from tests.support import REPO_ROOT

from .cfn import resources


def _subnets_by_tier(network: dict[str, Any]) -> dict[str, list[str]]:
    subnets = sorted(resources(network, "AWS::EC2::Subnet"))
    tiers = {
        "public": [s for s in subnets if s.startswith("PublicSubnet")],
        "app": [s for s in subnets if re.fullmatch(r"PrivateSubnet\d", s)],
        "db": [s for s in subnets if s.startswith("PrivateDBSubnet")],
    }
    assert sum(map(len, tiers.values())) == len(subnets), f"unexpected subnets: {subnets}"
    return tiers


def test_three_subnets_per_tier_in_the_three_zones_deploy_sh_chose(
    templates: dict[str, dict[str, Any]],
) -> None:
    """Zones come from the AvailabilityZones parameter (chosen by zone ID), never by position from
    GetAZs, whose first names may include a zone EKS refuses."""
    network = templates["network.yaml"]
    assert "Fn::GetAZs" not in json.dumps(network)
    for tier, names in _subnets_by_tier(network).items():
        azs = [network["Resources"][n]["Properties"]["AvailabilityZone"] for n in names]
        indexes = sorted(az["Fn::Select"][0] for az in azs)
        assert len(names) == 3 and indexes == [0, 1, 2], f"{tier}: {names} {azs}"
        assert all(az["Fn::Select"][1] == {"Ref": "AvailabilityZones"} for az in azs), tier
    assert network["Parameters"]["AvailabilityZones"]["Type"] == (
        "List<AWS::EC2::AvailabilityZone::Name>"
    )
    stack = templates["main.yaml"]["Resources"]["NetworkStack"]["Properties"]["Parameters"]
    assert stack["AvailabilityZones"] == {"Fn::Join": [",", {"Ref": "AvailabilityZones"}]}


def test_db_subnets_use_only_isolated_db_route_tables(
    templates: dict[str, dict[str, Any]],
) -> None:
    """The original associated the DB subnets with app route tables; pin the fix."""
    network = templates["network.yaml"]
    tiers = _subnets_by_tier(network)
    table_of: dict[str, str] = {}
    for assoc in resources(network, "AWS::EC2::SubnetRouteTableAssociation").values():
        subnet = assoc["Properties"]["SubnetId"]["Ref"]
        assert subnet not in table_of, f"{subnet} associated twice"
        table_of[subnet] = assoc["Properties"]["RouteTableId"]["Ref"]
    assert set(table_of) == {s for names in tiers.values() for s in names}
    db_tables = {table_of[s] for s in tiers["db"]}
    other_tables = {table_of[s] for s in tiers["public"] + tiers["app"]}
    assert db_tables.isdisjoint(other_tables), (db_tables, other_tables)
    assert all("DB" in t for t in db_tables), db_tables
    routes = resources(network, "AWS::EC2::Route").values()
    db_routes = [r for r in routes if r["Properties"]["RouteTableId"]["Ref"] in db_tables]
    assert not db_routes, f"DB subnets must not route out of the VPC: {db_routes}"
    app_routes = [
        r["Properties"]
        for r in routes
        if r["Properties"]["RouteTableId"]["Ref"] in {table_of[s] for s in tiers["app"]}
    ]
    assert all("NatGatewayId" in r for r in app_routes) and app_routes


def test_subnets_carry_the_load_balancer_role_tags(templates: dict[str, dict[str, Any]]) -> None:
    network = templates["network.yaml"]
    expected = {"public": "kubernetes.io/role/elb", "app": "kubernetes.io/role/internal-elb"}
    for tier, names in _subnets_by_tier(network).items():
        for name in names:
            props = network["Resources"][name]["Properties"]
            tags = {t["Key"]: t["Value"] for t in props.get("Tags", [])}
            roles = {k: v for k, v in tags.items() if k.startswith("kubernetes.io/role/")}
            assert roles == ({expected[tier]: "1"} if tier in expected else {}), (name, roles)
            assert props.get("MapPublicIpOnLaunch") is False, name


def test_the_vpc_is_on_addresses_the_pods_nginx_lets_probes_from(
    templates: dict[str, dict[str, Any]],
) -> None:
    """nginx passes the probes past its bound on requests only from private addresses (geo
    $probe_way in nginx.conf): the kubelet's and the load balancers' addresses are the VPC's, so
    the VPC must be on those ranges, or a busy pod's probes would be refused with the pages
    (found by review: VPCcidr took any range)."""
    patterns = {
        name: templates[name]["Parameters"]["VPCcidr"]["AllowedPattern"]
        for name in ("main.yaml", "network.yaml")
    }
    pattern = patterns["main.yaml"]
    assert patterns["network.yaml"] == pattern
    geo = re.search(r"geo \$probe_way \{(.*?)\}", (REPO_ROOT / "nginx.conf").read_text(), re.S)
    assert geo, "nginx.conf has no geo $probe_way"
    admitted = [
        ipaddress.ip_network(network)
        for network, way in re.findall(r"^\s*(\S+) (\w+);", geo.group(1), re.M)
        if way == "probes"
    ]
    default = templates["main.yaml"]["Parameters"]["VPCcidr"]["Default"]
    for cidr in (default, "10.20.0.0/16", "172.16.0.0/16", "172.31.240.0/20", "192.168.0.0/16",
                 "100.64.0.0/16", "100.127.255.240/28"):  # fmt: skip
        assert re.fullmatch(pattern, cidr), cidr
        network = ipaddress.ip_network(cidr)
        assert any(network.subnet_of(a) for a in admitted if a.version == 4), cidr
    for cidr in ("198.19.0.0/16", "11.0.0.0/16", "172.32.0.0/16", "172.15.0.0/16",
                 "100.128.0.0/16", "100.63.0.0/16", "192.169.0.0/16", "10.0.0.0/8",
                 "10.0.0.0/29"):  # fmt: skip
        assert not re.fullmatch(pattern, cidr), cidr
