#!/usr/bin/env bash
# The main-branch workflow's deploy steps (.github/workflows/deploy.yml), kept in a file that the
# tests lint with ShellCheck: actionlint, which would lint a workflow's inline scripts, cannot run
# here. Uses the AWS CLI profile the workflow's OIDC step wrote; no stored key is involved.
# Works with bash 3.2 (macOS) and GNU/BSD tools, like the scripts it sits beside.
set -euo pipefail

PROG=${0##*/}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$ROOT/scripts/common.sh"

usage() {
  cat <<EOF
Usage: $PROG image|apply -p PROFILE -r REGION -t TAG [-s STACK_NAME] [-h]

  image  Build the image for linux/amd64 with docker buildx, its SBOM (SPDX, BuildKit's scanner)
         attached to the image and written to sbom.spdx.json, and push it to the stack's ECR
         repository as TAG. A TAG already in ECR names this very build (tags are immutable):
         then only its SBOM is read back.
  apply  Write the overlay .deploy/ with init.sh -t TAG (which finds the pushed image and does
         not build again; SECRET_KEY comes from the stack's Secrets Manager secret, the same
         as on every operator's machine), then kubectl apply -k .deploy/ and wait for the rollout
         in the stack's AppNamespace; that namespace goes to \$GITHUB_OUTPUT as namespace=NS.

  -p PROFILE     AWS CLI profile (the workflow's OIDC step writes it)
  -r REGION      AWS region
  -t TAG         image tag (the workflow passes ci- and the commit's first 12 hex digits: its own
                 name, so that an operator's init.sh build of the same commit is never taken for it)
  -s STACK_NAME  main stack name (default: flask-eks-sessions)
  -h             show this help
EOF
}

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  usage
  exit 0
fi
COMMAND=${1:-}
case $COMMAND in
  image | apply) shift ;;
  "") usage_error "missing the step: image or apply" ;;
  *) usage_error "unknown step: $COMMAND" ;;
esac
PROFILE=""
REGION=""
TAG=""
STACK="flask-eks-sessions"
while getopts ':p:r:t:s:h' opt; do
  case $opt in
    t) TAG=$OPTARG ;;
    *) common_option "$opt" ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage_error "unexpected argument: $1"
[ -n "$PROFILE" ] || usage_error "missing -p PROFILE"
[ -n "$REGION" ] || usage_error "missing -r REGION"
[ -n "$TAG" ] || usage_error "missing -t TAG"

image() {
  require_tools aws docker jq
  make_work_dir
  local json repo registry image
  json=$(stack_json "$STACK")
  [ -n "$json" ] || die "stack $STACK does not exist in $REGION: deploy it first (./deploy.sh)"
  repo=$(stack_output "$json" EcrRepositoryUri)
  [ -n "$repo" ] || die "stack $STACK has no output EcrRepositoryUri"
  registry=${repo%%/*}
  image="$repo:$TAG"
  say "logging docker in to $registry"
  awsp ecr get-login-password | docker login --username AWS --password-stdin "$registry"
  if awsp ecr describe-images --repository-name "${repo#*/}" --image-ids "imageTag=$TAG" \
    --output json >/dev/null 2>"$WORK/err"; then
    say "image $image is already in ECR (tags are immutable): not building it again"
  elif grep -q ImageNotFoundException "$WORK/err"; then
    # The docker-container driver: the default docker driver cannot attach attestations.
    docker buildx create --name pipeline --driver docker-container --use >/dev/null
    say "building $image with its SBOM and pushing it"
    docker buildx build --platform linux/amd64 --sbom=true --provenance=mode=min \
      --tag "$image" --push "$ROOT"
  else
    cat "$WORK/err" >&2
    die "could not look up ${repo#*/}:$TAG in ECR"
  fi
  # The SBOM as a file too, for the workflow's artifact; it stays attached to the image in ECR.
  docker buildx imagetools inspect "$image" --format '{{ json .SBOM.SPDX }}' >"$ROOT/sbom.spdx.json"
  say "SBOM written to sbom.spdx.json"
}

# init.sh writes SECRET_KEY (and a rotation's fallbacks) from Secrets Manager, so a CI job starting
# without .deploy/ deploys the same key as the running pods, and a rotation step an operator took
# (init.sh -R) reaches the pods as it is.
# The kubeconfig init.sh writes names no namespace: the rollout is awaited in the stack's
# AppNamespace (where the overlay puts the app), and the workflow's ops.verify step gets it as
# this step's output `namespace` (GitHub's $GITHUB_OUTPUT file, when set).
apply() {
  require_tools aws kubectl jq
  make_work_dir
  local json namespace
  "$ROOT/init.sh" -p "$PROFILE" -r "$REGION" -s "$STACK" -t "$TAG"
  json=$(stack_json "$STACK")
  namespace=$(stack_output "$json" AppNamespace)
  [ -n "$namespace" ] || die "stack $STACK has no output AppNamespace"
  say "applying .deploy/"
  kubectl apply -k "$ROOT/.deploy/"
  # Three pods, each after a 40 s preStop pause and its readiness probe: minutes, not seconds.
  kubectl -n "$namespace" rollout status deployment/message-app --timeout=15m
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    printf 'namespace=%s\n' "$namespace" >>"$GITHUB_OUTPUT"
  fi
}

"$COMMAND"
