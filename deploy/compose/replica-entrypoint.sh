#!/bin/bash
# A read replica seeded from the repository: on first start (empty data
# directory) wait for a complete backup, `walkeeper restore --as-replica`
# (standby.signal, primary_conninfo, its own slot on the primary,
# restore_command = walkeeper wal-fetch), then run PostgreSQL. It catches up
# from the repository and then streams from the primary.
set -euo pipefail
: "${REPLICA_SLOT:?set REPLICA_SLOT to a slot name for this replica}"
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"

# primary_conninfo carries no password: libpq reads it from this pgpass.
pass=/var/lib/postgresql/.pgpass
echo "*:*:*:walkeeper:${WALKEEPER_PASSWORD}" >"$pass"
chown postgres:postgres "$pass" && chmod 600 "$pass"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	until gosu postgres walkeeper list --json 2>/dev/null | grep -q '"status": *"complete"'; do
		echo "replica: waiting for a complete backup in $WALKEEPER_REPO"
		sleep 5
	done
	gosu postgres walkeeper restore --target-dir "$PGDATA" --as-replica --slot "$REPLICA_SLOT" --force
fi
exec gosu postgres postgres -D "$PGDATA" -c listen_addresses='*'
