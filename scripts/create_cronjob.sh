#!/usr/bin/env bash
# Schedule the weekly run of the Bodywork pipeline (train_model >> serve_model) on the cluster
# that the current kubeconfig context points at, and create the secrets its stages read.
#
#   export AWS_DEFAULT_REGION=eu-west-2
#   export TRAIN_AWS_ACCESS_KEY_ID=... TRAIN_AWS_SECRET_ACCESS_KEY=...  # iam_policy_train.json
#   export SERVE_AWS_ACCESS_KEY_ID=... SERVE_AWS_SECRET_ACCESS_KEY=...  # iam_policy_serve.json
#   export TTD_API_KEY="$(openssl rand -hex 32)"      # the key clients send as X-API-Key
#   bash scripts/create_cronjob.sh
#
# Settings (environment, all optional):
#   GIT_URL         repository Bodywork clones (default: this clone's origin, as an https URL)
#   GIT_BRANCH      branch to deploy (default: master)
#   SCHEDULE        cron schedule in the cluster's time zone, UTC on EKS (default: 30 23 * * 5,
#                   Fridays 23:30, half an hour after the 23:00 tranche delivery)
#   CRONJOB_NAME    default: time-to-dispatch-weekly
#   RETRIES         workflow retries (default: 2)
#   DRY_RUN=1       print the bodywork commands instead of running them (no secrets printed)
#
# Needs the Bodywork 3.0.12 CLI (installed as constraints/bodywork.txt says) and a
# kubeconfig for the EKS cluster (aws eks update-kubeconfig --name CLUSTER). The AWS credentials
# given here are the stages' own (least privilege), not an admin's; the service's are read-only.
set -euo pipefail

cd "$(dirname "$0")/.."

# The secrets group and names must match bodywork.yaml's.
SECRETS_GROUP="$(sed -n 's/^  secrets_group: *\([A-Za-z0-9.-]*\).*/\1/p' bodywork.yaml)"
SCHEDULE="${SCHEDULE:-30 23 * * 5}"
CRONJOB_NAME="${CRONJOB_NAME:-time-to-dispatch-weekly}"
GIT_BRANCH="${GIT_BRANCH:-master}"
RETRIES="${RETRIES:-2}"

if [ -z "${GIT_URL:-}" ]; then
    origin="$(git config --get remote.origin.url || true)"
    # git@github.com:org/repo.git -> https://github.com/org/repo.git (no SSH key needed).
    GIT_URL="$(echo "$origin" | sed -E 's#^git@([^:]+):#https://\1/#')"
fi

missing=()
for name in AWS_DEFAULT_REGION TRAIN_AWS_ACCESS_KEY_ID TRAIN_AWS_SECRET_ACCESS_KEY \
        SERVE_AWS_ACCESS_KEY_ID SERVE_AWS_SECRET_ACCESS_KEY TTD_API_KEY; do
    [ -n "${!name:-}" ] || missing+=("$name")
done
[ -n "$GIT_URL" ] || missing+=("GIT_URL (no git remote 'origin' to default to)")
[ -n "$SECRETS_GROUP" ] || missing+=("pipeline.secrets_group in bodywork.yaml")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "create_cronjob: set ${missing[*]} first (see the comment at the top of $0)" >&2
    exit 2
fi

run() {
    # Secret values are replaced by *** when echoed.
    echo "+ $(printf '%q ' "$@" | sed -E 's/(--data [A-Z_]+)=[^ ]*/\1=***/g')"
    if [ "${DRY_RUN:-0}" != "1" ]; then
        "$@"
    fi
}

# Secrets live in Bodywork's namespace under the group; each deployment copies the group into the
# pipeline's namespace, where bodywork.yaml's stages read them as environment variables.
put_secret() {
    local name="$1"
    shift
    local data=()
    for pair in "$@"; do
        data+=(--data "$pair")
    done
    if [ "${DRY_RUN:-0}" != "1" ] \
        && bodywork get secret "$name" --group "$SECRETS_GROUP" 2>/dev/null | grep -q "$name"; then
        run bodywork update secret "$name" --group "$SECRETS_GROUP" "${data[@]}"
    else
        run bodywork create secret "$name" --group "$SECRETS_GROUP" "${data[@]}"
    fi
}

run bodywork configure-cluster
put_secret aws-train-credentials \
    "AWS_ACCESS_KEY_ID=$TRAIN_AWS_ACCESS_KEY_ID" \
    "AWS_SECRET_ACCESS_KEY=$TRAIN_AWS_SECRET_ACCESS_KEY" \
    "AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION"
put_secret aws-serve-credentials \
    "AWS_ACCESS_KEY_ID=$SERVE_AWS_ACCESS_KEY_ID" \
    "AWS_SECRET_ACCESS_KEY=$SERVE_AWS_SECRET_ACCESS_KEY" \
    "AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION"
put_secret api-key "TTD_API_KEY=$TTD_API_KEY"
run bodywork create cronjob "$GIT_URL" --branch "$GIT_BRANCH" --schedule "$SCHEDULE" \
    --name "$CRONJOB_NAME" --retries "$RETRIES" --group "$SECRETS_GROUP"

echo "create_cronjob: '$CRONJOB_NAME' runs $GIT_URL@$GIT_BRANCH at '$SCHEDULE';" \
     "see it with: bodywork get cronjobs; history: bodywork get cronjob $CRONJOB_NAME --history"
