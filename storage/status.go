package storage

import (
	"context"
	"errors"
	"strings"
	"time"
)

// StreamStatus is the heartbeat a running `walkeeper stream` writes to
// streams/<slot>.json every StreamHeartbeat: backups use it to know that a
// stream archives WAL into this repository, and status reports it.
type StreamStatus struct {
	Slot             string    `json:"slot"`
	Host             string    `json:"host"`
	PID              int       `json:"pid"`
	SystemIdentifier string    `json:"system_identifier"`
	Timeline         uint32    `json:"timeline"`
	Received         string    `json:"received_lsn"`
	Flushed          string    `json:"flushed_lsn"`
	UpdatedAt        time.Time `json:"updated_at"`
	Stopped          bool      `json:"stopped,omitempty"`
	// StorageError is the failure to store WAL the stream is retrying
	// (a full or read-only repository, an unreachable S3 server), since
	// StorageErrorSince; empty while storing works. The slot holds the WAL
	// meanwhile. The heartbeat carries it when the repository still takes
	// a small object; when it takes none, the heartbeat ages instead.
	StorageError      string     `json:"storage_error,omitempty"`
	StorageErrorSince *time.Time `json:"storage_error_since,omitempty"`
}

// StreamHeartbeat is how often a stream rewrites its status.
const StreamHeartbeat = 10 * time.Second

// Live reports whether the stream was alive recently: not stopped and
// heard from within three heartbeats.
func (s StreamStatus) Live(now time.Time) bool {
	return !s.Stopped && now.Sub(s.UpdatedAt) < 3*StreamHeartbeat
}

// Streams reads every stream status in the repository.
func (r *Repository) Streams(ctx context.Context) ([]StreamStatus, error) {
	var out []StreamStatus
	err := r.b.List(ctx, StreamsPrefix, func(o ObjectInfo) error {
		if !strings.HasSuffix(o.Key, ".json") {
			return nil
		}
		var s StreamStatus
		if err := r.ReadJSON(ctx, o.Key, &s); err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			return err
		}
		out = append(out, s)
		return nil
	})
	return out, err
}
