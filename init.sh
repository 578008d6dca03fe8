#!/usr/bin/env bash
# After deploy.sh: points kubectl at the new EKS cluster, builds and pushes the app image, and writes
# the cluster configuration as a git-ignored kustomize overlay in .deploy/ (ConfigMap values from the
# stack outputs for the stack's cache mode and authentication, a Secret with SECRET_KEY from Secrets
# Manager - and with token authentication the cache's AUTH token or RBAC password - the pushed image,
# HTTPS when a certificate is known). `kubectl apply -k .deploy/` is then the one command that deploys the app.
# With -R (--rotate-secret-key) it first takes SECRET_KEY's rotation one step further. In the
# cluster it changes one thing only: the replica count in a Deployment's last-applied record.
# Works with bash 3.2 (macOS) and GNU/BSD tools; edits no tracked file.
set -euo pipefail

PROG=${0##*/}
ROOT=$(cd "$(dirname "$0")" && pwd)
DEPLOY_DIR="$ROOT/.deploy"
# shellcheck source-path=SCRIPTDIR source=scripts/common.sh
. "$ROOT/scripts/common.sh"

usage() {
  cat <<EOF
Usage: $PROG -p PROFILE [-r REGION] [-s STACK_NAME] [-c CERTIFICATE_ARN] [-e EDGE] [-u DOCKERHUB_USER -n REPO] [-t TAG] [-P PLATFORM] [-R] [-h]

Reads the outputs of stack STACK_NAME, runs aws eks update-kubeconfig for its cluster, builds the image
with docker (else podman, else buildah) and pushes it, then writes .deploy/ (git-ignored):
kustomization.yaml (base ../k8s in the stack's AppNamespace, ConfigMap values from the stack, the
image, and with a certificate HTTPS on port 443 with Secure cookies) and secrets.env (mode 600:
SECRET_KEY and SECRET_KEY_FALLBACKS from the stack's Secrets Manager secret, the same for every
operator and every run; with token authentication also REDIS_AUTH_TOKEN). Secrets are never printed.
The cache settings follow the stack's CacheMode (deploy.sh -m) and CacheAuth (deploy.sh -A):
REDIS_HOST/REDIS_PORT name the primary, configuration or Serverless endpoint, REDIS_CLUSTER is true
for cluster and serverless. With iam, REDIS_AUTH=iam and REDIS_USERNAME, REDIS_IAM_CACHE_NAME,
REDIS_IAM_SERVERLESS, AWS_REGION: the pods sign in with their Pod Identity role and no cache secret
is read or written. With token, REDIS_AUTH_TOKEN holds the AUTH token or the Serverless RBAC user's
password (REDIS_USERNAME). After a CacheMode or CacheAuth change run it again, then kubectl apply -k .deploy/.
One change in the cluster: a message-app Deployment applied from manifests that set a replica count
loses that count from kubectl's last-applied record (the HPA owns it), so the next apply keeps its pods.

  -p PROFILE         AWS CLI profile (required); every aws call uses it
  -r REGION          AWS region (default: the profile's region, aws configure get region)
  -s STACK_NAME      main stack name (default: flask-eks-sessions)
  -c CERT_ARN        ACM certificate for HTTPS (default: the one deploy.sh -c gave the stack, if any;
                     without one the app is served over plain HTTP and a warning says so)
  -e EDGE            nlb (the Service's Network Load Balancer) or alb (an Ingress with the
                     Application Load Balancer, HTTP redirected to HTTPS, AWS WAF, access logs);
                     default: the stack's LoadBalancerType (deploy.sh -e), which alb needs
  -u DOCKERHUB_USER  push to Docker Hub as docker.io/USER/REPO:TAG instead of the stack's ECR
  -n REPO            Docker Hub repository name (with -u; log in first: docker login)
  -t TAG             image tag (default: the short git commit, plus a UTC timestamp when the work
                     tree has changes, or a timestamp outside git; with -P, the platform after it, e.g.
                     -arm64; never "latest": ECR tags are immutable)
  -P PLATFORM        image platform (default: linux/amd64, what EKS Auto Mode's built-in node pools run)
  -R, --rotate-secret-key
                     take SECRET_KEY's rotation one step, then write the overlay as usual:
                     1 a new key is staged (every pod accepts it, none signs with it yet);
                     2 the new key signs, the old one is still accepted;
                     3 (an hour or more after 2) the old key is dropped.
                     Apply the overlay after each step; steps 2 and 3 first check that every
                     pod runs the last one (docs/deploy-aws.md#rotating-secret_key)
  -h                 show this help

Changed from the original sample: -p is really used; -r is now the REGION (the Docker Hub repository
moved to -n); ECR is the default registry; nothing in k8s/ is edited in place any more, the settings go to .deploy/.
Next: kubectl apply -k .deploy/   (the only way to deploy: k8s/ alone is refused on purpose)
EOF
}

PROFILE=""
REGION=""
STACK="flask-eks-sessions"
HUB_USER=""
HUB_REPO=""
TAG=""
PLATFORM="linux/amd64"
CERTIFICATE=""
ROTATE=0
EDGE=""

if [ "${1:-}" = "--help" ]; then
  usage
  exit 0
fi
# The one long option, as its short form for getopts.
ARGS=()
for arg in "$@"; do
  case $arg in
    --rotate-secret-key) ARGS+=(-R) ;;
    *) ARGS+=("$arg") ;;
  esac
done
set -- ${ARGS[@]+"${ARGS[@]}"}
while getopts ':p:r:s:c:e:u:n:t:P:Rh' opt; do
  case $opt in
    c) CERTIFICATE=$OPTARG ;;
    e)
      case $OPTARG in
        nlb | alb) EDGE=$OPTARG ;;
        *) usage_error "-e needs nlb or alb, got '$OPTARG'" ;;
      esac
      ;;
    u) HUB_USER=$OPTARG ;;
    n) HUB_REPO=$OPTARG ;;
    t) TAG=$OPTARG ;;
    P) PLATFORM=$OPTARG ;;
    R) ROTATE=1 ;;
    *) common_option "$opt" ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage_error "unexpected argument: $1"
[ -n "$PROFILE" ] || usage_error "missing -p PROFILE (the AWS CLI profile the stack was deployed with)"
if [ -n "$HUB_USER" ] && [ -z "$HUB_REPO" ]; then
  usage_error "-u needs -n REPO (the Docker Hub repository; -r is the region now)"
fi
if [ -z "$HUB_USER" ] && [ -n "$HUB_REPO" ]; then
  usage_error "-n REPO needs -u DOCKERHUB_USER"
fi

# Check every prerequisite before touching anything, and name all that are missing at once.
missing=0
check_tools aws kubectl jq || missing=1
BUILDER=""
for b in docker podman buildah; do
  if command -v "$b" >/dev/null 2>&1; then
    BUILDER=$b
    break
  fi
done
if [ -z "$BUILDER" ]; then
  printf '%s: no container builder: none of docker, podman, buildah is installed; install one (https://docs.docker.com/get-docker/, or apt-get install podman / brew install podman)\n' "$PROG" >&2
  missing=1
fi
[ "$missing" -eq 0 ] || exit 1
[ -f "$ROOT/k8s/kustomization.yaml" ] || die "$ROOT/k8s/kustomization.yaml is missing (the overlay's base)"

resolve_region
make_work_dir

say "profile $PROFILE, region $REGION, stack $STACK, builder $BUILDER"
STACK_JSON=$(stack_json "$STACK")
[ -n "$STACK_JSON" ] ||
  die "stack $STACK does not exist in $REGION: run ./deploy.sh -p $PROFILE -r $REGION -s $STACK first"
STATUS=$(jq -r '.Stacks[0].StackStatus' <<<"$STACK_JSON")
case $STATUS in
  CREATE_COMPLETE | UPDATE_COMPLETE | UPDATE_ROLLBACK_COMPLETE) ;;
  *) die "stack $STACK is $STATUS, not ready: run ./deploy.sh -p $PROFILE -r $REGION -s $STACK and wait for it to succeed" ;;
esac

output() {
  local v
  v=$(stack_output "$STACK_JSON" "$1")
  [ -n "$v" ] || die "stack $STACK has no output $1 (was it deployed from this repository's cfn/?)"
  printf '%s\n' "$v"
}
# A stack deployed before SECRET_KEY moved to Secrets Manager (and before CacheMode and CacheAuth)
# is brought up to date by deploy.sh; its outputs are not read piecemeal.
[ -n "$(stack_output "$STACK_JSON" SecretKeyArn)" ] ||
  die "stack $STACK keeps no SECRET_KEY in Secrets Manager yet (no output SecretKeyArn): run ./deploy.sh -p $PROFILE -r $REGION -s $STACK to update it first"
CLUSTER=$(output ClusterName)
CACHE_PORT=$(output CachePort)
CACHE_TLS=$(output CacheTls)
ECR_URI=$(output EcrRepositoryUri)
CACHE_MODE=$(output CacheMode)
CACHE_HOST=$(output CacheHost)
CACHE_CLUSTER=$(output CacheCluster)
CACHE_AUTH=$(output CacheAuth)
SECRET_KEY_ARN=$(output SecretKeyArn)
# The namespace the Pod Identity association names.
APP_NAMESPACE=$(output AppNamespace)
# The IAM user, or the Serverless RBAC user; the AUTH-token modes sign in as the default user.
CACHE_USERNAME=$(stack_output "$STACK_JSON" CacheUsername)
case $CACHE_MODE in
  replication-group | cluster | serverless) ;;
  *) die "stack $STACK has cache mode '$CACHE_MODE', which this init.sh does not know (replication-group, cluster, serverless)" ;;
esac
case $CACHE_AUTH in
  iam)
    CACHE_NAME=$(output CacheName)
    CACHE_USERNAME=$(output CacheUsername)
    ;;
  token)
    SECRET_ARN=$(output CacheSecretArn)
    SECRET_JSON_KEY=$(output CacheSecretKey)
    ;;
  *) die "stack $STACK has cache authentication '$CACHE_AUTH', which this init.sh does not know (iam, token)" ;;
esac
# Optional output: only a stack deployed with a certificate has it.
[ -n "$CERTIFICATE" ] || CERTIFICATE=$(stack_output "$STACK_JSON" CertificateArn)
case $CERTIFICATE in
  "") ;;
  arn:aws*:acm:"$REGION":[0-9]*:certificate/*) ;;
  *) die "certificate $CERTIFICATE is not an ACM certificate ARN in $REGION (the load balancer's region)" ;;
esac

# The edge: the stack's load balancer type unless -e names one; the ALB needs what deploy.sh -e
# alb made for it (the WAF web ACL, the access-log bucket).
STACK_EDGE=$(stack_output "$STACK_JSON" LoadBalancerType)
EDGE=${EDGE:-${STACK_EDGE:-nlb}}
WEB_ACL=""
ACCESS_LOGS=""
if [ "$EDGE" = alb ]; then
  WEB_ACL=$(stack_output "$STACK_JSON" WebAclArn)
  ACCESS_LOGS=$(stack_output "$STACK_JSON" AccessLogBucket)
  if [ -z "$WEB_ACL" ] || [ -z "$ACCESS_LOGS" ]; then
    die "stack $STACK has no WAF web ACL or access-log bucket for an ALB: run ./deploy.sh -p $PROFILE -r $REGION -s $STACK -e alb first"
  fi
  ALB_SUBNETS=$(output PublicSubnetCidrs)
fi
# The nodes' subnets: the CloudWatch agent scrapes the pods' metrics from the host network.
NODE_SUBNETS=$(stack_output "$STACK_JSON" PrivateSubnetCidrs)
METRICS_PORT=$(sed -n 's/^METRICS_PORT=//p' "$ROOT/k8s/config.env")

say "adding cluster $CLUSTER to your kubeconfig"
awsp eks update-kubeconfig --name "$CLUSTER"

# The overlay's path as the next commands name it.
OVERLAY="$DEPLOY_DIR/"
[ "$PWD" != "$ROOT" ] || OVERLAY=".deploy/"
# The live Deployment (kubectl get -o json) in DEPLOYMENT, empty when there is none yet; on a
# refused read, 1 with kubectl's message in $WORK/err.
read_deployment() {
  DEPLOYMENT=$(kubectl -n "$APP_NAMESPACE" get deployment message-app --ignore-not-found -o json 2>"$WORK/err")
}
# The pod template names the SECRET_KEY versions its pods sign with and accept (Secrets Manager
# version ids, never keys), so the next -R step can tell that every pod has the last one.
SIGNING_ANNOTATION=flask-eks-sessions/secret-key-version
ACCEPTED_ANNOTATION=flask-eks-sessions/secret-key-fallback-versions

# SECRET_KEY lives in Secrets Manager (cfn/app.yaml), so every operator and every run gets the same
# one. A rotation moves Secrets Manager's staging labels: AWSPENDING (a new key, accepted but not yet
# signing), AWSCURRENT (the key that signs), AWSPREVIOUS (the key it replaced, still accepted).
# Stage -> version id, from list-secret-version-ids JSON in KEY_VERSIONS.
key_version() {
  jq -r --arg s "$1" '[.Versions[] | select((.VersionStages // []) | index($s))][0].VersionId // empty' <<<"$KEY_VERSIONS"
}
read_key_versions() {
  KEY_VERSIONS=$(awsp secretsmanager list-secret-version-ids --secret-id "$SECRET_KEY_ARN" --output json) ||
    die "could not list the versions of SECRET_KEY's secret $SECRET_KEY_ARN"
}
# The value under a staging label, named explicitly (never the default version).
key_value() {
  awsp secretsmanager get-secret-value --secret-id "$SECRET_KEY_ARN" --version-stage "$1" \
    --query SecretString --output text || die "could not read SECRET_KEY ($1) from $SECRET_KEY_ARN"
}
# -R's next step changes what pods sign with or accept, which is safe only once every pod runs
# the last step's overlay: step 2 needs every pod to accept the staged key (or a pod still on the
# old overlay refuses forms the new pods sign), step 3 needs every pod to sign with the new key (or
# forms a pod signs with the old one fail once it is dropped). $1: what the pods must do, in words;
# $2 and $3: accepts or signs, and the key's version id.
require_pods() {
  local rollout annotated stale pods selector
  # Whether a pod template's annotations name the version ($v) as signing, or as either.
  # shellcheck disable=SC2016 # jq's variables, expanded by jq
  local carries='def carries($n):
    if $mode == "accepts" then [$n[$s]] + (($n[$a] // "") | split(",")) | index($v) != null
    else $n[$s] == $v end;'
  read_deployment ||
    die "could not read deployment $APP_NAMESPACE/message-app ($(tr '\n' ' ' <"$WORK/err")): the next rotation step needs to see that every pod $1 (nothing was changed)"
  if [ -z "$DEPLOYMENT" ]; then
    say "no deployment $APP_NAMESPACE/message-app yet: no pod to wait for"
    return 0
  fi
  # What kubectl rollout status waits for, from the same fields.
  rollout=$(jq -r --arg ns "$APP_NAMESPACE" '
    (.spec.replicas // 1) as $want | .status as $s
    | if .spec.paused then "it is paused: kubectl -n \($ns) rollout resume deployment/message-app"
      elif ($s.observedGeneration // 0) < .metadata.generation then "a change, an apply or the HPA scaling it, is not picked up yet"
      elif any($s.conditions[]?; .type == "Progressing" and .reason == "ProgressDeadlineExceeded") then "its rollout failed, past its progress deadline: see kubectl -n \($ns) describe deployment message-app"
      elif ($s.updatedReplicas // 0) < $want then "pods updated: \($s.updatedReplicas // 0) of \($want)"
      elif ($s.replicas // 0) > ($s.updatedReplicas // 0) then "old pods still running: \(($s.replicas // 0) - ($s.updatedReplicas // 0))"
      elif ($s.availableReplicas // 0) < ($s.updatedReplicas // 0) then "updated pods available: \($s.availableReplicas // 0) of \($s.updatedReplicas // 0)"
      else empty end' <<<"$DEPLOYMENT") || die "deployment $APP_NAMESPACE/message-app as kubectl gave it is not JSON (nothing was changed)"
  [ -z "$rollout" ] ||
    die "deployment $APP_NAMESPACE/message-app has not finished rolling out ($rollout); once kubectl -n $APP_NAMESPACE rollout status deployment/message-app says it has, run this same command again (nothing was changed)"
  annotated=$(jq -r --arg s "$SIGNING_ANNOTATION" '.spec.template.metadata.annotations // {} | has($s)' <<<"$DEPLOYMENT")
  [ "$annotated" = true ] ||
    die "deployment $APP_NAMESPACE/message-app was applied from an overlay that does not name its SECRET_KEY versions (written before init.sh did), so this step cannot tell what its pods accept: run this same command without -R, kubectl apply -k $OVERLAY, wait for the rollout, then run this same command again (nothing was changed)"
  jq -e --arg s "$SIGNING_ANNOTATION" --arg a "$ACCEPTED_ANNOTATION" --arg mode "$2" --arg v "$3" \
    "$carries"' carries(.spec.template.metadata.annotations // {})' <<<"$DEPLOYMENT" >/dev/null ||
    die "not every pod of deployment $APP_NAMESPACE/message-app $1 yet: run this same command without -R (it writes the overlay for the step taken), kubectl apply -k $OVERLAY, wait for the rollout, then run this same command again (nothing was changed)"
  # The Deployment's status counts no terminating pod, yet such a pod serves until the load
  # balancer lets it go (its preStop pause): every pod, terminating or not, must be on it. The
  # pods are the Deployment's by its own selector.
  selector=$(jq -r '.spec.selector.matchLabels | to_entries | map("\(.key)=\(.value)") | join(",")' <<<"$DEPLOYMENT")
  pods=$(kubectl -n "$APP_NAMESPACE" get pods -l "$selector" -o json 2>"$WORK/err") ||
    die "could not list the pods of deployment $APP_NAMESPACE/message-app ($(tr '\n' ' ' <"$WORK/err")): the next rotation step needs to see that every pod $1 (nothing was changed)"
  stale=$(jq --arg s "$SIGNING_ANNOTATION" --arg a "$ACCEPTED_ANNOTATION" --arg mode "$2" --arg v "$3" \
    "$carries"' [.items[] | select(carries(.metadata.annotations // {}) | not)] | length' <<<"$pods") ||
    die "the pods of deployment $APP_NAMESPACE/message-app as kubectl gave them are not JSON (nothing was changed)"
  [ "$stale" -eq 0 ] ||
    die "pods of an earlier overlay of deployment $APP_NAMESPACE/message-app are still running or terminating: $stale; once they are gone (kubectl -n $APP_NAMESPACE get pods), run this same command again (nothing was changed)"
}

# Forms stay valid for an hour (flask-wtf's token lifetime): the old key may go only after that.
PROMOTED_TAG=flask-eks-sessions:secret-key-promoted-at
FORM_LIFETIME=3600
# Whether -R may take its next step now; stops with what to do if not. Run before the image is
# built, and again just before the step (another operator may have taken one meanwhile).
check_rotation_step() {
  local pending previous promoted now
  pending=$(key_version AWSPENDING)
  previous=$(key_version AWSPREVIOUS)
  if [ -n "$pending" ]; then
    require_pods "accepts the staged key (step 1's overlay)" accepts "$pending"
  elif [ -n "$previous" ]; then
    require_pods "signs with the new key (step 2's overlay)" signs "$(key_version AWSCURRENT)"
    promoted=$(awsp secretsmanager describe-secret --secret-id "$SECRET_KEY_ARN" --output json |
      jq -r --arg k "$PROMOTED_TAG" '.Tags // [] | .[] | select(.Key == $k) | .Value')
    now=$(date -u +%s)
    case $promoted in
      "" | *[!0-9]*)
        # No record of the promotion: the hour is counted from now, never skipped.
        awsp secretsmanager tag-resource --secret-id "$SECRET_KEY_ARN" --tags "Key=$PROMOTED_TAG,Value=$now"
        die "no record of when the new SECRET_KEY was promoted (tag $PROMOTED_TAG); forms rendered before that stay valid for an hour, so the old key stays: the hour counts from now, run $PROG -R again then (nothing else was changed)"
        ;;
      *)
        [ $((now - promoted)) -ge "$FORM_LIFETIME" ] ||
          die "the new SECRET_KEY was promoted $(((now - promoted) / 60)) minutes ago (step 2); forms rendered before that stay valid for an hour, so the old key must stay $(((FORM_LIFETIME - now + promoted + 59) / 60)) more minutes, counted from the promotion (if step 2's overlay was applied later, wait an hour from that rollout): run $PROG -R again then (nothing was changed)"
        ;;
    esac
  fi
}
# Takes the next step (the labels as read last, checked again).
rotate_secret_key() {
  local current pending previous
  check_rotation_step
  current=$(key_version AWSCURRENT)
  pending=$(key_version AWSPENDING)
  previous=$(key_version AWSPREVIOUS)
  if [ -n "$pending" ]; then
    # The time first: without it step 3 could not tell how long the old key has been replaced.
    awsp secretsmanager tag-resource --secret-id "$SECRET_KEY_ARN" \
      --tags "Key=$PROMOTED_TAG,Value=$(date -u +%s)"
    # (An earlier run stopped between the two moves: AWSCURRENT is on the new key already.)
    [ "$pending" = "$current" ] ||
      awsp secretsmanager update-secret-version-stage --secret-id "$SECRET_KEY_ARN" --version-stage AWSCURRENT \
        --move-to-version-id "$pending" --remove-from-version-id "$current" --output json >/dev/null
    awsp secretsmanager update-secret-version-stage --secret-id "$SECRET_KEY_ARN" --version-stage AWSPENDING \
      --remove-from-version-id "$pending" --output json >/dev/null
    ROTATION="step 2 of 3: the new SECRET_KEY now signs, the old one is still accepted. Apply the overlay; an hour or more after the rollout, run $PROG -R again to drop the old key"
  elif [ -n "$previous" ]; then
    awsp secretsmanager update-secret-version-stage --secret-id "$SECRET_KEY_ARN" --version-stage AWSPREVIOUS \
      --remove-from-version-id "$previous" --output json >/dev/null
    ROTATION="step 3 of 3: the old SECRET_KEY is dropped. Apply the overlay; the rotation is complete"
  else
    # Generated by Secrets Manager, as the first key was; through a private file, never an argument.
    awsp secretsmanager get-random-password --password-length 64 --exclude-punctuation \
      --query RandomPassword --output text | tr -d '\n' >"$WORK/new-secret-key"
    awsp secretsmanager put-secret-value --secret-id "$SECRET_KEY_ARN" \
      --secret-string "file://$WORK/new-secret-key" --version-stages AWSPENDING --output json >/dev/null
    rm -f "$WORK/new-secret-key"
    ROTATION="step 1 of 3: a new SECRET_KEY is staged; every pod will accept it, none signs with it yet. Apply the overlay, wait for the rollout, then run $PROG -R again"
  fi
}

if [ "$ROTATE" -eq 1 ]; then
  read_key_versions
  check_rotation_step
fi

if [ -z "$TAG" ]; then
  TAG=$(date -u +%Y%m%d%H%M%S)
  if command -v git >/dev/null 2>&1 && sha=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null); then
    # A clean tree is fully named by its commit; local changes get a unique tag instead.
    if [ -z "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then
      TAG=$sha
    else
      TAG="$sha-dirty-$TAG"
    fi
  fi
  # Another platform's build of the same commit gets its own name: a tag found in ECR is taken
  # as this very build, and an amd64 image on arm64 nodes would not start (exec format error).
  [ "$PLATFORM" = linux/amd64 ] || TAG="$TAG-$(printf '%s' "$PLATFORM" | tr -c 'A-Za-z0-9_.\n-' '-' | sed 's/^linux-//')"
fi

build_image() {
  say "building $1 for $PLATFORM with $BUILDER"
  case $BUILDER in
    buildah) buildah bud --platform "$PLATFORM" -t "$1" "$ROOT" ;;
    *) "$BUILDER" build --platform "$PLATFORM" -t "$1" "$ROOT" ;;
  esac
  say "pushing $1"
  case $BUILDER in
    buildah) buildah push "$1" "docker://$1" ;;
    *) "$BUILDER" push "$1" ;;
  esac
}

if [ -n "$HUB_USER" ]; then
  IMAGE_REPO="docker.io/$HUB_USER/$HUB_REPO"
  say "pushing to Docker Hub; if the push is refused, log in first: $BUILDER login docker.io"
  build_image "$IMAGE_REPO:$TAG"
else
  IMAGE_REPO=$ECR_URI
  REGISTRY=${ECR_URI%%/*}
  REPO_NAME=${ECR_URI#*/}
  # ECR tags are immutable: a tag that is already there names this very build, so keep it.
  if awsp ecr describe-images --repository-name "$REPO_NAME" --image-ids "imageTag=$TAG" --output json >/dev/null 2>"$WORK/err"; then
    say "image $IMAGE_REPO:$TAG is already in ECR (tags are immutable): not building it again"
  elif grep -q 'ImageNotFoundException' "$WORK/err"; then
    say "logging $BUILDER in to $REGISTRY"
    awsp ecr get-login-password | "$BUILDER" login --username AWS --password-stdin "$REGISTRY"
    build_image "$IMAGE_REPO:$TAG"
  else
    cat "$WORK/err" >&2
    die "could not look up $REPO_NAME:$TAG in ECR"
  fi
fi

TOKEN=""
if [ "$CACHE_AUTH" = iam ]; then
  say "cache authentication: IAM as user $CACHE_USERNAME (the pods' Pod Identity role; no cache secret)"
else
  if [ "$SECRET_JSON_KEY" = token ]; then
    say "reading the cache AUTH token from Secrets Manager (cache mode $CACHE_MODE)"
  else
    say "reading the password of cache user $CACHE_USERNAME from Secrets Manager (cache mode $CACHE_MODE)"
  fi
  TOKEN=$(awsp secretsmanager get-secret-value --secret-id "$SECRET_ARN" --query SecretString --output text |
    jq -r --arg k "$SECRET_JSON_KEY" '.[$k] // empty') || die "could not read the cache credential from secret $SECRET_ARN"
  [ -n "$TOKEN" ] || die "secret $SECRET_ARN has no JSON key '$SECRET_JSON_KEY'"
fi

# Secrets: owner-only from the start (umask), then replaced atomically.
umask 077
read_key_versions
ROTATION=""
if [ "$ROTATE" -eq 1 ]; then
  say "rotating SECRET_KEY one step (secret $SECRET_KEY_ARN)"
  rotate_secret_key
  # Taken: should this run stop before .deploy/ is written, a plain rerun of -R would take the
  # next step before any pod got this one.
  FAILURE_NOTE="SECRET_KEY rotation ${ROTATION%%:*} was taken in Secrets Manager, but .deploy/ was not written: run this same command again without -R to write it, apply it, and only then go on with -R"
  read_key_versions
fi
say "reading SECRET_KEY from Secrets Manager"
SECRET_KEY=$(key_value AWSCURRENT)
[ -n "$SECRET_KEY" ] || die "secret $SECRET_KEY_ARN holds no SECRET_KEY"
# Accepted besides it: a staged key (step 1) and the replaced one (until step 3).
FALLBACKS=""
FALLBACK_VERSIONS=""
for stage in AWSPENDING AWSPREVIOUS; do
  version=$(key_version "$stage")
  [ -n "$version" ] || continue
  value=$(key_value "$stage")
  FALLBACKS=${FALLBACKS:+$FALLBACKS,}$value
  FALLBACK_VERSIONS=${FALLBACK_VERSIONS:+$FALLBACK_VERSIONS,}$version
done
mkdir -p "$DEPLOY_DIR"
chmod 700 "$DEPLOY_DIR"
# Belt and braces next to the repository's .gitignore: nothing in here is ever committed.
printf '*\n' >"$DEPLOY_DIR/.gitignore"
tmp=$(mktemp "$DEPLOY_DIR/secrets.env.XXXXXX")
printf 'SECRET_KEY=%s\nSECRET_KEY_FALLBACKS=%s\n' "$SECRET_KEY" "$FALLBACKS" >"$tmp"
# No cache secret at all with IAM: nothing to leak from this file or from the Kubernetes Secret.
[ "$CACHE_AUTH" = iam ] || printf 'REDIS_AUTH_TOKEN=%s\n' "$TOKEN" >>"$tmp"
chmod 600 "$tmp"
mv -f "$tmp" "$DEPLOY_DIR/secrets.env"

# What the load balancer needs, as kustomize components and JSON patches of the base.
COMPONENTS="  # Lifts the base's not-deployable guard and turns on NetworkPolicy enforcement.
  - ../k8s/components/deployable"
# Which keys the pods get, by version id (SIGNING_ANNOTATION and ACCEPTED_ANNOTATION; "/" is "~1"
# in a JSON patch's path): the next -R reads them back from the live Deployment.
PATCHES="
  - target:
      kind: Deployment
      name: message-app
    patch: |-
      - op: add
        path: /spec/template/metadata/annotations/flask-eks-sessions~1secret-key-version
        value: \"$(key_version AWSCURRENT)\"
      - op: add
        path: /spec/template/metadata/annotations/flask-eks-sessions~1secret-key-fallback-versions
        value: \"$FALLBACK_VERSIONS\""
EDGE_LITERALS=""
SCHEME=http
[ -z "$CERTIFICATE" ] || SCHEME=https
if [ "$EDGE" = alb ]; then
  COMPONENTS="$COMPONENTS
  # The Application Load Balancer (Auto Mode's, for the Ingress) instead of the NLB.
  - ../k8s/components/alb"
  [ -z "$CERTIFICATE" ] || COMPONENTS="$COMPONENTS
  - ../k8s/components/alb-https"
  # The app believes X-Forwarded-For from the ALB's subnets only (it appends the client).
  EDGE_LITERALS="
      - \"FORWARDED_ALLOW_IPS=127.0.0.1,$ALB_SUBNETS\""
  PATCHES="$PATCHES
  # AWS WAF: Auto Mode associates this web ACL with the ALB it makes for the Ingress.
  - target:
      kind: Ingress
      name: message-app
    patch: |-
      - op: add
        path: /metadata/annotations/alb.ingress.kubernetes.io~1wafv2-acl-arn
        value: \"$WEB_ACL\"
  # Access logs to the stack's encrypted bucket (a lifecycle expires them).
  - target:
      kind: IngressClassParams
      name: message-app-alb
    patch: |-
      - op: add
        path: /spec/loadBalancerAttributes/-
        value: {key: access_logs.s3.enabled, value: \"true\"}
      - op: add
        path: /spec/loadBalancerAttributes/-
        value: {key: access_logs.s3.bucket, value: \"$ACCESS_LOGS\"}
      - op: add
        path: /spec/loadBalancerAttributes/-
        value: {key: access_logs.s3.prefix, value: alb}"
  [ -z "$CERTIFICATE" ] || PATCHES="$PATCHES
      - op: add
        path: /spec/certificateARNs
        value: [\"$CERTIFICATE\"]"
elif [ -n "$CERTIFICATE" ]; then
  COMPONENTS="$COMPONENTS
  - ../k8s/components/https"
  # The NLB's TLS listener uses this certificate (components/https opens 443 and closes 80).
  PATCHES="$PATCHES
  - target:
      kind: Service
      name: message-app
    patch: |-
      - op: add
        path: /metadata/annotations/service.beta.kubernetes.io~1aws-load-balancer-ssl-cert
        value: \"$CERTIFICATE\""
else
  COMPONENTS="$COMPONENTS
  # - ../k8s/components/https   (HTTPS: run init.sh with -c CERTIFICATE_ARN)"
fi
if [ -n "$NODE_SUBNETS" ]; then
  # The add-on's CloudWatch agent runs on the host network: its scrapes come from the nodes'
  # addresses, which no namespace selector matches.
  PATCHES="$PATCHES
  - target:
      kind: NetworkPolicy
      name: message-app
    patch: |-
      - op: add
        path: /spec/ingress/-
        value:
          from: [$(printf '%s' "$NODE_SUBNETS" | sed 's/[^,][^,]*/{ipBlock: {cidr: &}}/g; s/,/, /g')]
          ports: [{port: $METRICS_PORT, protocol: TCP}]"
else
  printf '%s: WARNING: stack %s names no node subnets (deployed before PrivateSubnetCidrs): the CloudWatch agent cannot scrape the metrics port until ./deploy.sh runs again\n' "$PROG" "$STACK" >&2
fi

if [ "$CACHE_AUTH" = iam ]; then
  CACHE_SERVERLESS=false
  [ "$CACHE_MODE" != serverless ] || CACHE_SERVERLESS=true
  AUTH_LITERALS="      # IAM: the pods sign 15-minute tokens with their Pod Identity role; no password exists.
      - \"REDIS_AUTH=iam\"
      - \"REDIS_USERNAME=$CACHE_USERNAME\"
      - \"REDIS_IAM_CACHE_NAME=$CACHE_NAME\"
      - \"REDIS_IAM_SERVERLESS=$CACHE_SERVERLESS\"
      - \"AWS_REGION=$REGION\""
else
  AUTH_LITERALS="      # A password from the Secret (REDIS_AUTH_TOKEN), for the RBAC user if any (empty: none).
      - \"REDIS_AUTH=token\"
      - \"REDIS_USERNAME=$CACHE_USERNAME\""
fi
# Where the Pod Identity association expects the pods (every namespaced object of the app, its
# Secret included; the cluster-wide NetworkPolicy switch stays in kube-system, and the ALB's
# IngressClass and IngressClassParams, and the pipeline's read access to them, belong to no
# namespace).
NAMESPACE_PATCH="  - target:
      labelSelector: app.kubernetes.io/name=message-app,app.kubernetes.io/component notin (ingress-class,deployer-access)
    patch: |-
      - op: add
        path: /metadata/namespace
        value: \"$APP_NAMESPACE\""
PATCHES="patches:
$NAMESPACE_PATCH$PATCHES"

cat >"$DEPLOY_DIR/kustomization.yaml" <<EOF
# Generated by init.sh for stack $STACK in $REGION; re-run init.sh instead of editing.
# Git-ignored: secrets.env next to this file holds SECRET_KEY, its fallbacks and, with token
# authentication, REDIS_AUTH_TOKEN (AUTH token or RBAC password).
# Deploy with: kubectl apply -k .deploy/
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../k8s
components:
$COMPONENTS
configMapGenerator:
  - name: message-app-config
    behavior: merge
    literals:
      - "REDIS_HOST=$CACHE_HOST"
      - "REDIS_PORT=$CACHE_PORT"
      - "REDIS_TLS=$CACHE_TLS"
      # Cache mode $CACHE_MODE: the cluster client or not.
      - "REDIS_CLUSTER=$CACHE_CLUSTER"
$AUTH_LITERALS$EDGE_LITERALS
secretGenerator:
  - name: message-app-secrets
    envs:
      - secrets.env
    options:
      labels:
        app.kubernetes.io/name: message-app
        app.kubernetes.io/instance: message-app
images:
  - name: message-app
    newName: "$IMAGE_REPO"
    newTag: "$TAG"
$PATCHES
EOF

# Build the overlay offline once so a broken one fails here, not in kubectl apply; the output holds secrets.
kubectl kustomize "$DEPLOY_DIR" >/dev/null || die "the overlay in $DEPLOY_DIR does not build (see above)"
FAILURE_NOTE="" # .deploy/ is written: a rotation step taken above is in it

# k8s/deployment.yaml no longer sets replicas (the HPA owns the count). A Deployment applied from
# the earlier manifests has `replicas: 3` in kubectl's last-applied record, and its next apply
# would delete the field: the count would drop to 1 until the HPA restored it. So the record
# loses the count first, as `kubectl apply edit-last-applied` would; the live count stays.
forget_applied_replicas() {
  local applied
  if ! read_deployment; then
    printf '%s: WARNING: could not read deployment %s/message-app (%s): if it was applied before, drop spec.replicas from its last-applied record (kubectl apply edit-last-applied) before kubectl apply, or its pods fall to 1 until the HPA scales them up again\n' \
      "$PROG" "$APP_NAMESPACE" "$(tr '\n' ' ' <"$WORK/err")" >&2
    return 0
  fi
  [ -n "$DEPLOYMENT" ] || return 0 # a first deploy
  applied=$(jq -r '.metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"] // empty' <<<"$DEPLOYMENT")
  [ -n "$applied" ] && jq -e '.spec.replicas != null' <<<"$applied" >/dev/null || return 0
  kubectl -n "$APP_NAMESPACE" annotate deployment message-app --overwrite \
    "kubectl.kubernetes.io/last-applied-configuration=$(jq -c 'del(.spec.replicas)' <<<"$applied")" >/dev/null ||
    die "could not update deployment $APP_NAMESPACE/message-app's last-applied record (see above); kubectl apply now would take it down to 1 pod until the HPA scales it up again"
  say "deployment $APP_NAMESPACE/message-app: its replica count is the HPA's alone from now on (dropped from kubectl's last-applied record)"
}
forget_applied_replicas

say "wrote $DEPLOY_DIR/kustomization.yaml and $DEPLOY_DIR/secrets.env (image $IMAGE_REPO:$TAG, namespace $APP_NAMESPACE)"
[ -z "$ROTATION" ] || say "SECRET_KEY rotation $ROTATION"
if [ -z "$CERTIFICATE" ]; then
  printf '%s: WARNING: no certificate: the load balancer serves plain HTTP on port 80 and the session cookie travels unencrypted; for HTTPS run %s again with -c ACM_CERTIFICATE_ARN\n' "$PROG" "$PROG" >&2
fi
ADDRESS_HINT="  kubectl -n $APP_NAMESPACE get svc message-app # EXTERNAL-IP is the load balancer's DNS name: open $SCHEME://EXTERNAL-IP/"
[ "$EDGE" != alb ] ||
  ADDRESS_HINT="  kubectl -n $APP_NAMESPACE get ingress message-app # ADDRESS is the ALB's DNS name: open $SCHEME://ADDRESS/"
echo
echo "Next, the one command that deploys the app (k8s/ alone is refused on purpose):"
echo "  kubectl apply -k $OVERLAY"
echo "  kubectl -n $APP_NAMESPACE get pods            # 3 message-app pods become Running/Ready"
echo "$ADDRESS_HINT"
