// Package restore brings a base backup back from the repository and
// configures recovery; it also serves WAL to PostgreSQL (wal-fetch, with
// the archive model's lookup). Taking WAL from PostgreSQL (wal-push) is
// ingest and lives beside the archive it writes, in storage/archive.
//
// # Restore lifecycle
//
//  1. Choose a complete backup (backup.json present): the newest by start
//     time, or the one named; for a --target-time or --target-lsn the newest
//     that ends before the target on the timeline recovery follows
//     (choose.go). A target no backup can reach is refused here, before
//     anything is downloaded or written.
//  2. Check that the restored server's OS user can run restore_command (the
//     binary, a local repository: access.go), and the target directory (and
//     every tablespace location): missing or empty, unless --force, which
//     empties it first, or --delta (below). Nothing is written before these
//     checks pass.
//  3. Download and decompress the archives in parallel, each a stream from
//     the repository through the tar reader into files: bounded memory,
//     checksums verified as the bytes arrive. A file stored as parts
//     (archive_layout 3, parts.go) is written part by part at each part's
//     offset by whichever workers hold its chunks; the one completing it
//     commits it, and a file still missing a part at the end is damage.
//  4. Extract safely (extract.go): every entry must stay inside its root
//     (the target directory or its tablespace location); "..", absolute
//     paths, links pointing outside and writes through links are refused.
//     global/pg_control is held back.
//  5. Recreate pg_tblspc links from tablespace_map (relocated with
//     --tablespace-map OLD=NEW), store backup_manifest for pg_verifybackup,
//     write recovery.signal or standby.signal and the recovery settings.
//  6. Make everything durable, then write global/pg_control last. Until
//     then PostgreSQL refuses to start the directory, so a restore that
//     failed or was killed can never be started by mistake; a failed restore
//     also removes what it wrote and leaves WALKEEPER_RESTORE_FAILED
//     explaining why.
//
// # Delta restore
//
// With Options.Delta (restore --delta) the target is an existing data
// directory of the same cluster (a fallen replica, the old primary after a
// failover) made equal to the backup (delta.go): a live postmaster.pid or
// another system identifier is refused before anything is written;
// global/pg_control is removed (durably) before any other change and a
// marker naming the cluster written; whatever the backup's manifest does
// not list is removed (what PostgreSQL excludes from backups included);
// files whose size and checksum match the manifest are kept (checksummed by
// a bounded pool, fsynced), the rest written by the archives' extraction;
// pg_control last, as always. A failed resync removes nothing and leaves
// the marker; running it again finishes it. Result.Wrote counts what any
// restore wrote, Result.Delta what a resync kept and removed.
//
// # Durability
//
// Every change goes through one data-directory writer (datadir.go): it
// owns each entry for the server's OS user, fsyncs every file it wrote
// (a pool of syncers runs beside extraction), fsyncs every directory whose
// entries changed, and only then writes pg_control, fsyncs it and fsyncs
// global/. A crash of the machine after "restore complete" cannot leave
// pg_control beside files that never reached the disk. Its file-system
// calls go through an interface, so a test records their order.
package restore
