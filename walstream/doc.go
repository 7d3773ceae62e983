// Package walstream receives WAL from PostgreSQL over a physical
// replication connection and stores it in a walkeeper repository.
//
// # Lifecycle
//
// Run owns one replication slot and loops over sessions until its context
// ends or --endpos is reached. A session is one replication connection:
//
//  1. connect (replication=true), IDENTIFY_SYSTEM, read wal_segment_size and
//     the server version, and check walkeeper.json (Repository.Init);
//  2. make sure the slot exists (CREATE_REPLICATION_SLOT ... PHYSICAL
//     RESERVE_WAL when missing) and is usable (physical, not lost);
//  3. store the server timeline's history file (waiting until it is
//     stored);
//  4. choose the start position (position.go) with the archive model
//     (storage/archive): the first segment the archive lacks along the
//     server's timeline path after the WAL stored from the newest backup on
//     (after a failover: the new timeline's segment holding the switch
//     point), else the slot's restart_lsn, else the server's current
//     position; when the server has already removed the WAL the archive
//     lacks, the stream stops with an error naming the range;
//  5. START_REPLICATION and receive: bytes go into the current segment
//     buffer (segment.go); a full segment is handed to the uploader; every
//     --partial-interval (with --synchronous: after every message, unless a
//     store is in flight) what arrived of the unfinished segment is handed
//     over; in a format-3 repository the uploader stores it as one
//     appended range and consolidates ranges by size (uploader.go
//     storeRange), in older ones as the whole ".partial";
//  6. at the end of a timeline, store the last segment as one ".partial"
//     (its ranges folded into it), fetch
//     the next timeline's history and continue on it.
//
// A lost connection ends the session; Run waits until everything queued is
// stored and starts a new session with exponential backoff.
//
// # Shutdown
//
// When Run's context ends, the shutdown clock starts: one deadline,
// ShutdownTimeout later, for everything the shutdown waits on (queueing
// the last partial, the uploader and its retries, the final status update
// and heartbeat, closing the connection). The uploader and heartbeat run
// under the clock's context, not Run's, so they keep storing until the
// deadline and stop at it. WAL not stored by then is named in Run's error;
// the slot keeps it because the flush position never passed it. Standby
// status updates are only sent in COPY mode (streamer.copying).
//
// # Invariant: the slot never passes what is durable
//
// The uploader (uploader.go) stores complete segments two at a time and
// every other job alone, and publishes jobs strictly in LSN order: the end
// LSN of the last job stored with all jobs before it stored. Standby status
// updates report write = received and flush = apply = that published
// position, so the server's slot (whose restart_lsn follows flush) never
// releases WAL the repository does not hold. The status update is built here,
// not with pglogrepl.SendStandbyStatusUpdate, which would replace a zero
// flush position with the write position.
//
// # Storage errors
//
// The uploader retries transient errors, and waits out what a command run
// once stops on (waitOut): a full, over-quota or read-only repository (an
// outage; the slot holds the WAL meanwhile) and a not-found of an object
// it had just listed or found (a race with another writer). Only the
// remaining permanent errors end the stream (giveUp). The failure being
// retried is published to the heartbeat, status and metrics.
//
// # Memory
//
// A segment lives in memory as 1 MiB chunks while it is received and until it
// is stored. The queue between receiver and uploader holds at most
// QueueSegments segments; when storage is slow the receiver waits on the
// queue (still answering the server's keepalives), TCP pushes back, and the
// slot keeps the WAL on the primary. Memory is therefore bounded by about
// (QueueSegments + 3) × wal_segment_size (the queue, two segments being
// stored, the one being received).
//
// # Metrics
//
// Options.Metrics (metrics.go) exports the stream to Prometheus without
// touching the hot path: positions and counters are atomics the receiver,
// the uploader and the heartbeat already keep, read at scrape time. The only
// additions on the receive path are one atomic store of the server's WAL end
// per message and the lag clock (arrival times of WAL not yet stored, one
// sample per 0.1s), both kept by the receiving goroutine alone.
package walstream
