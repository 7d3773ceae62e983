#!/bin/bash
# Backups on a schedule without cron in the container: one shortly after
# start (the stream is streaming by then, so the backup's WAL comes from
# it), then every BACKUP_INTERVAL seconds, each followed by retention.
set -uo pipefail
interval=${BACKUP_INTERVAL:-86400}
retain=${BACKUP_RETAIN:-7}
sleep "${BACKUP_DELAY:-30}"
while true; do
	walkeeper backup && walkeeper delete --retain "$retain"
	sleep "$interval"
done
