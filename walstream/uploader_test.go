package walstream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
	"github.com/walkeeper/walkeeper/storage/archive/archivetest"
)

// vanishing deletes one object and reports it missing the first time it
// is read: what the uploader sees when retention, wal-push or another
// stream removes or replaces an object between its lookup and its read.
type vanishing struct {
	storage.Backend
	key  string
	done atomic.Bool
}

func (v *vanishing) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if key == v.key && v.done.CompareAndSwap(false, true) {
		if err := v.Backend.Delete(ctx, key); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("get %s: %w", key, storage.ErrNotFound)
	}
	return v.Backend.Get(ctx, key, off, n)
}

// TestUploaderSurvivesVanishedObject: a segment or history file the
// uploader finds already stored disappears before it can compare the
// content. That is a race, not a reason to stop streaming: the uploader
// must look again and store the object.
func TestUploaderSurvivesVanishedObject(t *testing.T) {
	const segSize = 1 << 20
	seg := newSegment(1, LSN(3*segSize), segSize)
	seg.append(bytes.Repeat([]byte("wal!"), segSize/4))
	history := []byte("1\t0/3000000\tno recovery target specified\n")
	for _, tc := range []struct {
		name    string
		file    string
		content []byte
		job     job
	}{
		{"segment", seg.name(), nil, job{kind: jobSegment, seg: seg, snap: seg.snapshot(seg.size), end: seg.end()}},
		{"history", "00000002.history", history, job{kind: jobHistory, name: "00000002.history", content: history}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			mem := storage.NewMemory()
			repo := storage.NewRepository(mem, storage.CodecZstd)
			content := tc.content
			if content == nil {
				content, _ = io.ReadAll(seg.snapshot(seg.size).reader())
			}
			// Already stored (by wal-push, say) ...
			w, err := repo.Create(ctx, archivetest.WALKey(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			w.Write(content)
			if _, err := w.Close(); err != nil {
				t.Fatal(err)
			}
			// ... and gone when the uploader reads it.
			key := archivetest.WALKey(tc.file) + repo.Codec().Ext()
			racy := storage.NewRepository(&vanishing{Backend: mem, key: key}, storage.CodecZstd)
			u := newUploader(racy, slog.Default(), 2)
			u.process(ctx, tc.job)
			if err := u.fatal(); err != nil {
				t.Fatalf("the uploader gave up: %v", err)
			}
			o, err := archive.Find(ctx, repo, tc.file)
			if err != nil {
				t.Fatalf("%s is not stored: %v", tc.file, err)
			}
			if same, err := repo.SameContent(ctx, o.Key, bytes.NewReader(content)); err != nil || !same {
				t.Fatalf("%s stored with other content (%v)", tc.file, err)
			}
			if tc.job.end != 0 && LSN(u.flushed.Load()) != tc.job.end {
				t.Errorf("flushed %s, want %s", LSN(u.flushed.Load()), tc.job.end)
			}
		})
	}
}
