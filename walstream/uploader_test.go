package walstream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
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

// TestUploaderRangesStayFewAndExact: in a format-3 repository, 500 small
// flushes of one segment each store only what arrived, consolidation
// keeps the segment's ranges below rangeFanout per level, what they hold
// is exactly the received prefix at every step, and storing the complete
// segment removes them all.
func TestUploaderRangesStayFewAndExact(t *testing.T) {
	const segSize = 1 << 20
	ctx := context.Background()
	mem := storage.NewMemory()
	repo := storage.NewRepository(mem, storage.CodecNone)
	if _, err := repo.Init(ctx, storage.Config{SystemIdentifier: "1", PGMajorVersion: 15, WALSegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	u := newUploader(repo, slog.New(slog.DiscardHandler), 2)
	u.ranges.Store(true)
	seg := newSegment(1, LSN(3*segSize), segSize)
	name := seg.name()
	received := make([]byte, 0, segSize)
	for i := range 500 {
		chunk := bytes.Repeat([]byte{byte(i)}, 100+i%37)
		seg.append(chunk)
		received = append(received, chunk...)
		if err := u.store(ctx, job{kind: jobPartial, seg: seg, snap: seg.snapshot(seg.size), end: seg.end()}); err != nil {
			t.Fatal(err)
		}
		if i%50 != 49 {
			continue
		}
		ix, err := archive.Load(ctx, repo, segSize)
		if err != nil {
			t.Fatal(err)
		}
		o, ok := ix.PartialOf(1, 3)
		if !ok {
			t.Fatal("nothing stored of the segment")
		}
		if levels := 4; len(o.Ranges) > levels*(rangeFanout-1) {
			t.Errorf("after %d flushes: %d ranges", i+1, len(o.Ranges))
		}
		f, err := archive.ForFetch(ctx, repo, name+".partial")
		if err != nil {
			t.Fatal(err)
		}
		w, err := os.CreateTemp(t.TempDir(), "prefix")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Unfinished.WriteTo(ctx, repo, w); err != nil {
			t.Fatal(err)
		}
		w.Close()
		got, _ := os.ReadFile(w.Name())
		if !bytes.Equal(got, received) {
			t.Fatalf("after %d flushes the ranges hold %d bytes, not the %d received", i+1, len(got), len(received))
		}
	}
	// Each byte is written once per level at most: 500 flushes of ~120
	// bytes are 3 levels of 8.
	t.Logf("%d flushes of %d bytes stored %d bytes", 500, len(received), u.stats.StoredBytes.Load())
	if stored, n := u.stats.StoredBytes.Load(), int64(len(received)); stored > 5*n {
		t.Errorf("stored %d bytes for %d received", stored, n)
	}
	seg.append(make([]byte, seg.room()))
	if err := u.store(ctx, job{kind: jobSegment, seg: seg, snap: seg.snapshot(seg.size), end: seg.end()}); err != nil {
		t.Fatal(err)
	}
	ix, err := archive.Load(ctx, repo, segSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(ix.Objects) != 1 || ix.Objects[0].File != name {
		t.Errorf("after the complete segment: %d objects, want only %s", len(ix.Objects), name)
	}
}

// gated holds every Put of a key containing hold until release is closed.
type gated struct {
	storage.Backend
	hold    string
	release chan struct{}
	held    chan struct{} // closed when the held Put has started
	once    atomic.Bool
}

func (g *gated) Put(ctx context.Context, key string, r io.Reader) error {
	if bytes.Contains([]byte(key), []byte(g.hold)) {
		if g.once.CompareAndSwap(false, true) {
			close(g.held)
		}
		select {
		case <-g.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Backend.Put(ctx, key, r)
}

// TestUploaderPublishesInOrder: two complete segments are stored at once,
// and the second finishes first; the flush position must not move until
// the first is stored too, and then it moves to the end of both.
func TestUploaderPublishesInOrder(t *testing.T) {
	const segSize = 1 << 20
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first := newSegment(1, LSN(3*segSize), segSize)
	first.append(bytes.Repeat([]byte("one!"), segSize/4))
	second := newSegment(1, LSN(4*segSize), segSize)
	second.append(bytes.Repeat([]byte("two!"), segSize/4))
	g := &gated{Backend: storage.NewMemory(), hold: first.name(), release: make(chan struct{}), held: make(chan struct{})}
	repo := storage.NewRepository(g, storage.CodecZstd)
	u := newUploader(repo, slog.New(slog.DiscardHandler), 4)
	go u.run(ctx)
	done := make(chan struct{})
	u.q <- job{kind: jobSegment, seg: first, snap: first.snapshot(first.size), end: first.end()}
	u.q <- job{kind: jobSegment, seg: second, snap: second.snapshot(second.size), end: second.end(), done: done}
	<-g.held
	// The second segment is stored while the first is held ...
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := archive.Find(ctx, repo, second.name()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second segment was not stored while the first was held: no parallel store")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	// ... but nothing is published past the held one.
	if f := LSN(u.flushed.Load()); f != 0 {
		t.Fatalf("flushed %s while %s is not stored", f, first.name())
	}
	select {
	case <-done:
		t.Fatal("the second job was reported done before the first was stored")
	default:
	}
	close(g.release)
	<-done
	if f := LSN(u.flushed.Load()); f != second.end() {
		t.Fatalf("flushed %s, want %s", f, second.end())
	}
	close(u.q)
}
