// Package basebackup takes base backups over PostgreSQL's replication
// protocol into the repository and keeps the repository's catalog of
// backups honest.
//
// Run sends BASE_BACKUP (with a manifest, checksums verified by the server)
// and streams each tablespace's tar archive through compression into
// objects under backups/<ID>/, never holding an archive in memory: the
// archive is cut at entry boundaries into chunks of bounded size (chunk.go,
// archive_layout 2), and a file too large for a chunk is stored as parts,
// each starting a chunk (archive_layout 3). It writes
// started.json first and backup.json last: backup.json is the commit marker,
// written only once every object is stored and the WAL from the backup's
// start to its stop LSN is in the repository (streamed by `walkeeper stream`,
// or included in the backup), so a backup listed as complete is restorable
// from the repository alone.
//
// List reads the catalog, oldest first by start time (never by ID order).
// Retention deletes whole backups, oldest first, and then only the WAL that
// no kept backup needs, taking backup.json away first so an interrupted
// delete leaves an incomplete backup rather than a broken complete one.
// Verify re-reads every object against its checksum, each backup against
// backup.json and its manifest, and the WAL from every backup's start to the
// end of the newest timeline for gaps along the timeline path
// (storage/archive decides what the archive holds and needs).
//
// docs/backups.md and docs/retention.md record the decisions.
package basebackup
