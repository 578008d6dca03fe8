# shellcheck shell=bash
# Sourced by deploy.sh, init.sh, destroy.sh and scripts/pipeline.sh, never run: what they do alike (messages,
# prerequisite checks and their install hints, the region, every aws call, the scratch directory,
# reading stacks), kept in one place so the scripts cannot drift apart.
# Contract: the sourcing script sets PROG (its name, for messages) and defines usage(); PROFILE and
# REGION (empty: take the profile's) are set by its option parsing (common_option) before the AWS
# helpers run.
# Sourcing it only defines functions, so it is safe under the scripts' `set -euo pipefail`.
# Works with bash 3.2 (macOS) and GNU/BSD tools.

die() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

usage_error() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  usage >&2
  exit 2
}

# The getopts answers every script gives alike: -p PROFILE, -r REGION, -s STACK_NAME (into the
# variables of those names, which the script sets to their defaults first), -h, a missing value,
# an unknown option. Call it from the loop's last case with getopts' variable:
# `*) common_option "$opt" ;;`.
# shellcheck disable=SC2034 # STACK is read by the sourcing script, not by a helper here.
common_option() {
  case $1 in
    p) PROFILE=$OPTARG ;;
    r) REGION=$OPTARG ;;
    s) STACK=$OPTARG ;;
    h)
      usage
      exit 0
      ;;
    :) usage_error "option -$OPTARG needs a value" ;;
    *) usage_error "unknown option -$OPTARG" ;;
  esac
}

say() {
  printf '==> %s\n' "$*"
}

# Names every missing tool with its install hint, so one run lists all of them; fails if any is
# missing. For prerequisites checked together with a script's own ones.
check_tools() {
  local tool hint status=0
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 && continue
    case $tool in
      aws) hint='aws (AWS CLI) is missing: install it, see https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html (or: pip install awscli)' ;;
      kubectl) hint='kubectl is missing: install it, see https://kubernetes.io/docs/tasks/tools/ (or: brew install kubectl)' ;;
      jq) hint='jq is missing: install it (apt-get install jq / brew install jq / https://jqlang.org/download/)' ;;
      *) hint="$tool is missing: install it" ;;
    esac
    printf '%s: %s\n' "$PROG" "$hint" >&2
    status=1
  done
  return "$status"
}

# check_tools, then exit 1 before anything runs when a tool is missing.
require_tools() {
  check_tools "$@" || exit 1
}

# Without -r, the profile's own region; none at all is fatal.
resolve_region() {
  if [ -z "$REGION" ]; then
    REGION=$(aws configure get region --profile "$PROFILE" || true)
  fi
  [ -n "$REGION" ] || die "no region: pass -r REGION or set one with: aws configure set region REGION --profile $PROFILE"
}

# Every AWS call goes through here so none can miss the profile or the region.
awsp() {
  aws --profile "$PROFILE" --region "$REGION" "$@"
}

# WORK: a private scratch directory, removed on exit, for the error output of the calls whose
# failure is inspected (kept apart from their JSON output) and for files passed to aws.
# FAILURE_NOTE, when set, is printed last if the script fails (what a failure at that point left).
# Killed by a signal, bash runs the EXIT trap with the last command's status (often 0): INT and
# TERM exit with their own status instead, so that the note is printed then too.
make_work_dir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/${PROG%.sh}.XXXXXX")
  FAILURE_NOTE=""
  trap at_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
at_exit() {
  local status=$?
  rm -rf "$WORK"
  [ "$status" -eq 0 ] || [ -z "$FAILURE_NOTE" ] || printf '%s: %s\n' "$PROG" "$FAILURE_NOTE" >&2
}

# Prints describe-stacks JSON, or nothing when the stack does not exist; any other error is fatal.
# Called as $(stack_json NAME): add `|| exit 1` where errexit does not reach (inside another $()).
stack_json() {
  local out
  if out=$(awsp cloudformation describe-stacks --stack-name "$1" --output json 2>"$WORK/err"); then
    printf '%s\n' "$out"
  elif ! grep -q 'does not exist' "$WORK/err"; then
    cat "$WORK/err" >&2
    die "could not read stack $1"
  fi
}

# Prints one output (empty when absent) from describe-stacks JSON given as $1.
stack_output() {
  jq -r --arg k "$2" '.Stacks[0].Outputs // [] | .[] | select(.OutputKey == $k) | .OutputValue' <<<"$1"
}

# Prints the FAILED events of the stack's latest operation, then those of the nested stacks that
# failed in it, because the parent only says "Embedded stack ... was not successfully created".
print_failed_events() {
  local stack=$1 depth=${2:-0} events nested
  events=$(awsp cloudformation describe-stack-events --stack-name "$stack" --output json) || return 0
  # Events come newest first; the latest operation starts at the stack's own "User Initiated" event.
  events=$(jq '.StackEvents
    | (first(range(length) as $i | select(.[$i].ResourceStatusReason == "User Initiated"
        and .[$i].PhysicalResourceId == .[$i].StackId) | $i) // length) as $last
    | .[:$last + 1] | map(select(.ResourceStatus | test("FAILED")))' <<<"$events")
  printf '%s: failed events of stack %s:\n' "$PROG" "$stack" >&2
  jq -r '.[] | "  \(.Timestamp)  \(.LogicalResourceId)  \(.ResourceType)  \(.ResourceStatus)  \(.ResourceStatusReason // "")"' <<<"$events" >&2
  [ "$depth" -lt 3 ] || return 0
  nested=$(jq -r '.[] | select(.ResourceType == "AWS::CloudFormation::Stack"
    and (.PhysicalResourceId // "") != "" and .PhysicalResourceId != .StackId) | .PhysicalResourceId' <<<"$events" | sort -u)
  local id
  for id in $nested; do
    print_failed_events "$id" $((depth + 1))
  done
}
