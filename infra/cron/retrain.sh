#!/bin/sh
# Retrain and act on `atrx retrain`'s exit code; used by the Kubernetes CronJob (as a ConfigMap)
# and by plain crontab (infra/cron/crontab.example).
#
#   0  promoted  -> `atrx materialize` (the new model's views), then $ATRX_ON_PROMOTE if set
#                   (e.g. "systemctl restart atrx-serve"); exit 0, or 1 if a follow-up failed
#   10 kept      -> exit 0 (the production model stays; nothing to reload)
#   2  bad input -> exit 2 (do not retry: fix the data or the study file)
#   *  failure   -> exit 1
#
# Environment: ATRX_HOME (required), ATRX_DECISION_FILE (optional: the decision is written there),
# ATRX_ON_PROMOTE (optional command), ATRX_BIN (default: atrx). Extra arguments go to `atrx retrain`.
set -u
: "${ATRX_HOME:?set ATRX_HOME to the workspace}"
ATRX_BIN="${ATRX_BIN:-atrx}"

"$ATRX_BIN" retrain --home "$ATRX_HOME" "$@"
rc=$?
case "$rc" in
  0)
    decision=promoted
    if ! "$ATRX_BIN" materialize --home "$ATRX_HOME"; then
      echo "retrain.sh: promoted, but materializing the online store failed" >&2
      decision=failed
      rc=1
    fi
    ;;
  10)
    decision=kept
    rc=0
    ;;
  2)
    decision=bad_input
    ;;
  *)
    decision=failed
    rc=1
    ;;
esac

if [ -n "${ATRX_DECISION_FILE:-}" ]; then
  printf '%s\n' "$decision" > "$ATRX_DECISION_FILE"
fi
if [ "$decision" = promoted ] && [ -n "${ATRX_ON_PROMOTE:-}" ]; then
  if ! sh -c "$ATRX_ON_PROMOTE"; then
    echo "retrain.sh: promoted, but ATRX_ON_PROMOTE failed" >&2
    rc=1
  fi
fi
echo "retrain.sh: decision ${decision}, exit ${rc}"
exit "$rc"
