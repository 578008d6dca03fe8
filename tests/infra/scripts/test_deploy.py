"""deploy.sh against moto: stacks, zones by zone ID, the certificate, failures and re-runs."""

from __future__ import annotations

import json

import pytest

from .harness import (
    ACCOUNT,
    AWS_FIXTURES,
    BOOTSTRAP,
    CACHE_HOST,
    CERTIFICATE,
    CLUSTER,
    DEPLOYER_ROLE,
    NESTED,
    OTHER_STACK,
    PROFILE,
    REGION,
    STACK,
    STACK_EVENTS,
    WEB_ACL,
    ZONES,
    Run,
    World,
    assert_profile_and_region,
    followed_creation,
    operation,
    option,
    stack_outputs,
    stack_parameters,
)


def test_deploy_creates_both_stacks_and_a_rerun_changes_nothing(world: World) -> None:
    """Real: every call in moto except that the main stack runs the stand-in template.

    Checks the order of the calls, the validated templates, the uploaded templates (byte for byte
    in moto's S3), the parameters the main stack got (moto checks them against main.yaml's
    AllowedPattern), the printed outputs and next command; then a second run is "No changes".
    """
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    templates = sorted(p.name for p in (world.root / "cfn").glob("*.yaml"))
    assert run.ops() == [
        ("configure", "get", ""),
        ("cloudformation", "describe-stacks", STACK),
        ("ec2", "describe-availability-zones", ""),
        ("sts", "get-caller-identity", ""),
        ("iam", "get-role", "deployer"),
        *[("cloudformation", "validate-template", "")] * len(templates),
        *followed_creation(BOOTSTRAP),
        ("s3", "cp", ""),
        *followed_creation(STACK),
    ]
    # moto's own events of the bootstrap stack (it records the stack's, not its resources'),
    # one line each, and the end.
    assert f"creating stack {BOOTSTRAP}: 3 resources" in run.stdout
    assert f"0/3  {BOOTSTRAP}  AWS::CloudFormation::Stack  CREATE_COMPLETE" in run.stdout
    assert "] CREATE_COMPLETE" in run.stdout
    assert_profile_and_region(run)
    validated = [
        option(c["argv"], "--template-body")
        for c in run.tool("aws")
        if operation(c)[1] == "validate-template"
    ]
    assert validated == [f"file://{world.root}/cfn/{name}" for name in templates]
    assert f"Availability Zones: {ZONES} (chosen by zone ID" in run.stdout
    assert "WARNING: no certificate (-c): the app will be served over plain HTTP" in run.stderr

    cfn = world.client("cloudformation")
    boot = stack_outputs(cfn, BOOTSTRAP)
    s3 = world.client("s3")
    for name in NESTED:
        body = s3.get_object(Bucket=boot["TemplateBucketName"], Key=name)["Body"].read()
        assert body == (world.root / "cfn" / name).read_bytes()

    create = next(c["argv"] for c in run.tool("aws") if operation(c)[1:] == ("create-stack", STACK))
    assert option(create, "--template-body") == f"file://{world.root}/cfn/main.yaml"
    params = {
        p["ParameterKey"]: p["ParameterValue"] for p in json.loads(option(create, "--parameters"))
    }
    assert params == {
        "TemplateBucket": boot["TemplateBucketName"],
        "EcrRepositoryUri": boot["EcrRepositoryUri"],
        # The assumed-role session arn:aws:sts::...:assumed-role/deployer/alice, as its role:
        "ClusterAdminPrincipalArn": DEPLOYER_ROLE,
        "AvailabilityZones": ZONES,
        "CertificateArn": "",
        "CacheMode": "replication-group",
        "CacheAuth": "iam",  # the default: no cache password anywhere
        "LoadBalancerType": "nlb",
    }
    capabilities = create[create.index("--capabilities") + 1 :][:2]
    assert capabilities == ["CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
    assert cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    assert f"ClusterName\t{CLUSTER}" in run.stdout
    assert f"CachePrimaryEndpoint\t{CACHE_HOST}" in run.stdout
    assert f"./init.sh -p {PROFILE} -r {REGION} -s {STACK}" in run.stdout

    assert boot["EcrRepositoryName"] == f"{STACK}/message-app"

    again = world.run("deploy.sh", "-p", PROFILE)
    assert again.returncode == 0, again.stderr
    assert f"No changes to deploy: stack {BOOTSTRAP} is up to date" in again.stdout
    assert f"No changes to deploy: stack {STACK} is up to date" in again.stdout
    assert ("cloudformation", "update-stack", STACK) in again.ops()
    assert not [op for op in again.ops() if op[1] == "create-stack"]
    # The existing stack's zones are kept, not chosen again (new zones would replace every subnet).
    assert ("ec2", "describe-availability-zones", "") not in again.ops()
    assert f"Availability Zones: {ZONES} (those of the existing stack {STACK})" in again.stdout
    assert f"./init.sh -p {PROFILE} -r {REGION} -s {STACK}" in again.stdout
    assert_profile_and_region(again)


def test_deploy_failed_main_stack_names_the_first_failure_and_a_rerun_recreates_it(
    world: World,
) -> None:
    """Real: validation, bootstrap stack, uploads in moto. Recorded: the main stack's creation
    fails in its cache stack (stack-events/create-fails-in-cache.json): deploy.sh prints each
    event as it polls, down into the nested stacks, names the nested resource that failed first
    with its reason, and exits 1. The stack then reads ROLLBACK_COMPLETE until the re-run deletes
    it (in moto) and recreates it.

    Also checks -r, -s, -a and -o: no region lookup, no caller lookup, overrides passed as JSON
    (a comma-separated list value stays whole).
    """
    subnets = "10.0.1.0/24,10.0.2.0/24,10.0.3.0/24"
    admin = f"arn:aws:iam::{ACCOUNT}:role/admins"
    recording = str(STACK_EVENTS / "create-fails-in-cache.json")
    run = world.run(
        "deploy.sh", "-p", PROFILE, "-r", REGION, "-s", OTHER_STACK, "-a", admin,
        "-o", "CacheReplicaCount=0", "-o", f"PublicSubnets={subnets}",
        env={"STUB_MAIN_EVENTS": recording, "STUB_MAIN_STACK": OTHER_STACK},
    )  # fmt: skip
    assert run.returncode == 1
    assert f"creating stack {OTHER_STACK} failed (first failure above)" in run.stderr
    assert (
        "deploy.sh: stack ended ROLLBACK_COMPLETE; first failure: CacheStack/ReplicationGroup "
        "(AWS::ElastiCache::ReplicationGroup) CREATE_FAILED: STUB-CACHE-QUOTA: cache node quota "
        "exceeded"
    ) in run.stderr
    # Progress as it happened: the nested stacks' resources, the parent's failure with its reason.
    assert "EKSStack/Cluster  AWS::EKS::Cluster  CREATE_IN_PROGRESS" in run.stdout
    assert "CacheStack  AWS::CloudFormation::Stack  CREATE_FAILED  Embedded stack" in run.stdout
    assert "Next:" not in run.stdout
    ops = run.ops()
    assert ops[:3] == [
        ("cloudformation", "describe-stacks", OTHER_STACK),
        ("ec2", "describe-availability-zones", ""),
        ("cloudformation", "validate-template", ""),
    ]
    assert not [op for op in ops if op[0] in ("sts", "iam", "configure")]
    assert not [op for op in ops if op[1] == "wait"], "the CLI's waiter gives up after an hour"
    read = {op[2] for op in ops if op[1] == "describe-stack-events"}
    assert {f"{OTHER_STACK}-EKSStack-STUB", f"{OTHER_STACK}-CacheStack-STUB"} <= read
    assert_profile_and_region(run)
    create = next(
        c["argv"] for c in run.tool("aws") if operation(c)[1:] == ("create-stack", OTHER_STACK)
    )
    params = {
        p["ParameterKey"]: p["ParameterValue"] for p in json.loads(option(create, "--parameters"))
    }
    assert params["ClusterAdminPrincipalArn"] == admin
    assert params["CacheReplicaCount"] == "0"
    assert params["PublicSubnets"] == subnets
    boot = stack_outputs(world.client("cloudformation"), f"{OTHER_STACK}-bootstrap")
    assert boot["EcrRepositoryName"] == "fes-other/message-app"

    # The cause fixed, a re-run replaces the rolled-back stack (which cannot be updated).
    again = world.run(
        "deploy.sh", "-p", PROFILE, "-r", REGION, "-s", OTHER_STACK, "-a", admin,
        env={"STUB_MAIN_STACK": OTHER_STACK},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (
        "is ROLLBACK_COMPLETE from an earlier creation that did not finish: deleting it"
        in again.stdout
    )
    assert "STUB-CACHE-QUOTA" in again.stderr
    main_ops = [op[1] for op in again.ops() if op[2] == OTHER_STACK and op[0] == "cloudformation"]
    assert main_ops.index("delete-stack") < main_ops.index("create-stack")
    assert main_ops[-1] == "describe-stacks"
    assert_profile_and_region(again)
    assert f"./init.sh -p {PROFILE} -r {REGION} -s {OTHER_STACK}" in again.stdout


def test_deploy_stops_at_an_invalid_template(world: World) -> None:
    """Real: moto's validate-template (cfn-lint) rejects a broken cache.yaml; nothing is made."""
    cache = world.root / "cfn" / "cache.yaml"
    cache.write_text(cache.read_text() + "\n  Broken:\n    Value: !Ref NoSuchResource\n")
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 1
    assert "template cache.yaml is invalid" in run.stderr
    assert not [op for op in run.ops() if op[1] in ("create-stack", "update-stack", "cp")]
    assert world.client("cloudformation").describe_stacks()["Stacks"] == []


def test_deploy_chooses_zones_by_id_skipping_those_eks_refuses(world: World) -> None:
    """Real: everything in moto's us-east-1 as in the first deploy test. Recorded: the account's
    describe-availability-zones answer (tests/fixtures/aws), where us-east-1b is use1-az3: the
    first three names, which `!Select [n, !GetAZs ""]` took, would have failed after ten minutes.
    """
    run = world.run(
        "deploy.sh", "-p", PROFILE, "-r", "us-east-1",
        env={"STUB_AZ_FIXTURE": str(AWS_FIXTURES / "describe-availability-zones-us-east-1.json")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (call,) = run.aws_calls("ec2", "describe-availability-zones")
    assert option(call["argv"], "--filters") == "Name=zone-type,Values=availability-zone"
    chosen = "us-east-1a,us-east-1c,us-east-1d"
    assert run.main_stack_parameters()["AvailabilityZones"] == chosen
    assert f"Availability Zones: {chosen} (chosen by zone ID; EKS refuses use1-az3" in run.stdout


@pytest.mark.parametrize(
    ("fixture", "listed"),
    [
        # moto's own us-west-1: two zones, as most accounts see it.
        (None, "us-west-1a (usw1-az3), us-west-1b (usw1-az1)"),
        # An account that still sees usw1-az2: three zones, two usable.
        (
            "describe-availability-zones-us-west-1-three.json",
            "us-west-1a (usw1-az1), us-west-1b (usw1-az3)",
        ),
    ],
)
def test_deploy_stops_before_creating_anything_without_three_usable_zones(
    world: World, fixture: str | None, listed: str
) -> None:
    """Real: moto's us-west-1 zones, or a recorded answer; the region check comes before any
    stack, bucket or template call."""
    env = {"STUB_AZ_FIXTURE": str(AWS_FIXTURES / fixture)} if fixture else {}
    run = world.run("deploy.sh", "-p", PROFILE, "-r", "us-west-1", env=env)
    assert run.returncode == 1
    assert (
        f"deploy.sh: region us-west-1 has 2 Availability Zones EKS can use ({listed}), 3 are "
        "needed (EKS refuses use1-az3 usw1-az2 cac1-az3): choose another region with -r; "
        "nothing was created"
    ) in run.stderr
    assert run.ops() == [
        ("cloudformation", "describe-stacks", STACK),
        ("ec2", "describe-availability-zones", ""),
    ]
    assert "Next:" not in run.stdout


def test_deploy_keeps_the_certificate_of_the_stack_until_told_otherwise(world: World) -> None:
    """Real, all in moto: a stack deployed with -c. A re-run without -c keeps its certificate
    (HTTPS does not vanish because an option was left out); `-c none` returns to plain HTTP,
    with the warning."""
    world.create_stacks(certificate=CERTIFICATE)
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    assert run.main_stack_parameters()["CertificateArn"] == CERTIFICATE
    assert "WARNING" not in run.stderr
    assert ("ec2", "describe-availability-zones", "") not in run.ops()
    assert run.main_stack_parameters()["AvailabilityZones"] == ZONES
    assert f"CertificateArn\t{CERTIFICATE}" in run.stdout

    plain = world.run("deploy.sh", "-p", PROFILE, "-c", "none")
    assert plain.returncode == 0, plain.stderr
    assert plain.main_stack_parameters()["CertificateArn"] == ""
    assert "WARNING: no certificate (-c)" in plain.stderr
    assert "CertificateArn" not in plain.stdout


def test_deploy_keeps_the_cluster_admin_of_the_stack_until_told_otherwise(world: World) -> None:
    """Real, all in moto: a stack whose cluster admin is another role than the caller's. A plain
    re-run keeps that admin (an access entry's principal cannot change: CloudFormation would
    replace the entry, and the first admin would lose the cluster) without asking who the caller
    is; -a names a new one, with a warning that the old one loses its access."""
    first = f"arn:aws:iam::{ACCOUNT}:role/team/first-admin"
    world.create_stacks(parameters={"ClusterAdminPrincipalArn": first})
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    assert run.main_stack_parameters()["ClusterAdminPrincipalArn"] == first
    assert f"==> cluster admin: {first}" in run.stdout
    assert not [op for op in run.ops() if op[0] == "sts"]
    assert "cluster admin" not in run.stderr

    switched = world.run("deploy.sh", "-p", PROFILE, "-a", DEPLOYER_ROLE)
    assert switched.returncode == 0, switched.stderr
    assert switched.main_stack_parameters()["ClusterAdminPrincipalArn"] == DEPLOYER_ROLE
    assert (
        f"WARNING: cluster admin {first} -> {DEPLOYER_ROLE}: the first loses its access to the "
        "cluster"
    ) in switched.stderr


def _changed_nothing(run: Run) -> None:
    """Neither stack updated, created or deleted, no template uploaded."""
    changes = ("create-stack", "update-stack", "delete-stack")
    assert [op for op in run.ops() if op[1] in changes or op[0] == "s3"] == []


def test_a_stack_whose_rollback_failed_is_kept_and_how_to_finish_it_said(world: World) -> None:
    """Real, in moto, but for the state (moto cannot fail a rollback): UPDATE_ROLLBACK_FAILED.
    deploy.sh neither updates nor suggests deleting the stack (the cluster and every session
    would go): it names CloudFormation's continue-update-rollback, with the profile and region."""
    world.create_stacks()
    run = world.run("deploy.sh", "-p", PROFILE, env={"STUB_MAIN_STATUS": "UPDATE_ROLLBACK_FAILED"})
    assert run.returncode == 1
    assert (
        f"aws --profile {PROFILE} --region {REGION} cloudformation continue-update-rollback "
        f"--stack-name {STACK}"
    ) in run.stderr
    assert "destroy.sh" not in run.stderr
    _changed_nothing(run)


def test_a_main_stack_still_busy_gets_no_new_templates(world: World) -> None:
    """Real, in moto, but for the state: a deploy run again while the last one's update still
    runs (Ctrl-C stops the watching, not the update). It used to update the bootstrap stack and
    upload the nested templates before refusing: the nested stacks the update had not reached
    yet would have started from them. (Found by review.)"""
    world.create_stacks()
    run = world.run("deploy.sh", "-p", PROFILE, env={"STUB_MAIN_STATUS": "UPDATE_IN_PROGRESS"})
    assert run.returncode == 1
    assert f"stack {STACK} is busy (UPDATE_IN_PROGRESS); wait until it finishes" in run.stderr
    _changed_nothing(run)


def test_deploy_keeps_the_cache_mode_of_the_stack_until_told_otherwise(world: World) -> None:
    """Real, all in moto: a replication-group stack. -m serverless switches it, with a warning
    that every session is lost; a re-run without -m keeps serverless instead of falling back to
    the default (which would replace the cache again)."""
    world.create_stacks()
    run = world.run("deploy.sh", "-p", PROFILE, "-m", "serverless")
    assert run.returncode == 0, run.stderr
    assert run.main_stack_parameters()["CacheMode"] == "serverless"
    assert (
        "WARNING: cache mode replication-group -> serverless replaces the session cache: "
        "every session is lost"
    ) in run.stderr
    assert "./init.sh and kubectl apply -k .deploy/" in run.stderr

    again = world.run("deploy.sh", "-p", PROFILE)
    assert again.returncode == 0, again.stderr
    assert again.main_stack_parameters()["CacheMode"] == "serverless"
    assert "cache mode" not in again.stderr
    assert "==> cache mode: serverless" in again.stdout


def test_deploy_keeps_the_cache_authentication_until_told_otherwise(world: World) -> None:
    """Real, all in moto: a stack made with CacheAuth=token (AUTH token). A re-run without -A
    keeps token (the default, iam, would change how every pod signs in); -A iam switches it with
    a warning to re-initialise the pods at once; the next plain re-run keeps iam."""
    world.create_stacks(parameters={"CacheAuth": "token"})
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    assert run.main_stack_parameters()["CacheAuth"] == "token"
    assert "==> cache mode: replication-group, authentication: token" in run.stdout
    assert "cache authentication" not in run.stderr

    switched = world.run("deploy.sh", "-p", PROFILE, "-A", "iam")
    assert switched.returncode == 0, switched.stderr
    assert switched.main_stack_parameters()["CacheAuth"] == "iam"
    assert (
        "WARNING: cache authentication token -> iam: the running pods cannot open new cache "
        "connections until you run ./init.sh and kubectl apply -k .deploy/"
    ) in switched.stderr

    again = world.run("deploy.sh", "-p", PROFILE)
    assert again.returncode == 0, again.stderr
    assert again.main_stack_parameters()["CacheAuth"] == "iam"
    assert "cache authentication" not in again.stderr


def test_deploy_keeps_every_parameter_of_the_stack_until_told_otherwise(world: World) -> None:
    """Real, all in moto: a 1-shard cluster without replicas, made with -o. A plain re-run passes
    every parameter of the stack that it does not set itself with UsePreviousValue (left out,
    CloudFormation falls back to the template defaults: 3 shards of 2 nodes), and moto's stack
    keeps 1 x 0 afterwards; -o NumNodeGroups=2 changes that one alone."""
    chosen = {
        "CacheMode": "cluster",
        "NumNodeGroups": "1",
        "ReplicasPerNodeGroup": "0",
        "ServerlessMaxECPUPerSecond": "5000",
        "PrivateDBSubnets": "10.0.17.0/24,10.0.18.0/24,10.0.19.0/24",
    }
    world.create_stacks(parameters=chosen)
    cfn = world.client("cloudformation")
    before = stack_parameters(cfn, STACK)
    assert {**before, **chosen} == before
    run = world.run("deploy.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    given = run.main_stack_parameters()
    assert set(given) == {
        "TemplateBucket",
        "EcrRepositoryUri",
        "ClusterAdminPrincipalArn",
        "AvailabilityZones",
        "CertificateArn",
        "CacheMode",
        "CacheAuth",
        "LoadBalancerType",
    }
    assert given["CacheMode"] == "cluster"
    assert run.kept_parameters() == set(before) - set(given)
    assert set(chosen) - {"CacheMode"} <= run.kept_parameters()
    assert stack_parameters(cfn, STACK) == before
    assert f"stack {STACK} is up to date" not in run.stdout  # moto updated it

    again = world.run("deploy.sh", "-p", PROFILE)
    assert again.returncode == 0, again.stderr
    assert f"No changes to deploy: stack {STACK} is up to date" in again.stdout

    more = world.run("deploy.sh", "-p", PROFILE, "-o", "NumNodeGroups=2")
    assert more.returncode == 0, more.stderr
    assert more.main_stack_parameters()["NumNodeGroups"] == "2"
    assert "NumNodeGroups" not in more.kept_parameters()
    assert stack_parameters(cfn, STACK) == {**before, "NumNodeGroups": "2"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("-m", "redis-cluster"), 2, "-m needs replication-group, cluster or serverless"),
        (("-o", "CacheMode=cluster"), 2, "CacheMode is set by deploy.sh itself"),
        (("-A", "password"), 2, "-A needs iam or token, got 'password'"),
        (("-o", "CacheAuth=token"), 2, "CacheAuth is set by deploy.sh itself"),
        (
            ("-c", CERTIFICATE.replace(REGION, "us-east-1")),
            1,
            f"is not in {REGION}: the load balancer can only use an ACM certificate of its own",
        ),
        (("-c", "my-cert"), 2, "-c needs an ACM certificate ARN"),
        (("-o", "AvailabilityZones=a,b,c"), 2, "AvailabilityZones is set by deploy.sh itself"),
    ],
)
def test_deploy_refuses_a_wrong_certificate_or_zone_override(
    shared_world: World, args: tuple[str, ...], code: int, message: str
) -> None:
    """Real: the checks before any AWS call but the profile's region lookup."""
    run = shared_world.run("deploy.sh", "-p", PROFILE, *args)
    assert run.returncode == code
    assert message in run.stderr
    assert run.ops() in ([], [("configure", "get", "")])


def test_deploy_keeps_the_load_balancer_type_until_told_otherwise(world: World) -> None:
    """Real, all in moto: an NLB stack. -e alb switches it, with a note on what to run next; a
    re-run without -e keeps alb instead of falling back to the default."""
    world.create_stacks()
    run = world.run("deploy.sh", "-p", PROFILE, "-e", "alb")
    assert run.returncode == 0, run.stderr
    assert run.main_stack_parameters()["LoadBalancerType"] == "alb"
    assert "NOTE: load balancer nlb -> alb: afterwards run ./init.sh" in run.stderr
    assert f"WebAclArn\t{WEB_ACL}" in run.stdout

    again = world.run("deploy.sh", "-p", PROFILE)
    assert again.returncode == 0, again.stderr
    assert again.main_stack_parameters()["LoadBalancerType"] == "alb"
    assert "==> load balancer: alb" in again.stdout
    assert "NOTE" not in again.stderr
