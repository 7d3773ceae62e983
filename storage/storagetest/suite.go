package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/archive"
)

// Run runs every conformance test against backends made by newBackend.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b storage.Backend)
	}{
		{"PutGetStat", testPutGetStat},
		{"GetRange", testGetRange},
		{"NotFound", testNotFound},
		{"Overwrite", testOverwrite},
		{"CancelMidUploadLeavesNothing", testCancelMidUpload},
		{"FailingReaderLeavesOldObject", testFailingReader},
		{"ListPrefixAndPagination", testListMany},
		{"LargeObjectBoundedMemory", testLargeObject},
		{"CodecsRoundTrip", testCodecs},
		{"CorruptObjectDetected", testCorrupt},
		{"RepositoryIdentity", testIdentity},
		{"ConditionalWrites", testConditional},
	}
	for _, tc := range tests {
		if tc.name == "LargeObjectBoundedMemory" {
			if _, ok := newBackend(t).(*storage.Memory); ok {
				continue // the memory backend holds objects in memory by design
			}
		}
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newBackend(t))
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func put(t *testing.T, b storage.Backend, key string, data []byte) {
	t.Helper()
	if err := b.Put(ctxT(t), key, bytes.NewReader(data)); err != nil {
		t.Fatalf("Put %s: %v", key, err)
	}
}

func get(t *testing.T, b storage.Backend, key string) []byte {
	t.Helper()
	rc, err := b.Get(ctxT(t), key, 0, -1)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return data
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testPutGetStat(t *testing.T, b storage.Backend) {
	data := randomBytes(1, 100_000)
	put(t, b, "a/b/object", data)
	if got := get(t, b, "a/b/object"); !bytes.Equal(got, data) {
		t.Fatalf("content differs: got %d bytes, want %d", len(got), len(data))
	}
	st, err := b.Stat(ctxT(t), "a/b/object")
	if err != nil || st.Size != int64(len(data)) || st.Key != "a/b/object" {
		t.Fatalf("Stat = %+v, %v", st, err)
	}
	put(t, b, "empty", nil)
	if got := get(t, b, "empty"); len(got) != 0 {
		t.Fatalf("empty object has %d bytes", len(got))
	}
	if err := b.Put(ctxT(t), "../escape", bytes.NewReader(data)); err == nil || !storage.IsPermanent(err) {
		t.Fatalf("Put with key ../escape: err = %v, want a permanent error", err)
	}
}

func testGetRange(t *testing.T, b storage.Backend) {
	data := randomBytes(2, 10_000)
	put(t, b, "range", data)
	for _, r := range []struct{ off, n int64 }{{0, 16}, {100, 48}, {9952, 48}, {5000, -1}, {0, -1}} {
		rc, err := b.Get(ctxT(t), "range", r.off, r.n)
		if err != nil {
			t.Fatalf("Get(%d,%d): %v", r.off, r.n, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		want := data[r.off:]
		if r.n >= 0 {
			want = want[:r.n]
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Get(%d,%d): %d bytes, err %v; want %d bytes", r.off, r.n, len(got), err, len(want))
		}
	}
}

func testNotFound(t *testing.T, b storage.Backend) {
	ctx := ctxT(t)
	if _, err := b.Get(ctx, "missing/key", 0, -1); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get missing: %v, want ErrNotFound", err)
	}
	if _, err := b.Stat(ctx, "missing/key"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat missing: %v, want ErrNotFound", err)
	}
	if err := b.Delete(ctx, "missing/key"); err != nil {
		t.Errorf("Delete missing: %v, want nil", err)
	}
	put(t, b, "gone", []byte("x"))
	if err := b.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, "gone"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after Delete: %v, want ErrNotFound", err)
	}
	if !storage.IsPermanent(fmt.Errorf("wrapped: %w", storage.ErrNotFound)) || storage.IsRetryable(storage.ErrNotFound) {
		t.Error("not-found must classify as permanent, not retryable")
	}
}

func testOverwrite(t *testing.T, b storage.Backend) {
	put(t, b, "over", []byte("first version"))
	put(t, b, "over", []byte("second"))
	if got := string(get(t, b, "over")); got != "second" {
		t.Fatalf("after overwrite: %q", got)
	}
}

// blockingReader yields n bytes, then blocks until ctx ends.
type blockingReader struct {
	ctx    context.Context
	left   int
	gotAll chan struct{}
	once   sync.Once
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		r.once.Do(func() { close(r.gotAll) })
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	n := min(len(p), r.left)
	for i := range p[:n] {
		p[i] = byte(i)
	}
	r.left -= n
	return n, nil
}

func testCancelMidUpload(t *testing.T, b storage.Backend) {
	put(t, b, "cancel/existing", []byte("old content"))
	for _, key := range []string{"cancel/new", "cancel/existing"} {
		ctx, cancel := context.WithCancel(context.Background())
		// 12 MiB: more than one S3 part, so a multipart upload is in flight.
		r := &blockingReader{ctx: ctx, left: 12 << 20, gotAll: make(chan struct{})}
		errc := make(chan error, 1)
		go func() { errc <- b.Put(ctx, key, r) }()
		select {
		case <-r.gotAll:
		case err := <-errc:
			t.Fatalf("Put returned before the reader ended: %v", err)
		case <-time.After(2 * time.Minute):
			t.Fatal("Put did not consume the data")
		}
		cancel()
		select {
		case err := <-errc:
			if err == nil {
				t.Fatalf("Put %s succeeded after cancellation", key)
			}
		case <-time.After(time.Minute):
			t.Fatal("Put did not return after cancellation")
		}
	}
	if _, err := b.Stat(ctxT(t), "cancel/new"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("cancelled upload is visible: %v", err)
	}
	if got := string(get(t, b, "cancel/existing")); got != "old content" {
		t.Errorf("cancelled overwrite changed the object: %q", got)
	}
	var keys []string
	_ = b.List(ctxT(t), "cancel/", func(o storage.ObjectInfo) error { keys = append(keys, o.Key); return nil })
	if len(keys) != 1 || keys[0] != "cancel/existing" {
		t.Errorf("listing after cancelled uploads: %v", keys)
	}
}

type failingReader struct{ left int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, errors.New("source failed")
	}
	n := min(len(p), r.left)
	r.left -= n
	return n, nil
}

func testFailingReader(t *testing.T, b storage.Backend) {
	put(t, b, "fail/obj", []byte("keep me"))
	for _, n := range []int{10, 11 << 20} {
		if err := b.Put(ctxT(t), "fail/obj", &failingReader{left: n}); err == nil {
			t.Fatal("Put from a failing reader succeeded")
		}
	}
	if got := string(get(t, b, "fail/obj")); got != "keep me" {
		t.Fatalf("failed Put changed the object: %q", got)
	}
}

func testListMany(t *testing.T, b storage.Backend) {
	const n = 1100 // more than one S3 page of 1000
	var wg sync.WaitGroup
	var failed atomic.Int32
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := b.Put(ctxT(t), fmt.Sprintf("many/%05d", i), bytes.NewReader([]byte{byte(i)})); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d puts failed", failed.Load())
	}
	put(t, b, "manyother/x", []byte("x"))
	put(t, b, "many.txt", []byte("x"))
	var keys []string
	err := b.List(ctxT(t), "many/", func(o storage.ObjectInfo) error {
		keys = append(keys, o.Key)
		if o.Size != 1 {
			return fmt.Errorf("%s: size %d", o.Key, o.Size)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != n {
		t.Fatalf("listed %d keys, want %d", len(keys), n)
	}
	for i, k := range keys {
		if want := fmt.Sprintf("many/%05d", i); k != want {
			t.Fatalf("key %d is %s, want %s (lexical order)", i, k, want)
		}
	}
	count := 0
	_ = b.List(ctxT(t), "many", func(o storage.ObjectInfo) error { count++; return nil })
	if count != n+2 {
		t.Errorf("prefix \"many\" listed %d, want %d", count, n+2)
	}
	stop := errors.New("stop")
	count = 0
	if err := b.List(ctxT(t), "many/", func(storage.ObjectInfo) error { count++; return stop }); err != stop || count != 1 {
		t.Errorf("List did not stop at the callback's error: %v after %d", err, count)
	}

	// ListFrom: only keys strictly after the given one, still in order,
	// across pages and directories.
	listFrom := func(prefix, after string) []string {
		t.Helper()
		var out []string
		if err := b.ListFrom(ctxT(t), prefix, after, func(o storage.ObjectInfo) error {
			out = append(out, o.Key)
			return nil
		}); err != nil {
			t.Fatalf("ListFrom(%q, %q): %v", prefix, after, err)
		}
		return out
	}
	if got := listFrom("many/", "many/00499"); len(got) != n-500 || got[0] != "many/00500" || got[len(got)-1] != fmt.Sprintf("many/%05d", n-1) {
		t.Errorf("ListFrom(many/, many/00499): %d keys from %v, want %d from many/00500", len(got), got[:min(len(got), 1)], n-500)
	}
	if got := listFrom("many", "many/99999"); fmt.Sprint(got) != "[manyother/x]" {
		t.Errorf("ListFrom(many, many/99999) = %v, want [manyother/x]", got)
	}
	if got := listFrom("", fmt.Sprintf("many/%05d", n-2)); fmt.Sprint(got) != fmt.Sprintf("[many/%05d manyother/x]", n-1) {
		t.Errorf("ListFrom(\"\", many/%05d) = %v", n-2, got)
	}
	if got := listFrom("many/", ""); len(got) != n {
		t.Errorf("ListFrom with no start listed %d keys, want %d", len(got), n)
	}

	// DeleteMany: more keys than one S3 request takes, and a missing one.
	var del []string
	for i := range n - 50 {
		del = append(del, fmt.Sprintf("many/%05d", i))
	}
	del = append(del, "many/missing")
	if err := b.DeleteMany(ctxT(t), del); err != nil {
		t.Fatalf("DeleteMany: %v", err)
	}
	if got := listFrom("many/", ""); len(got) != 50 || got[0] != fmt.Sprintf("many/%05d", n-50) {
		t.Errorf("after DeleteMany %d keys are left (first %v), want 50", len(got), got[:min(len(got), 1)])
	}
}

// peakHeap samples the heap until stop is closed and returns the peak.
func peakHeap(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		var peak uint64
		var ms runtime.MemStats
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				out <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// patternReader yields n pseudo-random (incompressible) bytes without
// holding them in memory.
type patternReader struct {
	r    *rand.Rand
	left int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), p.left))
	for i := 0; i+8 <= n; i += 8 {
		v := p.r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(p.r.Uint32())
	}
	p.left -= int64(n)
	return n, nil
}

func testLargeObject(t *testing.T, b storage.Backend) {
	const size = 100 << 20
	const limit = 96 << 20
	repo := storage.NewRepository(b, storage.CodecZstd)
	ctx := ctxT(t)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := make(chan struct{})
	peak := peakHeap(stop)

	w, err := repo.Create(ctx, "large/object")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	src := &patternReader{r: rand.New(rand.NewPCG(7, 7)), left: size}
	if _, err := io.Copy(io.MultiWriter(w, h), src); err != nil {
		w.Abort()
		t.Fatal(err)
	}
	meta, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if meta.Size != size {
		t.Fatalf("meta = size %d, want %d", meta.Size, size)
	}
	r, err := repo.Open(ctx, "large/object.zst")
	if err != nil {
		t.Fatal(err)
	}
	h2 := sha256.New()
	n, err := io.Copy(h2, r)
	r.Close()
	close(stop)
	p := <-peak
	if err != nil || n != size || !bytes.Equal(h2.Sum(nil), h.Sum(nil)) {
		t.Fatalf("read back %d bytes, err %v, checksum equal %v", n, err, bytes.Equal(h2.Sum(nil), h.Sum(nil)))
	}
	grew := int64(p) - int64(before.HeapInuse)
	t.Logf("100 MiB object: heap before %d MiB, peak %d MiB (+%d MiB)", before.HeapInuse>>20, p>>20, grew>>20)
	if grew > limit {
		t.Fatalf("heap grew by %d MiB while streaming 100 MiB: memory is not bounded (limit %d MiB)", grew>>20, limit>>20)
	}
	m, err := repo.Meta(ctx, "large/object.zst")
	if err != nil || m.Size != size || m.SHA256 != meta.SHA256 {
		t.Fatalf("Meta = %+v, %v", m, err)
	}
}

func testCodecs(t *testing.T, b storage.Backend) {
	ctx := ctxT(t)
	text := bytes.Repeat([]byte("walkeeper keeps WAL; "), 50_000)
	for _, name := range []string{"zstd", "lz4", "gzip", "s2", "none"} {
		c, err := storage.ParseCodec(name)
		if err != nil {
			t.Fatal(err)
		}
		repo := storage.NewRepository(b, c)
		w, err := repo.Create(ctx, archive.LayoutFor(storage.FormatVersion).Key("00000001000000000000000"+fmt.Sprint(int(c))))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(text); err != nil {
			t.Fatal(err)
		}
		meta, err := w.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// A reader with another default codec must still read it: the codec
		// comes from the object, not from the caller.
		other := storage.NewRepository(b, storage.CodecNone)
		info, err := other.Find(ctx, archive.LayoutFor(storage.FormatVersion).Key("00000001000000000000000"+fmt.Sprint(int(c))))
		if err != nil {
			t.Fatalf("%s: Find: %v", name, err)
		}
		r, err := other.Open(ctx, info.Key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, text) {
			t.Fatalf("%s: read back %d bytes, err %v", name, len(got), err)
		}
		if r.Meta().SHA256 != meta.SHA256 || r.Meta().Codec != c {
			t.Fatalf("%s: reader meta %+v differs from writer meta %+v", name, r.Meta(), meta)
		}
		for _, variant := range []struct {
			content []byte
			want    bool
		}{
			{text, true},
			{text[:len(text)-1], false},
			{append(bytes.Clone(text), 'x'), false},
			{append([]byte("W"), text[1:]...), false},
		} {
			same, err := other.SameContent(ctx, info.Key, bytes.NewReader(variant.content))
			if err != nil || same != variant.want {
				t.Errorf("%s: SameContent(%d bytes) = %v, %v; want %v", name, len(variant.content), same, err, variant.want)
			}
		}
		if m, err := other.CompareContent(ctx, info.Key, bytes.NewReader(append(bytes.Clone(text), "more"...))); err != nil || m != storage.StoredIsPrefix {
			t.Errorf("%s: CompareContent with a longer content = %v, %v; want StoredIsPrefix", name, m, err)
		}
		if c != storage.CodecNone && info.Size >= int64(len(text))/4 {
			t.Errorf("%s: stored %d bytes for %d bytes of repetitive text", name, info.Size, len(text))
		}
	}
}

func readAllRepo(ctx context.Context, repo *storage.Repository, key string) error {
	r, err := repo.Open(ctx, key)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(io.Discard, r)
	return err
}

// checkAfterPeek reads the first 1000 bytes of content, then asks the reader
// to check the stored object.
func checkAfterPeek(ctx context.Context, repo *storage.Repository, key string) error {
	r, err := repo.Open(ctx, key)
	if err != nil {
		return err
	}
	defer r.Close()
	io.ReadFull(r, make([]byte, 1000))
	return r.CheckStored()
}

func testCorrupt(t *testing.T, b storage.Backend) {
	ctx := ctxT(t)
	content := randomBytes(3, 300_000)
	for _, name := range []string{"zstd", "lz4", "gzip", "s2", "none"} {
		c, _ := storage.ParseCodec(name)
		repo := storage.NewRepository(b, c)
		base := "corrupt/" + name
		w, err := repo.Create(ctx, base)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(content)
		if _, err := w.Close(); err != nil {
			t.Fatal(err)
		}
		key := base + c.Ext()
		stored := get(t, b, key)
		if err := readAllRepo(ctx, repo, key); err != nil {
			t.Fatalf("%s: intact object fails: %v", name, err)
		}
		for _, pos := range []int{20, len(stored) / 2, len(stored) - 5} {
			bad := bytes.Clone(stored)
			bad[pos] ^= 0x10
			put(t, b, key, bad)
			if err := readAllRepo(ctx, repo, key); !errors.Is(err, storage.ErrCorrupt) {
				t.Errorf("%s: flipped byte at %d of %d: err = %v, want ErrCorrupt", name, pos, len(stored), err)
			}
		}
		// A consumer that stops early (a tar reader meeting garbage) asks
		// CheckStored whether the object itself is damaged.
		put(t, b, key, stored)
		if err := checkAfterPeek(ctx, repo, key); err != nil {
			t.Errorf("%s: CheckStored on an intact object: %v", name, err)
		}
		bad := bytes.Clone(stored)
		bad[len(stored)*3/4] ^= 0x10
		put(t, b, key, bad)
		if err := checkAfterPeek(ctx, repo, key); !errors.Is(err, storage.ErrCorrupt) {
			t.Errorf("%s: CheckStored after a flipped byte past the part read: err = %v, want ErrCorrupt", name, err)
		}
		put(t, b, key, stored[:len(stored)-100])
		if err := readAllRepo(ctx, repo, key); !errors.Is(err, storage.ErrCorrupt) {
			t.Errorf("%s: truncated object: err = %v, want ErrCorrupt", name, err)
		}
	}
}

func testIdentity(t *testing.T, b storage.Backend) {
	ctx := ctxT(t)
	repo := storage.NewRepository(b, storage.CodecZstd)
	want := storage.Config{SystemIdentifier: "7312345678901234567", PGMajorVersion: 15, WALSegmentSize: 16 << 20}
	if _, err := repo.Init(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := repo.Init(ctx, want)
	if err != nil || got.SystemIdentifier != want.SystemIdentifier || got.FormatVersion != storage.FormatVersion {
		t.Fatalf("second Init = %+v, %v", got, err)
	}
	other := want
	other.SystemIdentifier = "7399999999999999999"
	if _, err := repo.Init(ctx, other); !errors.Is(err, storage.ErrWrongCluster) {
		t.Fatalf("Init for another cluster: %v, want ErrWrongCluster", err)
	}
	put(t, b, storage.ConfigKey, []byte(`{"format_version": 99, "system_identifier": "7312345678901234567"}`))
	if _, err := repo.Init(ctx, want); !errors.Is(err, storage.ErrWrongCluster) {
		t.Fatalf("Init on a newer format: %v, want ErrWrongCluster", err)
	}
}

// testConditional checks the conditional writes the locks rely on: two
// creates of one key cannot both succeed, nor two replaces of one version,
// and a stale version neither replaces nor deletes.
func testConditional(t *testing.T, b storage.Backend) {
	ctx := ctxT(t)
	const key = "cond/lock.json"
	v1, err := b.PutIfAbsent(ctx, key, []byte("first"))
	if err != nil {
		t.Fatalf("PutIfAbsent of a new key: %v", err)
	}
	if _, err := b.PutIfAbsent(ctx, key, []byte("second")); !errors.Is(err, storage.ErrPrecondition) {
		t.Fatalf("PutIfAbsent of an existing key: %v, want ErrPrecondition", err)
	} else if !storage.IsPermanent(err) || storage.IsRetryable(err) {
		t.Errorf("a failed precondition must not be retried: %v", err)
	}
	data, v, err := b.GetVersioned(ctx, key)
	if err != nil || string(data) != "first" || v != v1 {
		t.Fatalf("GetVersioned = %q, %q, %v; want \"first\", %q", data, v, err, v1)
	}

	// Racing creates of one key: exactly one wins, and its bytes are stored.
	const racers = 16
	var wg sync.WaitGroup
	var won atomic.Int32
	winner := make(chan int, racers)
	fail := make(chan error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.PutIfAbsent(ctx, "cond/race.json", []byte(fmt.Sprintf("racer %d", i)))
			switch {
			case err == nil:
				won.Add(1)
				winner <- i
			case !errors.Is(err, storage.ErrPrecondition):
				fail <- err
			}
		}()
	}
	wg.Wait()
	close(fail)
	for err := range fail {
		t.Errorf("a racing PutIfAbsent failed: %v, want success or ErrPrecondition", err)
	}
	if won.Load() != 1 {
		t.Fatalf("%d of %d racing creates of one key succeeded, want exactly 1", won.Load(), racers)
	}
	if got, w := string(get(t, b, "cond/race.json")), fmt.Sprintf("racer %d", <-winner); got != w {
		t.Fatalf("race stored %q, the winner wrote %q", got, w)
	}

	// Replace: only the current version.
	v2, err := b.PutIfMatch(ctx, key, []byte("refreshed"), v1)
	if err != nil || v2 == v1 {
		t.Fatalf("PutIfMatch with the current version: %q, %v; want a new version", v2, err)
	}
	if _, err := b.PutIfMatch(ctx, key, []byte("stale"), v1); !errors.Is(err, storage.ErrPrecondition) {
		t.Fatalf("PutIfMatch with a replaced version: %v, want ErrPrecondition", err)
	}
	if _, err := b.PutIfMatch(ctx, "cond/missing.json", []byte("x"), v1); !errors.Is(err, storage.ErrPrecondition) {
		t.Fatalf("PutIfMatch of a missing key: %v, want ErrPrecondition", err)
	}
	if _, err := b.Stat(ctx, "cond/missing.json"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a failed PutIfMatch created the key: %v", err)
	}
	won.Store(0)
	fail = make(chan error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.PutIfMatch(ctx, key, []byte(fmt.Sprintf("taker %d", i)), v2)
			switch {
			case err == nil:
				won.Add(1)
			case !errors.Is(err, storage.ErrPrecondition):
				fail <- err
			}
		}()
	}
	wg.Wait()
	close(fail)
	for err := range fail {
		t.Errorf("a racing PutIfMatch failed: %v, want success or ErrPrecondition", err)
	}
	if won.Load() != 1 {
		t.Fatalf("%d of %d racing replaces of one version succeeded, want exactly 1", won.Load(), racers)
	}

	// Delete: only the current version; a missing key is no error.
	data, v3, err := b.GetVersioned(ctx, key)
	if err != nil || !strings.HasPrefix(string(data), "taker ") {
		t.Fatalf("GetVersioned after the race: %q, %v", data, err)
	}
	if err := b.DeleteIfMatch(ctx, key, v2); !errors.Is(err, storage.ErrPrecondition) {
		t.Fatalf("DeleteIfMatch with a replaced version: %v, want ErrPrecondition", err)
	}
	if got := string(get(t, b, key)); got != string(data) {
		t.Fatalf("a failed DeleteIfMatch changed the object: %q", got)
	}
	if err := b.DeleteIfMatch(ctx, key, v3); err != nil {
		t.Fatalf("DeleteIfMatch with the current version: %v", err)
	}
	if _, _, err := b.GetVersioned(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("GetVersioned after DeleteIfMatch: %v, want ErrNotFound", err)
	}
	if err := b.DeleteIfMatch(ctx, key, v3); err != nil {
		t.Fatalf("DeleteIfMatch of a missing key: %v, want nil", err)
	}
	if _, err := b.PutIfAbsent(ctx, key, []byte("again")); err != nil {
		t.Fatalf("PutIfAbsent after the delete: %v", err)
	}
	if _, err := b.PutIfAbsent(ctx, "../escape", []byte("x")); err == nil || !storage.IsPermanent(err) {
		t.Fatalf("PutIfAbsent with key ../escape: %v, want a permanent error", err)
	}
	var keys []string
	b.List(ctx, "cond/", func(o storage.ObjectInfo) error { keys = append(keys, o.Key); return nil })
	if fmt.Sprint(keys) != "[cond/lock.json cond/race.json]" {
		t.Errorf("cond/ lists %v: temporary or lock files are visible", keys)
	}
}
