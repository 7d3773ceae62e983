// Package drill proves that a backup restores: it restores one into a
// scratch directory, starts a throwaway PostgreSQL on it, lets it recover
// from the repository and checks what came back. It is `walkeeper drill`.
//
// # Lifecycle
//
//  1. Refuse a scratch directory that is not empty or holds a data
//     directory; choose the backup (restore.Choose: the newest complete one,
//     or --backup ID); find the server binaries of the backup's major
//     version (--pg-bin, or the usual places); compute the WAL the archive
//     lacks between the backup and the end of the archive along the timeline
//     path recovery follows (the archive model's Gaps, as status does).
//  2. Restore into <scratch>/data, every tablespace moved to
//     <scratch>/tablespaces/<oid> (a drill never writes a production
//     tablespace location), with the point-in-time settings of restore
//     (archive_mode off, no primary_conninfo) and --no-sync: the copy is
//     thrown away, a crash of the machine only loses the drill.
//  3. Start postgres itself (not pg_ctl), as the restored files' owner,
//     with every setting that could reach outside the scratch directory
//     overridden on the command line, where no configuration file can undo
//     it: data_directory, hba_file (trust for local connections only),
//     ident_file, external_pid_file, port and a private socket directory,
//     listen_addresses empty (no TCP), archive_mode off and every archive or
//     recovery-end command empty, primary_conninfo and slot empty,
//     synchronous_standby_names empty, shared_preload_libraries empty, ssl
//     off, hot_standby off, autovacuum off, shared_buffers 32MB.
//  4. Wait until the server accepts connections and is out of recovery
//     (end of the archive, or the target with target_action promote), or
//     until it exits or --recovery-timeout passes. Read where replay ended
//     (pg_last_wal_replay_lsn).
//  5. Check: amcheck in every database that accepts connections
//     (bt_index_check of every valid B-tree index, verify_heapam of every
//     table and materialized view with its TOAST, when the server has it;
//     the extension is created in the throwaway copy, and a server without
//     it is reported and skipped); the --check-sql statements, each that
//     returns rows must return at least one.
//  6. Stop the server (SIGINT, then SIGKILL after 30 s) and remove what the
//     drill created, unless --keep.
//
// # Outcome
//
// Report says what was done and found: restore time, recovery time, WAL
// replayed, time to a usable server (the recovery time objective a drill
// measures) and the problems. Run returns an error only when the drill
// could not run (flags, binaries, repository unreachable, scratch unusable:
// exit 1); a backup that does not restore, a recovery that fails or stops at
// missing WAL, and failed checks are problems in the report (exit 5).
//
// # Invariants
//
//   - Nothing outside the scratch directory (and a private socket directory
//     under the system's temporary directory) is written, and no
//     connection leaves the machine but the repository's.
//   - The throwaway server can never archive into the repository: restore's
//     point-in-time rule plus archive_mode off on the command line.
package drill
