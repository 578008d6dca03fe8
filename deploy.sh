#!/usr/bin/env bash
# Creates or updates the AWS infrastructure of flask-eks-sessions with CloudFormation:
# the bootstrap stack (template bucket, ECR repository), then the main stack (VPC, EKS, ElastiCache),
# in three Availability Zones chosen by zone ID.
# Re-runnable: an unchanged stack is "no changes", not an error. Works with bash 3.2 (macOS) and GNU/BSD tools.
set -euo pipefail

PROG=${0##*/}
ROOT=$(cd "$(dirname "$0")" && pwd)
CFN_DIR="$ROOT/cfn"
# shellcheck source-path=SCRIPTDIR source=scripts/common.sh
. "$ROOT/scripts/common.sh"
# shellcheck source-path=SCRIPTDIR source=scripts/progress.sh
. "$ROOT/scripts/progress.sh"

usage() {
  cat <<EOF
Usage: $PROG -p PROFILE [-r REGION] [-s STACK_NAME] [-a PRINCIPAL_ARN] [-c CERTIFICATE_ARN] [-m CACHE_MODE] [-A AUTH] [-e EDGE] [-o KEY=VALUE]... [-h]

Validates every template in cfn/, deploys the bootstrap stack STACK_NAME-bootstrap (template bucket,
ECR repository), uploads the nested templates to its bucket, deploys the main stack STACK_NAME
(VPC, EKS, ElastiCache; about 30 minutes the first time) and prints its outputs. Each stack is
followed until it ends, however long that takes, one line per resource event (elapsed time,
resources complete out of the total, the nested stack); a failure names the first resource that
failed and why. Ctrl-C stops watching, not the stack.
Safe to re-run: unchanged stacks are left alone.
Availability Zones are chosen by zone ID, skipping those where EKS refuses control-plane subnets
($EKS_UNSUPPORTED_ZONE_IDS); a region with fewer than $ZONES_NEEDED usable zones stops here, before
anything is created. An existing stack keeps the zones it was created with.

  -p PROFILE        AWS CLI profile (required); every aws call uses it
  -r REGION         AWS region (default: the profile's region, aws configure get region)
  -s STACK_NAME     main stack name (default: flask-eks-sessions)
  -a PRINCIPAL_ARN  IAM role or user given cluster-admin on EKS (default: the existing stack's, else
                    the caller, from aws sts get-caller-identity; an assumed-role session becomes
                    its role ARN)
  -c CERT_ARN       ACM certificate (in REGION) for HTTPS on the load balancer; without it the app is
                    served over plain HTTP (a warning says so). An existing stack keeps its certificate
                    when -c is left out; -c none removes it
  -m CACHE_MODE     session cache: replication-group (default: one primary and replicas), cluster
                    (cluster mode enabled, -o NumNodeGroups=N -o ReplicasPerNodeGroup=N) or
                    serverless (ElastiCache Serverless). An existing stack keeps its mode when -m is
                    left out; a different mode replaces the cache, and every session is lost
  -A AUTH           how the app signs in to the cache: iam (default: an ElastiCache user with IAM
                    authentication, the pods' role through EKS Pod Identity, no password anywhere)
                    or token (an AUTH token, on Serverless an RBAC password, in Secrets Manager).
                    An existing stack keeps its choice when -A is left out; after a change run
                    ./init.sh and kubectl apply -k .deploy/ at once (running pods keep the old way)
  -e EDGE           load balancer: nlb (default: the Service's Network Load Balancer, as the
                    sample) or alb (an Ingress with the Application Load Balancer: HTTP redirected
                    to HTTPS, AWS WAF, access logs; LoadBalancerType). An existing stack keeps its
                    type when -e is left out; after a change run ./init.sh and kubectl apply again
  -o KEY=VALUE      main-stack parameter override, repeatable (e.g. -o CacheReplicaCount=0);
                    an existing stack keeps the value of every parameter not given (its
                    previous value), a new stack takes the template default
  -h                show this help

Changed from the original sample: -b (ignored there) is gone; -r, -s, -a, -c, -m, -A, -e and -o are new.
Next step afterwards: ./init.sh -p PROFILE -r REGION -s STACK_NAME
EOF
}

# EKS refuses control-plane subnets in these zones (eksctl skips them for the same reason): a stack
# using one rolls back after about ten minutes.
EKS_UNSUPPORTED_ZONE_IDS="use1-az3 usw1-az2 cac1-az3"
# network.yaml has three subnets per tier, one per zone.
ZONES_NEEDED=3

PROFILE=""
REGION=""
STACK="flask-eks-sessions"
PRINCIPAL=""
CERTIFICATE=""
CACHE_MODE=""
CACHE_AUTH=""
EDGE=""
OVERRIDES=()

if [ "${1:-}" = "--help" ]; then
  usage
  exit 0
fi
while getopts ':p:r:s:a:c:m:A:e:o:h' opt; do
  case $opt in
    a) PRINCIPAL=$OPTARG ;;
    c) CERTIFICATE=$OPTARG ;;
    m)
      case $OPTARG in
        replication-group | cluster | serverless) CACHE_MODE=$OPTARG ;;
        *) usage_error "-m needs replication-group, cluster or serverless, got '$OPTARG'" ;;
      esac
      ;;
    A)
      case $OPTARG in
        iam | token) CACHE_AUTH=$OPTARG ;;
        *) usage_error "-A needs iam or token, got '$OPTARG'" ;;
      esac
      ;;
    e)
      case $OPTARG in
        nlb | alb) EDGE=$OPTARG ;;
        *) usage_error "-e needs nlb or alb, got '$OPTARG'" ;;
      esac
      ;;
    o)
      case $OPTARG in
        AvailabilityZones=* | CertificateArn=* | CacheMode=* | CacheAuth=* | LoadBalancerType=*)
          usage_error "${OPTARG%%=*} is set by $PROG itself (zones by zone ID; the certificate with -c; the cache mode with -m; its authentication with -A; the load balancer with -e)"
          ;;
        [A-Za-z]*=*) OVERRIDES+=("$OPTARG") ;;
        *) usage_error "-o needs KEY=VALUE, got '$OPTARG'" ;;
      esac
      ;;
    *) common_option "$opt" ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage_error "unexpected argument: $1"
[ -n "$PROFILE" ] || usage_error "missing -p PROFILE (the AWS CLI profile to deploy with)"
BOOTSTRAP="$STACK-bootstrap"

# Check every prerequisite before touching anything, and name all that are missing at once.
require_tools aws jq
for t in bootstrap main network securitygroups cache eks app observability dashboard edge; do
  [ -f "$CFN_DIR/$t.yaml" ] || die "template $CFN_DIR/$t.yaml is missing"
done

resolve_region
case $CERTIFICATE in
  "" | none) ;;
  arn:aws*:acm:"$REGION":[0-9]*:certificate/*) ;;
  arn:aws*:acm:*)
    die "certificate $CERTIFICATE is not in $REGION: the load balancer can only use an ACM certificate of its own region"
    ;;
  *) usage_error "-c needs an ACM certificate ARN (arn:aws:acm:$REGION:ACCOUNT:certificate/ID), got '$CERTIFICATE'" ;;
esac
make_work_dir

# Prints the stack's status, or NONE when it does not exist; any other error is fatal.
stack_status() {
  local json
  # Runs inside $(), where errexit does not reach: a failed read must stop here, not read as NONE.
  json=$(stack_json "$1") || exit 1
  if [ -n "$json" ]; then
    jq -r '.Stacks[0].StackStatus' <<<"$json"
  else
    echo NONE
  fi
}

# Dies, saying what to do, for a stack that cannot be created or updated now ($2: its status, NONE
# for none); returns for one deploy_stack creates, recreates or updates.
check_deployable() {
  local name=$1 status=$2
  case $status in
    NONE | ROLLBACK_COMPLETE | REVIEW_IN_PROGRESS) ;;
    CREATE_COMPLETE | UPDATE_COMPLETE | UPDATE_ROLLBACK_COMPLETE | IMPORT_COMPLETE | IMPORT_ROLLBACK_COMPLETE) ;;
    *_IN_PROGRESS)
      die "stack $name is busy ($status); wait until it finishes, then run $PROG again"
      ;;
    UPDATE_ROLLBACK_FAILED)
      # The stack and everything in it (the cluster, the sessions) can be kept: once the cause
      # of the failed rollback is fixed, CloudFormation can finish it.
      print_failed_events "$name"
      die "stack $name is in state UPDATE_ROLLBACK_FAILED: fix what the events above name, then run: aws --profile $PROFILE --region $REGION cloudformation continue-update-rollback --stack-name $name (it may skip resources that cannot roll back: --resources-to-skip), and $PROG again once it reads UPDATE_ROLLBACK_COMPLETE"
      ;;
    *)
      print_failed_events "$name"
      die "stack $name is in state $status and cannot be updated; see the events above (./destroy.sh removes it)"
      ;;
  esac
}

# Creates the stack from the template or updates it, following it to its end however long it takes;
# "no updates" is success. Remaining arguments go to create/update-stack.
deploy_stack() {
  local name=$1 template=$2 status id total after
  shift 2
  total=$(template_resource_count "$template")
  status=$(stack_status "$name")
  check_deployable "$name" "$status"
  case $status in
    ROLLBACK_COMPLETE | REVIEW_IN_PROGRESS)
      # A stack whose creation rolled back, or a change set never executed (e.g. by the original's
      # `aws cloudformation deploy`), holds no resources and cannot be updated: recreate it.
      print_failed_events "$name"
      say "stack $name is $status from an earlier creation that did not finish: deleting it before creating it again"
      delete_and_follow "$name" || die "could not delete $name"
      status=NONE
      ;;
  esac
  case $status in
    NONE)
      say "creating stack $name: $total resources, followed until it ends, however long (Ctrl-C stops watching, not the stack)"
      id=$(awsp cloudformation create-stack --stack-name "$name" --template-body "file://$template" "$@" \
        --query StackId --output text)
      follow_stack "$id" create "$total" ||
        die "creating stack $name failed (first failure above); fix the cause and run $PROG again"
      ;;
    CREATE_COMPLETE | UPDATE_COMPLETE | UPDATE_ROLLBACK_COMPLETE | IMPORT_COMPLETE | IMPORT_ROLLBACK_COMPLETE)
      say "updating stack $name"
      after=$(newest_event_id "$name")
      if id=$(awsp cloudformation update-stack --stack-name "$name" --template-body "file://$template" "$@" \
        --query StackId --output text 2>"$WORK/err"); then
        follow_stack "$id" update "$total" "$after" ||
          die "updating stack $name failed (first failure above); it rolled back to its previous state"
      elif grep -q 'No updates are to be performed' "$WORK/err"; then
        say "No changes to deploy: stack $name is up to date"
      else
        cat "$WORK/err" >&2
        die "could not update stack $name"
      fi
      ;;
  esac
}

# EKS access entries take an IAM role or user, not a temporary session: an assumed-role session
# (SSO, a role) arn:P:sts::A:assumed-role/R/S stands for the role R. Its ARN comes from IAM, because
# only IAM knows the role's path (SSO roles have one) and EKS needs the exact ARN.
admin_from_caller() {
  local arn=$1 role
  case $arn in
    arn:*:sts::*:assumed-role/*)
      role=${arn#*:assumed-role/}
      role=${role%%/*}
      if ! awsp iam get-role --role-name "$role" --output json | jq -r .Role.Arn; then
        die "could not read role $role (iam:GetRole) to name it cluster admin: pass its ARN with -a"
      fi
      ;;
    arn:*:iam::*:root)
      die "you are signed in as the account root user, which cannot be a cluster admin: pass -a with an IAM role or user ARN"
      ;;
    *) printf '%s\n' "$arn" ;;
  esac
}

# Prints a parameter of the existing main stack (describe-stacks JSON in $1), empty if none.
stack_parameter() {
  jq -r --arg k "$2" '.Stacks[0].Parameters // [] | .[] | select(.ParameterKey == $k) | .ParameterValue' <<<"$1"
}

# Prints what a choice (-m, -A, -e) is on the existing stack: the value given, else the stack's
# parameter PARAM (FALLBACK for a stack from before PARAM existed). A change prints NOTICE, a
# printf format taking the old and the new value, on stderr.
kept_choice() {
  local given=$1 param=$2 fallback=$3 notice=$4 existing
  existing=$(stack_parameter "$EXISTING_JSON" "$param")
  existing=${existing:-$fallback}
  if [ -n "$given" ] && [ "$given" != "$existing" ]; then
    printf '%s: ' "$PROG" >&2
    # shellcheck disable=SC2059 # the format is the caller's fixed text
    printf "$notice\n" "$existing" "$given" >&2
  fi
  printf '%s\n' "${given:-$existing}"
}

# Prints ZONES_NEEDED zone names of the region, comma separated: available, ordinary zones (no Local
# or Wavelength Zones) whose zone ID EKS accepts, in name order. By ID, because a name such as
# us-east-1b is a different physical zone in every account, while use1-az3 is the same everywhere.
choose_zones() {
  local json usable count
  json=$(awsp ec2 describe-availability-zones --filters Name=zone-type,Values=availability-zone \
    --output json) || die "could not list the Availability Zones of $REGION (ec2:DescribeAvailabilityZones)"
  usable=$(jq -r --arg skip "$EKS_UNSUPPORTED_ZONE_IDS" '($skip | split(" ")) as $bad
    | [.AvailabilityZones[]
       | select((.ZoneType // "availability-zone") == "availability-zone" and .State == "available")
       | select(.ZoneId as $id | $bad | index($id) | not)]
    | sort_by(.ZoneName) | map("\(.ZoneName) (\(.ZoneId))") | .[]' <<<"$json")
  count=$(printf '%s' "$usable" | grep -c . || true)
  if [ "$count" -lt "$ZONES_NEEDED" ]; then
    die "region $REGION has $count Availability Zones EKS can use ($(printf '%s' "$usable" | tr '\n' ',' | sed 's/,/, /g; s/, $//')), $ZONES_NEEDED are needed (EKS refuses $EKS_UNSUPPORTED_ZONE_IDS): choose another region with -r; nothing was created"
  fi
  # sed, not head: head exits after its lines while bash's printf still writes the rest (one
  # write per line), and that SIGPIPE failed the pipeline (pipefail): deploy.sh stopped with exit
  # 1 and no message, once in a CI run.
  printf '%s\n' "$usable" | sed -n "1,${ZONES_NEEDED}p" | sed 's/ (.*//' | tr '\n' ',' | sed 's/,$//'
}

say "profile $PROFILE, region $REGION, stacks $BOOTSTRAP and $STACK"
# The main stack's zones and certificate, if it exists: its subnets must stay where they are (new
# zones would replace every subnet), and HTTPS must not vanish because -c was left out.
EXISTING_JSON=$(stack_json "$STACK")
ZONES=""
if [ -n "$EXISTING_JSON" ]; then
  # Before the bootstrap stack and the nested templates change: a main stack still running an
  # operation would start the nested stacks it has not reached yet from the new templates.
  check_deployable "$STACK" "$(jq -r '.Stacks[0].StackStatus' <<<"$EXISTING_JSON")"
  ZONES=$(stack_parameter "$EXISTING_JSON" AvailabilityZones)
  [ -n "$CERTIFICATE" ] || CERTIFICATE=$(stack_parameter "$EXISTING_JSON" CertificateArn)
  # The cache mode, like the certificate, stays unless -m names another: a fallback to the default
  # would replace the cache (and end every session) on a plain re-run. So do the authentication
  # (a stack from before CacheAuth used a password) and the load balancer type.
  CACHE_MODE=$(kept_choice "$CACHE_MODE" CacheMode replication-group \
    'WARNING: cache mode %s -> %s replaces the session cache: every session is lost (users see an empty message list); afterwards run ./init.sh and kubectl apply -k .deploy/')
  CACHE_AUTH=$(kept_choice "$CACHE_AUTH" CacheAuth token \
    'WARNING: cache authentication %s -> %s: the running pods cannot open new cache connections until you run ./init.sh and kubectl apply -k .deploy/ (do it right after this)')
  EDGE=$(kept_choice "$EDGE" LoadBalancerType nlb \
    'NOTE: load balancer %s -> %s: afterwards run ./init.sh and kubectl apply -k .deploy/ (the old load balancer goes when its Service or Ingress does: from alb back to nlb, kubectl delete ingress message-app)')
  # The cluster admin too: an access entry's principal cannot change, so CloudFormation would
  # replace the entry, and whoever ran the last deploy would lock out whoever ran the first.
  PRINCIPAL=$(kept_choice "$PRINCIPAL" ClusterAdminPrincipalArn "" \
    'WARNING: cluster admin %s -> %s: the first loses its access to the cluster (its access entry is replaced); give it back with -a, or an access entry of its own')
fi
CACHE_MODE=${CACHE_MODE:-replication-group}
CACHE_AUTH=${CACHE_AUTH:-iam}
say "cache mode: $CACHE_MODE, authentication: $CACHE_AUTH"
EDGE=${EDGE:-nlb}
say "load balancer: $EDGE"
if [ -n "$ZONES" ]; then
  say "Availability Zones: $ZONES (those of the existing stack $STACK)"
else
  ZONES=$(choose_zones) || exit 1
  say "Availability Zones: $ZONES (chosen by zone ID; EKS refuses $EKS_UNSUPPORTED_ZONE_IDS)"
fi
[ "$CERTIFICATE" != none ] || CERTIFICATE=""
if [ -z "$CERTIFICATE" ]; then
  printf '%s: WARNING: no certificate (-c): the app will be served over plain HTTP, and the session cookie travels unencrypted; pass -c ACM_CERTIFICATE_ARN for HTTPS\n' "$PROG" >&2
fi
if [ -z "$PRINCIPAL" ]; then
  CALLER=$(awsp sts get-caller-identity --output json | jq -r .Arn) ||
    die "could not identify the caller: are the credentials of profile $PROFILE valid (aws sso login --profile $PROFILE)?"
  # The function's own message explains a failure; exit without a second one.
  PRINCIPAL=$(admin_from_caller "$CALLER") || exit 1
fi
say "cluster admin: $PRINCIPAL"

MAIN_KEYS="[]"
for t in "$CFN_DIR"/*.yaml; do
  say "validating ${t##*/}"
  json=$(awsp cloudformation validate-template --template-body "file://$t" --output json) ||
    die "template ${t##*/} is invalid (see above)"
  # main.yaml's parameter names: only these can keep a previous value (a name the template no
  # longer has would fail the update).
  [ "${t##*/}" != main.yaml ] || MAIN_KEYS=$(jq -c '[.Parameters // [] | .[].ParameterKey]' <<<"$json")
done

# ECR names are per account and region and lower case: one repository per stack name.
REPO_PREFIX=$(printf '%s' "$STACK" | tr '[:upper:]' '[:lower:]' | tr -s '-')
deploy_stack "$BOOTSTRAP" "$CFN_DIR/bootstrap.yaml" \
  --parameters "ParameterKey=RepositoryName,ParameterValue=${REPO_PREFIX%-}/message-app"
BOOTSTRAP_JSON=$(awsp cloudformation describe-stacks --stack-name "$BOOTSTRAP" --output json)
BUCKET=$(stack_output "$BOOTSTRAP_JSON" TemplateBucketName)
REPO_URI=$(stack_output "$BOOTSTRAP_JSON" EcrRepositoryUri)
if [ -z "$BUCKET" ] || [ -z "$REPO_URI" ]; then
  die "stack $BOOTSTRAP has no TemplateBucketName/EcrRepositoryUri output"
fi

# main.yaml reads the nested templates from the bucket root (https://BUCKET.s3.REGION.amazonaws.com/NAME.yaml).
say "uploading the nested templates to s3://$BUCKET/"
# cp, not sync: sync skips a changed file whose size and age look unchanged.
awsp s3 cp "$CFN_DIR/" "s3://$BUCKET/" --recursive --only-show-errors --exclude '*' \
  --include network.yaml --include securitygroups.yaml --include cache.yaml --include eks.yaml \
  --include app.yaml --include observability.yaml --include dashboard.yaml --include edge.yaml

# An update keeps every parameter of the stack that this run does not set (UsePreviousValue):
# left out, CloudFormation would fall back to the template default, and a plain re-run would
# e.g. reshard a 1-shard cluster to the default 3 shards. A stack that is created (or recreated
# after a failed creation, which takes no UsePreviousValue) starts from the template defaults.
PREVIOUS="[]"
case $(jq -r '.Stacks[0].StackStatus // ""' <<<"$EXISTING_JSON") in
  CREATE_COMPLETE | UPDATE_COMPLETE | UPDATE_ROLLBACK_COMPLETE | IMPORT_COMPLETE | IMPORT_ROLLBACK_COMPLETE)
    PREVIOUS=$(jq -c --argjson keys "$MAIN_KEYS" '[.Stacks[0].Parameters // [] | .[].ParameterKey
      | select(. as $k | $keys | index($k))]' <<<"$EXISTING_JSON")
    ;;
esac
# JSON, not the shorthand syntax, so list values such as PublicSubnets=a,b,c survive their commas.
PARAMS=$(jq -n --argjson previous "$PREVIOUS" '[$ARGS.positional[] | capture("^(?<k>[^=]+)=(?<v>.*)$")
  | {ParameterKey: .k, ParameterValue: .v}] as $set
  | $set + [$previous[] | select(. as $k | $set | map(.ParameterKey) | index($k) | not)
    | {ParameterKey: ., UsePreviousValue: true}]' --args \
  "TemplateBucket=$BUCKET" "EcrRepositoryUri=$REPO_URI" "ClusterAdminPrincipalArn=$PRINCIPAL" \
  "AvailabilityZones=$ZONES" "CertificateArn=$CERTIFICATE" "CacheMode=$CACHE_MODE" "CacheAuth=$CACHE_AUTH" \
  "LoadBalancerType=$EDGE" \
  ${OVERRIDES[@]+"${OVERRIDES[@]}"})
# NAMED_IAM acknowledges the nested stacks' IAM roles (it covers unnamed ones too); AUTO_EXPAND is
# what the console asks for with nested stacks, and costs nothing when no macro is used.
deploy_stack "$STACK" "$CFN_DIR/main.yaml" \
  --parameters "$PARAMS" \
  --capabilities CAPABILITY_NAMED_IAM CAPABILITY_AUTO_EXPAND

say "outputs of stack $STACK:"
awsp cloudformation describe-stacks --stack-name "$STACK" --output json |
  jq -r '.Stacks[0].Outputs // [] | sort_by(.OutputKey) | .[] | "  \(.OutputKey)\t\(.OutputValue)"'
echo
echo "Next: build and push the image and write the cluster configuration to .deploy/:"
echo "  ./init.sh -p $PROFILE -r $REGION -s $STACK"
