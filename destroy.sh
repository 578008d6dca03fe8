#!/usr/bin/env bash
# Removes everything deploy.sh and init.sh created: the Kubernetes objects first, waiting until the
# Service's load balancer, its target groups and security groups are gone (EKS creates them outside
# CloudFormation, and they would keep the VPC from being deleted), the main stack, then every object
# version of the template bucket and every image in ECR, then the bootstrap stack.
# Re-runnable: whatever is already gone is reported and skipped (finding neither stack is an error). Works with bash 3.2 (macOS) and GNU/BSD tools.
set -euo pipefail

PROG=${0##*/}
ROOT=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=scripts/common.sh
. "$ROOT/scripts/common.sh"
# shellcheck source-path=SCRIPTDIR source=scripts/progress.sh
. "$ROOT/scripts/progress.sh"

usage() {
  cat <<EOF
Usage: $PROG -p PROFILE [-r REGION] [-s STACK_NAME] [-y] [-h]

Deletes the message-app Kubernetes objects (and waits until the load balancer, its target groups
and security groups are gone, up to \$LB_WAIT_SECONDS, default 900 s), the ALB's access logs, the
main stack
STACK_NAME, the contents of the template bucket (every version and delete marker) and of the ECR
repository, and the bootstrap stack STACK_NAME-bootstrap. Asks for the stack name as confirmation.
Deletes nothing, and exits 1, when it finds neither stack in the region, or when one has
termination protection or is still busy.

  -p PROFILE     AWS CLI profile (required); every aws call uses it
  -r REGION      AWS region (default: the profile's region, aws configure get region)
  -s STACK_NAME  main stack name (default: flask-eks-sessions)
  -y             do not ask (needed when there is no terminal, e.g. in CI)
  -h             show this help

Changed from the original sample: -s is really used and optional; -r and -y are new; the versioned
bucket is emptied completely, so deleting the bootstrap stack no longer fails.
EOF
}

PROFILE=""
REGION=""
STACK="flask-eks-sessions"
YES=0

if [ "${1:-}" = "--help" ]; then
  usage
  exit 0
fi
while getopts ':p:r:s:yh' opt; do
  case $opt in
    y) YES=1 ;;
    *) common_option "$opt" ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage_error "unexpected argument: $1"
[ -n "$PROFILE" ] || usage_error "missing -p PROFILE (the AWS CLI profile the stacks were deployed with)"
BOOTSTRAP="$STACK-bootstrap"

# Check every prerequisite before touching anything, and name all that are missing at once.
require_tools aws kubectl jq
resolve_region

if [ "$YES" -ne 1 ]; then
  [ -t 0 ] || die "refusing to delete without confirmation: no terminal to ask on; pass -y to confirm"
  printf 'This deletes stacks %s and %s in %s (profile %s): the EKS cluster, the cache and every\n' \
    "$STACK" "$BOOTSTRAP" "$REGION" "$PROFILE"
  printf 'session in it, all template versions and all images. Type the stack name (%s) to confirm: ' "$STACK"
  answer=""
  read -r answer || true
  [ "$answer" = "$STACK" ] || die "not confirmed; nothing was deleted"
fi

make_work_dir

delete_stack() {
  say "deleting stack $1, followed until it is gone (Ctrl-C stops watching, not the deletion)"
  local status=0
  delete_and_follow "$1" || status=$?
  case $status in
    0) ;;
    2) die "could not delete stack $1 (above); fix the cause and run $PROG again" ;;
    *) die "deleting stack $1 failed (first failure above); fix the cause and run $PROG again" ;;
  esac
}

# Before anything is deleted: a stack CloudFormation would not delete now keeps its Kubernetes
# objects (the app's load balancer) and its twin. $1 is the stack's describe-stacks JSON.
refuse_undeletable() {
  local name status
  name=$(jq -r '.Stacks[0].StackName' <<<"$1")
  status=$(jq -r '.Stacks[0].StackStatus' <<<"$1")
  if [ "$(jq -r '.Stacks[0].EnableTerminationProtection // false' <<<"$1")" = true ]; then
    die "stack $name has termination protection: nothing was deleted. If it is to go, run: aws --profile $PROFILE --region $REGION cloudformation update-termination-protection --no-enable-termination-protection --stack-name $name, then $PROG again"
  fi
  case $status in
    DELETE_IN_PROGRESS | REVIEW_IN_PROGRESS) ;; # followed to its end / holds nothing
    *_IN_PROGRESS) die "stack $name is busy ($status): nothing was deleted; wait until it finishes, then run $PROG again" ;;
  esac
}

# What EKS Auto Mode's load balancing made for the Service, outside any stack, in the cluster's VPC:
# prints one line per load balancer, target group and security group still there. The security
# groups are those carrying the tags EKS (or the AWS Load Balancer Controller) puts on its own.
# Called in $(...), where errexit does not reach: each listing returns its own failure.
load_balancer_leftovers() {
  local vpc=$1 cluster=$2
  awsp elbv2 describe-load-balancers --output json |
    jq -r --arg vpc "$vpc" '.LoadBalancers[] | select(.VpcId == $vpc) | "load balancer \(.LoadBalancerName)"' ||
    return 1
  awsp elbv2 describe-target-groups --output json |
    jq -r --arg vpc "$vpc" '.TargetGroups[] | select(.VpcId == $vpc) | "target group \(.TargetGroupName)"' ||
    return 1
  awsp ec2 describe-security-groups --filters "Name=vpc-id,Values=$vpc" --output json |
    jq -r --arg cluster "$cluster" '.SecurityGroups[]
      | select(any(.Tags // [] | .[]; (.Key == "eks:eks-cluster-name" and .Value == $cluster)
          or (.Key == "elbv2.k8s.aws/cluster" and .Value == $cluster)
          or (.Key | startswith("service.eks.amazonaws.com/"))))
      | "security group \(.GroupId)"'
}

# Polls until load_balancer_leftovers finds nothing; EKS deletes them a while after the Service.
wait_for_load_balancer() {
  local vpc=$1 cluster=$2 waited=0 left interval=${LB_WAIT_INTERVAL:-15} limit=${LB_WAIT_SECONDS:-900}
  while :; do
    left=$(load_balancer_leftovers "$vpc" "$cluster") ||
      die "could not list the load balancers, target groups and security groups of $vpc"
    [ -n "$left" ] || break
    if [ "$waited" -ge "$limit" ]; then
      printf '%s\n' "$left" >&2
      die "these are still in $vpc after ${limit}s and would keep the VPC from being deleted; delete them (EC2 console) or wait, then run $PROG again"
    fi
    say "waiting for EKS to delete: $(printf '%s' "$left" | tr '\n' ',' | sed 's/,/, /g')"
    sleep "$interval"
    waited=$((waited + interval))
  done
  say "no load balancer, target group or security group of the Service is left in $vpc"
}

# The Service's load balancer, target groups and security groups are not in any stack: unless they
# are deleted first, they keep the VPC (and so the main stack) from being deleted. The kubeconfig
# names no namespace: every call names the app's ($2).
delete_kubernetes_objects() {
  local cluster=$1 namespace=$2 overlay="" kubeconfig="$WORK/kubeconfig" vpc
  if ! awsp eks describe-cluster --name "$cluster" --output json >"$WORK/cluster.json" 2>"$WORK/err"; then
    grep -q 'ResourceNotFoundException' "$WORK/err" || {
      cat "$WORK/err" >&2
      die "could not look up cluster $cluster"
    }
    say "cluster $cluster: already gone, no Kubernetes objects to delete"
    return 0
  fi
  # A kubeconfig of our own: never act on whatever cluster the user's current context points at.
  vpc=$(jq -r '.cluster.resourcesVpcConfig.vpcId // empty' "$WORK/cluster.json")
  awsp eks update-kubeconfig --name "$cluster" --kubeconfig "$kubeconfig" >/dev/null
  # The Ingress (an ALB) and the Service (an NLB) are what hold AWS resources: they go first, by
  # name, overlay or not, while their IngressClass and its parameters are still there. `delete -k`
  # alone deletes those before the Ingress (kustomize's order), and an Ingress whose class is gone
  # can keep its finalizer, and so itself, for ever (kubernetes-sigs/aws-load-balancer-controller
  # #4341); without --timeout kubectl would wait a week. --wait=true waits out the Ingress's
  # finalizer, which EKS lifts once the ALB is deleted, and the Service's.
  if [ -f "$ROOT/.deploy/kustomization.yaml" ] && [ -f "$ROOT/.deploy/secrets.env" ]; then
    overlay="$ROOT/.deploy"
    say "deleting ingress and service message-app in namespace $namespace of cluster $cluster, then the rest of .deploy/"
  else
    # No overlay here (another machine deployed, or .deploy/ was removed): the rest goes with
    # the cluster.
    say "no .deploy/ overlay: deleting ingress and service message-app in namespace $namespace of cluster $cluster"
  fi
  kubectl --kubeconfig "$kubeconfig" -n "$namespace" delete ingress,service message-app \
    --ignore-not-found --wait=true --timeout=600s ||
    die "ingress or service message-app in namespace $namespace is not gone after 10 minutes, or could not be deleted (above); its load balancer would block deleting the VPC. Check access to the cluster and kubectl -n $namespace describe ingress,service message-app (an Ingress stays until EKS has deleted its ALB and lifts its finalizer; its IngressClass message-app-alb must still be there), then run $PROG again"
  if [ -n "$vpc" ]; then
    wait_for_load_balancer "$vpc" "$cluster"
  else
    say "cluster $cluster names no VPC: not waiting for load balancers"
  fi
  [ -n "$overlay" ] || return 0
  say "deleting the rest of the Kubernetes objects of .deploy/ from cluster $cluster"
  # No -n: the overlay names each object's namespace (init.sh), kube-system's ConfigMap too,
  # and kubectl refuses an object whose namespace differs from -n.
  kubectl --kubeconfig "$kubeconfig" delete -k "$overlay" --ignore-not-found --wait=true --timeout=300s ||
    die "could not delete the rest of the Kubernetes objects of .deploy/ within 5 minutes (their load balancer is gone already); fix access to the cluster or delete them yourself (kubectl delete -k .deploy/), then run $PROG again"
}

# Deletes every object version and delete marker, 1000 at a time (the DeleteObjects limit).
# Each round lists from the start, so deletions never invalidate a pagination token.
empty_bucket() {
  local bucket=$1 page count total=0 errors
  while :; do
    if ! page=$(awsp s3api list-object-versions --bucket "$bucket" --max-items 1000 --output json 2>"$WORK/err"); then
      if grep -q 'NoSuchBucket' "$WORK/err"; then
        say "bucket $bucket: already gone"
        return 0
      fi
      cat "$WORK/err" >&2
      die "could not list bucket $bucket"
    fi
    jq '{Objects: ([(.Versions // [])[], (.DeleteMarkers // [])[]] | map({Key, VersionId}) | .[:1000]),
      Quiet: true}' <<<"$page" >"$WORK/delete.json"
    count=$(jq '.Objects | length' "$WORK/delete.json")
    [ "$count" -gt 0 ] || break
    errors=$(awsp s3api delete-objects --bucket "$bucket" --delete "file://$WORK/delete.json" --output json |
      jq '.Errors // [] | length')
    [ "$errors" -eq 0 ] || die "S3 refused to delete $errors object versions from $bucket"
    total=$((total + count))
  done
  say "bucket $bucket: deleted $total object versions and delete markers"
}

# Deletes every image as list-images names it (tag and digest, or digest alone when untagged), 100 at
# a time (the BatchDeleteImage limit). An entry already gone with another tag of the same image is fine.
# ECR keeps the manifests of an image index (a multi-platform push, or one with an SBOM or provenance,
# as scripts/pipeline.sh pushes) while the index is there, even in the same call: they go in the next
# round, which lists what is left. A round after which no fewer are left ends the run.
empty_repository() {
  local repo=$1 images count total="" left chunk failures
  while :; do
    if ! images=$(awsp ecr list-images --repository-name "$repo" --output json 2>"$WORK/err"); then
      if grep -q 'RepositoryNotFoundException' "$WORK/err"; then
        say "repository $repo: already gone"
        return 0
      fi
      cat "$WORK/err" >&2
      die "could not list repository $repo"
    fi
    count=$(jq '.imageIds | length' <<<"$images")
    [ "$count" -gt 0 ] || break
    [ -z "$total" ] || [ "$count" -lt "$left" ] ||
      die "ECR deleted none of the $count images left in $repo (each part of an image index still there?); run $PROG again in a minute"
    total=${total:-$count} left=$count
    jq -c '.imageIds | range(0; length; 100) as $i | .[$i:$i + 100]' <<<"$images" >"$WORK/images.jsonl"
    # fd 3, so that nothing inside the loop can read the list as its standard input.
    while read -r chunk <&3; do
      failures=$(awsp ecr batch-delete-image --repository-name "$repo" --image-ids "$chunk" --output json |
        jq '[.failures // [] | .[] | select(.failureCode != "ImageNotFound"
          and .failureCode != "ImageReferencedByManifestList")] | length')
      [ "$failures" -eq 0 ] || die "ECR refused to delete $failures images from $repo"
    done 3<"$WORK/images.jsonl"
  done
  say "repository $repo: deleted ${total:-0} images"
}

say "profile $PROFILE, region $REGION, stacks $STACK and $BOOTSTRAP"

MAIN_JSON=$(stack_json "$STACK")
BOOTSTRAP_JSON=$(stack_json "$BOOTSTRAP")
if [ -z "$MAIN_JSON" ] && [ -z "$BOOTSTRAP_JSON" ]; then
  # Most likely another region or a mistyped name: finding nothing is not "deleted".
  # deploy.sh's stacks come in pairs: a name here with its -bootstrap twin is probably one.
  deployed=$(awsp cloudformation describe-stacks --output json |
    jq -r '[.Stacks[].StackName] | map(select(endswith("-bootstrap")) | rtrimstr("-bootstrap")) as $b
      | [.[] | select(. as $n | $b | index($n))] | join(", ")') || deployed="(could not list them)"
  die "no stack $STACK or $BOOTSTRAP in $REGION (profile $PROFILE): nothing was deleted. Check -r and -s (stacks deployed here: ${deployed:-none})"
fi
for json in "$MAIN_JSON" "$BOOTSTRAP_JSON"; do
  [ -z "$json" ] || refuse_undeletable "$json"
done
if [ -z "$MAIN_JSON" ]; then
  say "stack $STACK: already gone"
else
  CLUSTER=$(stack_output "$MAIN_JSON" ClusterName)
  # Where init.sh deployed the app; a stack from before AppNamespace existed ran it in default.
  APP_NAMESPACE=$(stack_output "$MAIN_JSON" AppNamespace)
  if [ -n "$CLUSTER" ]; then
    delete_kubernetes_objects "$CLUSTER" "${APP_NAMESPACE:-default}"
  else
    say "stack $STACK has no ClusterName output (its creation never finished): no Kubernetes objects to delete"
  fi
  # The ALB's access logs (LoadBalancerType alb): the bucket must be empty before its stack goes.
  ACCESS_LOGS=$(stack_output "$MAIN_JSON" AccessLogBucket)
  [ -z "$ACCESS_LOGS" ] || empty_bucket "$ACCESS_LOGS"
  delete_stack "$STACK"
fi

# The templates stay until the main stack is gone, so a failed deletion above can still be retried.
BOOTSTRAP_JSON=$(stack_json "$BOOTSTRAP")
if [ -z "$BOOTSTRAP_JSON" ]; then
  say "stack $BOOTSTRAP: already gone"
else
  # The stack's own resource list finds the bucket and repository even when its outputs are missing
  # (a creation that failed half-way, or a deletion that failed).
  awsp cloudformation describe-stack-resources --stack-name "$BOOTSTRAP" --output json |
    jq -r '.StackResources[] | select(.ResourceStatus != "DELETE_COMPLETE" and (.PhysicalResourceId // "") != "")
      | "\(.ResourceType) \(.PhysicalResourceId)"' >"$WORK/resources.txt"
  while read -r type id <&3; do
    case $type in
      AWS::S3::Bucket) empty_bucket "$id" ;;
      AWS::ECR::Repository) empty_repository "$id" ;;
    esac
  done 3<"$WORK/resources.txt"
  delete_stack "$BOOTSTRAP"
fi

echo
say "done: stacks $STACK and $BOOTSTRAP are deleted"
if [ -n "${CLUSTER:-}" ]; then
  echo "Your kubeconfig still has a context for cluster $CLUSTER: list them with kubectl config get-contexts,"
  echo "remove it with kubectl config delete-context NAME."
fi
# The pipeline's stack (docs/deploy-aws.md) is the operator's own, not deploy.sh's: named, not deleted.
# Only a hint: a profile that may not read that stack gets none, and no error.
if awsp cloudformation describe-stacks --stack-name "$STACK-github" --output json >/dev/null 2>&1; then
  echo "Stack $STACK-github (the GitHub pipeline's role) is still there; its access entry named the deleted"
  echo "cluster. Delete it with: aws --profile $PROFILE --region $REGION cloudformation delete-stack --stack-name $STACK-github"
fi
