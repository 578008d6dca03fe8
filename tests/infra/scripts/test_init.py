"""init.sh against moto: the image push, the overlay in .deploy/ (HTTP or HTTPS), re-runs."""

from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path

import pytest

from app.config import Settings

from .harness import (
    APP_NAMESPACE,
    BUILDERS,
    CACHE_HOST,
    CACHE_NAME,
    CERTIFICATE,
    CLUSTER,
    CLUSTER_CACHE_HOST,
    FIRST_SECRET_KEY,
    IAM_USER,
    PROFILE,
    REGION,
    SERVERLESS_CACHE_HOST,
    SERVERLESS_PW,
    STACK,
    Run,
    World,
    assert_profile_and_region,
    env_file,
    git,
    option,
    rendered,
)


def test_init_pushes_to_ecr_and_writes_the_overlay_then_reruns(world: World) -> None:
    """Real: stacks, ECR login token and image lookup, EKS update-kubeconfig, Secrets Manager in
    moto; git for the tag; kubectl kustomize on the real k8s/. Stand-in: docker (its push puts the
    tag into moto's ECR, so the re-run finds it) and kubectl.
    """
    boot = world.create_stacks()
    world.create_cluster()
    uri = boot["EcrRepositoryUri"]
    registry = uri.split("/")[0]
    tag = git(world.root, "rev-parse", "--short=12", "HEAD")

    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    assert run.ops() == [
        ("configure", "get", ""),
        ("cloudformation", "describe-stacks", STACK),
        ("eks", "update-kubeconfig", CLUSTER),
        ("ecr", "describe-images", boot["EcrRepositoryName"]),
        ("ecr", "get-login-password", ""),
        ("secretsmanager", "get-secret-value", world.secret_arn),
        ("secretsmanager", "list-secret-version-ids", world.secret_key_arn),
        ("secretsmanager", "get-secret-value", world.secret_key_arn),
    ]
    assert_profile_and_region(run)
    password = base64.b64decode(
        world.client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    ).decode()
    docker = run.tool("docker")
    assert [c["argv"] for c in docker] == [
        ["login", "--username", "AWS", "--password-stdin", registry],
        ["build", "--platform", "linux/amd64", "-t", f"{uri}:{tag}", str(world.root)],
        ["push", f"{uri}:{tag}"],
    ]
    assert docker[0]["stdin"].strip() == password.split(":", 1)[1]
    assert [c["argv"] for c in run.tool("kubectl")] == [
        ["kustomize", str(world.root / ".deploy")],
        ["-n", "default", "get", "deployment", "message-app", "--ignore-not-found", "-o", "json"],
    ]

    deploy_dir = world.root / ".deploy"
    assert stat.S_IMODE(deploy_dir.stat().st_mode) == 0o700
    secrets = deploy_dir / "secrets.env"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    values = env_file(secrets)
    assert values == {
        "SECRET_KEY": FIRST_SECRET_KEY,  # the stack's, not one of this machine's
        "SECRET_KEY_FALLBACKS": "",
        "REDIS_AUTH_TOKEN": "tok-first-0123456789",
    }
    for secret in filter(None, values.values()):
        assert secret not in run.stdout + run.stderr
    assert git(world.root, "status", "--porcelain") == "", (
        "a tracked file changed or .deploy/ shows"
    )

    kinds = rendered(world.root)
    config = kinds["ConfigMap"]["data"]
    assert config["REDIS_HOST"] == CACHE_HOST
    assert (config["REDIS_PORT"], config["REDIS_TLS"]) == ("6379", "true")
    assert (config["REDIS_CLUSTER"], config["REDIS_USERNAME"]) == ("false", "")
    assert config["REDIS_AUTH"] == "token"
    assert config["SESSION_COOKIE_SECURE"] == "false"
    assert config["LOG_LEVEL"] == "INFO", "the base's other settings must survive the merge"
    secret_data = {k: base64.b64decode(v).decode() for k, v in kinds["Secret"]["data"].items()}
    assert secret_data == values
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{uri}:{tag}"
    assert f"cluster/{CLUSTER}" in Path(world.env["KUBECONFIG"]).read_text()
    assert "the one command that deploys the app" in run.stdout
    assert "kubectl apply -k .deploy/" in run.stdout
    assert "open http://EXTERNAL-IP/" in run.stdout
    # No certificate: plain HTTP on port 80, said out loud.
    assert "WARNING: no certificate: the load balancer serves plain HTTP" in run.stderr
    service = kinds["Service"]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 80)]
    # The overlay puts every object of the app, its Secret included, in the stack's AppNamespace
    # (the one the Pod Identity association names) instead of the base's guard namespace, and
    # switches on NetworkPolicy enforcement (EKS Auto Mode's network policy controller).
    cni = kinds.pop("kube-system/ConfigMap")
    assert cni["data"] == {"enable-network-policy-controller": "true"}
    assert [d["metadata"].get("namespace") for d in kinds.values()] == ["default"] * len(kinds)
    assert "kubectl -n default get pods" in run.stdout

    world.client("secretsmanager").put_secret_value(
        SecretId=world.secret_arn, SecretString=json.dumps({"token": "tok-rotated-987654321"})
    )
    again = world.run("init.sh", "-p", PROFILE)
    assert again.returncode == 0, again.stderr
    assert f"image {uri}:{tag} is already in ECR" in again.stdout
    assert again.tool("docker") == []
    after = env_file(secrets)
    assert after["SECRET_KEY"] == FIRST_SECRET_KEY, "a new SECRET_KEY would fail every open form"
    assert after["REDIS_AUTH_TOKEN"] == "tok-rotated-987654321"
    # Another operator's machine, with no .deploy/ at all, writes the same key.
    shutil.rmtree(deploy_dir)
    elsewhere = world.run("init.sh", "-p", PROFILE)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert env_file(secrets)["SECRET_KEY"] == FIRST_SECRET_KEY


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def test_init_leaves_the_replica_count_of_a_deployment_applied_before_to_the_hpa(
    world: World, tmp_path: Path
) -> None:
    """Stand-in cluster (kubectl): a Deployment applied from the manifests that still set
    `replicas: 3`, scaled to 7 by the HPA. k8s/ no longer sets it, and the next apply would
    delete the field (down to 1 pod): init.sh drops it from kubectl's last-applied record only,
    once; a first deploy, or a cluster kubectl cannot read, changes nothing (the latter says
    what to do)."""
    world.create_stacks()
    world.create_cluster()
    applied = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "message-app", "namespace": "default"},
        "spec": {"replicas": 3, "revisionHistoryLimit": 5},
    }
    live = tmp_path / "deployment.json"
    live.write_text(json.dumps({
        "metadata": {"name": "message-app", "annotations": {LAST_APPLIED: json.dumps(applied)}},
        "spec": {"replicas": 7},
    }))  # fmt: skip
    run = world.run("init.sh", "-p", PROFILE, env={"STUB_DEPLOYMENT": str(live)})
    assert run.returncode == 0, run.stderr
    (annotate,) = [c["argv"] for c in run.tool("kubectl") if "annotate" in c["argv"]]
    assert annotate[:6] == ["-n", "default", "annotate", "deployment", "message-app", "--overwrite"]
    name, _, record = annotate[6].partition("=")
    assert name == LAST_APPLIED
    assert json.loads(record) == {**applied, "spec": {"revisionHistoryLimit": 5}}
    assert "its replica count is the HPA's alone" in run.stdout

    live.write_text(json.dumps({"metadata": {"annotations": {LAST_APPLIED: record}}}))
    for env in ({"STUB_DEPLOYMENT": str(live)}, {}):  # done already; no Deployment yet
        again = world.run("init.sh", "-p", PROFILE, env=env)
        assert again.returncode == 0, again.stderr
        assert not [c for c in again.tool("kubectl") if "annotate" in c["argv"]]
    unreadable = world.run("init.sh", "-p", PROFILE, env={"STUB_KUBECTL_FAILS": "1"})
    assert unreadable.returncode == 0, unreadable.stderr
    assert "could not read deployment default/message-app" in unreadable.stderr
    assert "kubectl apply edit-last-applied" in unreadable.stderr


def test_another_platforms_build_of_the_same_commit_gets_its_own_tag(world: World) -> None:
    """Real: stacks, ECR in moto; git for the tag. Stand-in: docker (its push registers the tag).
    Before (found by review), -P linux/arm64 after an amd64 build of the same commit found the
    commit's tag in ECR, built nothing and deployed the amd64 image to arm64 nodes."""
    boot = world.create_stacks()
    world.create_cluster()
    uri, tag = boot["EcrRepositoryUri"], git(world.root, "rev-parse", "--short=12", "HEAD")
    assert world.run("init.sh", "-p", PROFILE).returncode == 0
    run = world.run("init.sh", "-p", PROFILE, "-P", "linux/arm64")
    assert run.returncode == 0, run.stderr
    assert "already in ECR" not in run.stdout
    builds = [c["argv"] for c in run.tool("docker") if c["argv"][0] == "build"]
    assert builds == [["build", "--platform", "linux/arm64", "-t", f"{uri}:{tag}-arm64",
                       str(world.root)]]  # fmt: skip
    (container,) = rendered(world.root)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{uri}:{tag}-arm64"


@pytest.mark.parametrize("builder", BUILDERS)
def test_init_pushes_to_docker_hub_with_the_builder_found(world: World, builder: str) -> None:
    """Real: stacks, EKS, Secrets Manager in moto; kubectl kustomize. Stand-in: the one builder on
    PATH, kubectl. With -u/-n no ECR call is made; -t and -P go to the build.
    """
    world.create_stacks()
    world.create_cluster()
    image = "docker.io/alice/message-app:v1"
    run = world.run(
        "init.sh", "-p", PROFILE, "-u", "alice", "-n", "message-app", "-t", "v1",
        "-P", "linux/arm64", builders=(builder,),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not [op for op in run.ops() if op[0] == "ecr"]
    assert_profile_and_region(run)
    build = "bud" if builder == "buildah" else "build"
    push = ["push", image, f"docker://{image}"] if builder == "buildah" else ["push", image]
    assert [c["argv"] for c in run.tool(builder)] == [
        [build, "--platform", "linux/arm64", "-t", image, str(world.root)],
        push,
    ]
    (container,) = rendered(world.root)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image
    assert f"builder {builder}" in run.stdout


@pytest.mark.parametrize("source", ["stack", "option"])
def test_init_with_a_certificate_writes_the_https_overlay(world: World, source: str) -> None:
    """Real: stacks (the certificate as the main stack's output, or -c), EKS, Secrets Manager in
    moto; kubectl kustomize renders the overlay with k8s/components/https. Stand-in: docker."""
    world.create_stacks(certificate=CERTIFICATE if source == "stack" else "")
    world.create_cluster()
    args = ("-c", CERTIFICATE) if source == "option" else ()
    run = world.run("init.sh", "-p", PROFILE, *args)
    assert run.returncode == 0, run.stderr
    assert "WARNING" not in run.stderr
    assert "open https://EXTERNAL-IP/" in run.stdout
    kinds = rendered(world.root)
    service = kinds["Service"]
    # TLS on 443 only: port 80 is closed (an NLB cannot redirect), the pods still get plain 8080.
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "http", "protocol": "TCP"}
    ]
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"] == CERTIFICATE
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"] == "https"
    assert kinds["ConfigMap"]["data"]["SESSION_COOKIE_SECURE"] == "true"
    assert kinds["ConfigMap"]["data"]["REDIS_HOST"] == CACHE_HOST


def test_init_refuses_a_certificate_of_another_region(world: World) -> None:
    """Real: the stack read from moto; nothing is built or written for a certificate the NLB
    could not use."""
    world.create_stacks()
    world.create_cluster()
    other = CERTIFICATE.replace(REGION, "us-east-1")
    run = world.run("init.sh", "-p", PROFILE, "-c", other)
    assert run.returncode == 1
    assert f"certificate {other} is not an ACM certificate ARN in {REGION}" in run.stderr
    assert run.tool("docker") == []
    assert not (world.root / ".deploy").exists()


def test_init_without_a_deployed_stack_says_to_run_deploy(world: World) -> None:
    """Real: describe-stacks in moto answers "does not exist"; nothing is built or written."""
    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 1
    assert f"stack {STACK} does not exist in {REGION}: run ./deploy.sh -p {PROFILE}" in run.stderr
    assert run.tool("docker") == []
    assert not (world.root / ".deploy").exists()
    assert_profile_and_region(run)


def _init_reading_secrets(world: World) -> tuple[Run, list[str | None]]:
    """init.sh on freshly made stacks: its run, and the secrets it read, in order."""
    world.create_stacks()
    world.create_cluster()
    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 0, run.stderr
    calls = run.aws_calls("secretsmanager", "get-secret-value")
    return run, [option(c["argv"], "--secret-id") for c in calls]


HOSTS = {
    "replication-group": (CACHE_HOST, "false"),
    "cluster": (CLUSTER_CACHE_HOST, "true"),
    "serverless": (SERVERLESS_CACHE_HOST, "true"),
}


@pytest.mark.parametrize(
    ("mode", "username", "credential"),
    [
        ("replication-group", "", "tok-first-0123456789"),
        ("cluster", "", "tok-first-0123456789"),
        ("serverless", "message-app", SERVERLESS_PW),
    ],
)
def test_init_writes_the_cache_settings_and_secret_of_each_cache_mode(
    world: World, mode: str, username: str, credential: str
) -> None:
    """Real: the stack's outputs as each cache mode gives them with CacheAuth=token, the secret
    in moto's Secrets Manager (the AUTH token under 'token', or Serverless's {"username",
    "password"}); kubectl kustomize renders the ConfigMap and the Secret. Stand-in: docker."""
    host, cluster = HOSTS[mode]
    world.use_cache_mode(mode, "token")
    run, reads = _init_reading_secrets(world)
    assert reads == [world.secret_arn, world.secret_key_arn]
    kinds = rendered(world.root)
    config = kinds["ConfigMap"]["data"]
    assert {k: config[k] for k in ("REDIS_HOST", "REDIS_PORT", "REDIS_TLS")} == {
        "REDIS_HOST": host,
        "REDIS_PORT": "6379",
        "REDIS_TLS": "true",
    }
    assert (config["REDIS_CLUSTER"], config["REDIS_USERNAME"]) == (cluster, username)
    assert config["REDIS_AUTH"] == "token"
    secret = {k: base64.b64decode(v).decode() for k, v in kinds["Secret"]["data"].items()}
    assert set(secret) == {"SECRET_KEY", "SECRET_KEY_FALLBACKS", "REDIS_AUTH_TOKEN"}
    assert secret["REDIS_AUTH_TOKEN"] == credential
    assert credential not in run.stdout + run.stderr
    expected = "password of cache user message-app" if mode == "serverless" else "AUTH token"
    assert expected in run.stdout
    # The app takes what the pods get (the ConfigMap and the Secret as their environment) and
    # reads from it the client this mode needs.
    settings = Settings.from_env({**config, **secret})
    assert (settings.redis_host, settings.redis_port, settings.redis_tls) == (host, 6379, True)
    assert settings.redis_cluster == {"true": "on", "false": "off"}[cluster]
    assert settings.redis_username == (username or None)
    assert (settings.redis_auth, settings.redis_auth_token) == ("token", credential)


@pytest.mark.parametrize("mode", list(HOSTS))
def test_init_with_iam_writes_no_cache_secret_anywhere(world: World, mode: str) -> None:
    """Real: the stack's outputs with CacheAuth=iam (no cache secret exists), SECRET_KEY from
    moto's Secrets Manager; kubectl kustomize renders the ConfigMap and the Secret. Stand-in:
    docker. The pods get the IAM settings; no cache credential is read, written to .deploy/ or
    put into the Kubernetes Secret."""
    host, cluster = HOSTS[mode]
    world.use_cache_mode(mode, "iam")
    run, reads = _init_reading_secrets(world)
    assert reads == [world.secret_key_arn]  # SECRET_KEY only, never a cache secret
    assert f"cache authentication: IAM as user {IAM_USER}" in run.stdout
    assert env_file(world.root / ".deploy" / "secrets.env") == {
        "SECRET_KEY": FIRST_SECRET_KEY,
        "SECRET_KEY_FALLBACKS": "",
    }
    kinds = rendered(world.root)
    config = kinds["ConfigMap"]["data"]
    assert {k: config[k] for k in ("REDIS_HOST", "REDIS_TLS", "REDIS_CLUSTER")} == {
        "REDIS_HOST": host,
        "REDIS_TLS": "true",
        "REDIS_CLUSTER": cluster,
    }
    assert {k: config[k] for k in config if k.startswith(("REDIS_AUTH", "REDIS_IAM", "AWS_"))} == {
        "REDIS_AUTH": "iam",
        "REDIS_IAM_CACHE_NAME": CACHE_NAME,
        "REDIS_IAM_SERVERLESS": "true" if mode == "serverless" else "false",
        "AWS_REGION": REGION,
    }
    assert config["REDIS_USERNAME"] == IAM_USER
    secret = {k: base64.b64decode(v).decode() for k, v in kinds["Secret"]["data"].items()}
    assert set(secret) == {"SECRET_KEY", "SECRET_KEY_FALLBACKS"}
    # The pods' service account in the namespace the Pod Identity association names.
    assert kinds["ServiceAccount"]["metadata"] == {
        **kinds["ServiceAccount"]["metadata"],
        "name": "message-app",
        "namespace": APP_NAMESPACE,
    }
    settings = Settings.from_env({**config, **secret})
    assert (settings.redis_auth, settings.redis_username) == ("iam", IAM_USER)
    assert (settings.redis_iam_cache_name, settings.aws_region) == (CACHE_NAME, REGION)
    assert settings.redis_iam_serverless is (mode == "serverless")
    assert settings.redis_auth_token is None


def test_init_sends_a_stack_from_before_secret_key_to_deploy(world: World) -> None:
    """Real: a replication-group stack from before CacheMode (only CachePrimaryEndpoint and
    AuthTokenSecretArn, no SecretKeyArn) in moto: init.sh stops, says to run deploy.sh, and
    builds and writes nothing."""
    world.use_cache_mode("legacy")
    world.create_stacks()
    world.create_cluster()
    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 1
    assert (
        f"stack {STACK} keeps no SECRET_KEY in Secrets Manager yet (no output SecretKeyArn): "
        f"run ./deploy.sh -p {PROFILE} -r {REGION} -s {STACK} to update it first"
    ) in run.stderr
    assert run.tool("docker") == []
    assert not (world.root / ".deploy").exists()


def test_init_names_the_missing_key_of_the_cache_secret(world: World) -> None:
    """Real: a Serverless stack whose secret lacks the 'password' key (moto's Secrets Manager):
    init.sh stops, names the key, and writes nothing."""
    world.use_cache_mode("serverless")
    world.client("secretsmanager").put_secret_value(
        SecretId=world.secret_arn, SecretString=json.dumps({"token": "tok-wrong-key-0123"})
    )
    world.create_stacks()
    world.create_cluster()
    run = world.run("init.sh", "-p", PROFILE)
    assert run.returncode == 1
    assert f"secret {world.secret_arn} has no JSON key 'password'" in run.stderr
    assert not (world.root / ".deploy" / "kustomization.yaml").exists()
