# shellcheck shell=bash
# Sourced by deploy.sh and destroy.sh after scripts/common.sh, never run: follows a CloudFormation
# stack operation to its end on a loop of its own and prints it as it happens, one line per
# resource event of the stack and of its nested stacks:
#   [12:40] 3/8  CacheStack/ReplicationGroup  AWS::ElastiCache::ReplicationGroup  CREATE_IN_PROGRESS
# (elapsed time, the stack's own resources complete out of its total, the nested stack and its
# resource). Why not `aws cloudformation wait`: its waiters give up after 120 polls of 30 s, one
# hour, while the nested stacks here run one after another (a cluster-mode cache can come close),
# and it prints nothing while it waits. This loop has no cap; Ctrl-C stops watching, not the stack.
# Needs WORK (make_work_dir) and awsp; STACK_POLL_SECONDS (default 10) sets the pause between polls,
# STACK_QUIET_SECONDS (default 60) how long without an event before a line says what still runs.
# Works with bash 3.2 (macOS) and GNU/BSD tools.

# Prints how many resources a template declares: the two-space-indented logical ids under its
# top-level Resources key (the templates here are written so; tests/infra check the count against
# the parsed templates). The stacks deploy.sh watches declare no conditional resources, so this
# is what a creation makes.
template_resource_count() {
  awk '/^Resources:/ { inside = 1; next }
    /^[^ #]/ { inside = 0 }
    inside && /^  [A-Za-z0-9]+:/ { count++ }
    END { print count + 0 }' "$1"
}

# Prints the id of the stack's newest event (empty when it has none): what an update or a
# deletion started after, so that only its own events are shown.
newest_event_id() {
  awsp cloudformation describe-stack-events --stack-name "$1" --output json |
    jq -r '.StackEvents[0].EventId // ""'
}

# follow_stack STACK_ID VERB TOTAL [AFTER_EVENT_ID]
# Polls the stack until it leaves every *_IN_PROGRESS state; VERB is create, update or delete,
# TOTAL the stack's own resources (the template's for create and update, the stack's for delete),
# AFTER_EVENT_ID the newest event before this operation (none for a creation). Returns 0 when the
# operation succeeded; otherwise prints the first resource that failed, with its reason, and
# returns 1.
follow_stack() {
  local stack=$1 verb=$2 total=$3 after=${4:-} started now status answer events nested id
  local interval=${STACK_POLL_SECONDS:-10} misses=0 quiet_since line
  started=$(date +%s)
  quiet_since=$started
  printf '[]' >"$WORK/seen.json"
  printf '[]' >"$WORK/op-events.json"
  trap 'printf "\n%s: stopped watching; the stack operation goes on (CloudFormation console)\n" "$PROG" >&2; exit 130' INT
  while :; do
    if ! answer=$(awsp cloudformation describe-stacks --stack-name "$stack" --output json 2>"$WORK/err") ||
      ! events=$(awsp cloudformation describe-stack-events --stack-name "$stack" --output json 2>>"$WORK/err"); then
      # A failed poll (throttling, a network blip) is tried again: the stack goes on regardless.
      misses=$((misses + 1))
      [ "$misses" -lt 10 ] || {
        cat "$WORK/err" >&2
        die "could not read stack $stack ten times in a row; it goes on in AWS: see the CloudFormation console"
      }
      sleep "$interval"
      continue
    fi
    misses=0
    status=$(jq -r '.Stacks[0].StackStatus' <<<"$answer")
    # This operation's events of the stack itself: everything newer than AFTER_EVENT_ID.
    jq --arg after "$after" '.StackEvents
      | (first(range(length) as $i | select(.[$i].EventId == $after) | $i) // length) as $stop
      | .[:$stop]' <<<"$events" >"$WORK/root-events.json"
    # Nested stacks this operation touches: poll those in progress, and once more those that
    # finished since the last poll, so their last events are shown too.
    nested=$(jq -r --slurpfile seen "$WORK/seen.json" --arg root "$stack" '
      map(select(.ResourceType == "AWS::CloudFormation::Stack" and (.PhysicalResourceId // "") != ""
        and .PhysicalResourceId != $root and .PhysicalResourceId != .StackId))
      | group_by(.PhysicalResourceId) | map(max_by(.Timestamp))
      | map(select((.ResourceStatus | test("IN_PROGRESS$")) or (.EventId | IN($seen[0][]) | not)))
      | .[].PhysicalResourceId' "$WORK/root-events.json")
    jq '.' "$WORK/root-events.json" >"$WORK/poll.json"
    for id in $nested; do
      awsp cloudformation describe-stack-events --stack-name "$id" --output json 2>/dev/null |
        jq --slurpfile root "$WORK/root-events.json" '
          ($root[0] | map(.Timestamp) | min // "") as $start
          | .StackEvents | map(select(.Timestamp >= $start))' >"$WORK/nested.json" || continue
      jq -s '.[0] + .[1]' "$WORK/poll.json" "$WORK/nested.json" >"$WORK/poll-next.json"
      mv "$WORK/poll-next.json" "$WORK/poll.json"
    done
    now=$(date +%s)
    # The new events, oldest first, each with the stack's own progress at that point: its
    # resources whose latest event is a success.
    jq -r --slurpfile seen "$WORK/seen.json" --slurpfile root "$WORK/root-events.json" \
      --arg stack "$stack" --arg verb "$verb" --argjson total "$total" \
      --argjson elapsed $((now - started)) '
      ($root[0] | map(select(.ResourceType == "AWS::CloudFormation::Stack"
        and (.PhysicalResourceId // "") != "" and .PhysicalResourceId != .StackId))
        | map({key: .PhysicalResourceId, value: (.LogicalResourceId + "/")}) | from_entries) as $names
      | (if $verb == "delete" then "^DELETE_(COMPLETE|SKIPPED)$"
        else "^(CREATE|UPDATE|IMPORT)_COMPLETE$" end) as $success
      | def own: .StackId == $stack and .PhysicalResourceId != .StackId;
      def clock: tostring | if length < 2 then "0" + . else . end;
      (map(select(own and (.EventId | IN($seen[0][])))) | sort_by(.Timestamp)
        | reduce .[] as $e ({}; .[$e.LogicalResourceId] = $e.ResourceStatus)) as $before
      | map(select(.EventId | IN($seen[0][]) | not)) | sort_by(.Timestamp)
      | foreach .[] as $e ({state: $before};
          if ($e | own) then .state[$e.LogicalResourceId] = $e.ResourceStatus else . end
          | .done = ([.state[] | select(test($success))] | length);
          "  [\($elapsed / 60 | floor | clock):\($elapsed % 60 | clock)] \(.done)/\($total)  "
          + "\($names[$e.StackId] // "")\($e.LogicalResourceId)  \($e.ResourceType)  \($e.ResourceStatus)"
          + (if ($e.ResourceStatus | test("FAILED")) then "  \($e.ResourceStatusReason // "")" else "" end))
      ' "$WORK/poll.json" >"$WORK/lines.txt"
    if [ -s "$WORK/lines.txt" ]; then
      cat "$WORK/lines.txt"
      quiet_since=$now
    elif [ $((now - quiet_since)) -ge "${STACK_QUIET_SECONDS:-60}" ]; then
      # Minutes without an event (an EKS cluster takes about ten): say what is still running.
      line=$(jq -r '[group_by(.StackId + .LogicalResourceId)[] | max_by(.Timestamp)
        | select(.PhysicalResourceId != .StackId and (.ResourceStatus | test("IN_PROGRESS$")))
        | .LogicalResourceId] | join(", ")' "$WORK/poll.json")
      printf '  [%02d:%02d] still in progress: %s\n' $(((now - started) / 60)) $(((now - started) % 60)) "${line:-$status}"
      quiet_since=$now
    fi
    jq -s '[.[0][], (.[1][] | .EventId)] | unique' "$WORK/seen.json" "$WORK/poll.json" >"$WORK/seen-next.json"
    mv "$WORK/seen-next.json" "$WORK/seen.json"
    jq -s '.[0] + .[1] | unique_by(.EventId)' "$WORK/op-events.json" "$WORK/poll.json" >"$WORK/op-next.json"
    mv "$WORK/op-next.json" "$WORK/op-events.json"
    case $status in
      *_IN_PROGRESS) sleep "$interval" ;;
      *) break ;;
    esac
  done
  trap 'exit 130' INT # back to make_work_dir's
  case $verb:$status in
    create:CREATE_COMPLETE | update:UPDATE_COMPLETE | delete:DELETE_COMPLETE)
      printf '  [%02d:%02d] %s\n' $(((now - started) / 60)) $(((now - started) % 60)) "$status"
      return 0
      ;;
  esac
  # The first failure in time is the cause; the failures after it are CloudFormation cancelling
  # the rest and the parent stacks reporting the nested one.
  jq -r '(map(select(.ResourceType == "AWS::CloudFormation::Stack"
      and (.PhysicalResourceId // "") != "" and .PhysicalResourceId != .StackId))
      | map({key: .PhysicalResourceId, value: (.LogicalResourceId + "/")}) | from_entries) as $names
    | map(select(.ResourceStatus | test("FAILED$"))) | sort_by(.Timestamp) | first
    | if . == null then "none of its resources reported a failure"
      else "\($names[.StackId] // "")\(.LogicalResourceId) (\(.ResourceType)) \(.ResourceStatus): \(.ResourceStatusReason // "no reason given")" end' \
    "$WORK/op-events.json" | sed "s/^/$PROG: stack ended $status; first failure: /" >&2
  return 1
}

# Deletes the stack (by name, if it exists) and follows the deletion; returns 1 if the deletion
# fails, 2 if CloudFormation refuses to start it (its error is printed).
delete_and_follow() {
  local json id total after
  json=$(stack_json "$1") || exit 1
  [ -n "$json" ] || return 0
  id=$(jq -r '.Stacks[0].StackId' <<<"$json")
  total=$(awsp cloudformation describe-stack-resources --stack-name "$id" --output json |
    jq '[.StackResources[] | select(.ResourceStatus != "DELETE_COMPLETE")] | length')
  after=$(newest_event_id "$id")
  # Called as `delete_and_follow ... || die`, where errexit does not reach: a refused deletion
  # (permissions, termination protection) must not be "followed".
  awsp cloudformation delete-stack --stack-name "$id" || return 2
  follow_stack "$id" delete "$total" "$after"
}
