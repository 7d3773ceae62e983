// Package replication holds what walstream and basebackup share about
// PostgreSQL replication connections: connecting with replication=true,
// identifying the server (system identifier, timeline, wal_segment_size,
// version, standby or not), LSN parsing, slot name rules, and turning server
// and network errors into one-line messages with a hint, marked permanent
// when reconnecting cannot fix them. Passwords never appear in its errors.
package replication
