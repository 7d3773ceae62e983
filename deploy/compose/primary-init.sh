#!/bin/bash
# Runs once, when the primary's data directory is created: the replication
# role walkeeper and the replicas use, and a pg_hba line that lets them in.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<-SQL
	CREATE ROLE walkeeper LOGIN REPLICATION PASSWORD '${WALKEEPER_PASSWORD}';
SQL
echo "host replication walkeeper all scram-sha-256" >>"$PGDATA/pg_hba.conf"
