package storage_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"testing"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/walkeeper/walkeeper/storage"
	"github.com/walkeeper/walkeeper/storage/storagetest"
	"github.com/walkeeper/walkeeper/test/harness"
)

// TestS3Conformance runs the suite against a real S3 server (Versity S3
// Gateway) started for the test, with a small part size so that multipart
// uploads, their cancellation and their memory bound are exercised.
func TestS3Conformance(t *testing.T) {
	srv := harness.StartS3(t)
	for _, kv := range srv.Env() {
		k, v, _ := cut(kv)
		t.Setenv(k, v)
	}
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		n++
		b, err := storage.NewS3(context.Background(), storage.S3Options{
			Bucket:      srv.Bucket,
			Prefix:      "suite" + string(rune('a'+n%26)) + string(rune('a'+n/26)) + "/",
			Endpoint:    srv.Endpoint,
			PathStyle:   true,
			PartSize:    5 << 20,
			Concurrency: 4,
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func cut(kv string) (string, string, bool) {
	for i := range kv {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

// TestS3UploadsReuseBuffers: multipart uploads take their part buffers from
// the backend's pool and give them back, so a backup that uploads chunk
// after chunk allocates its part buffers once, not once per object (which
// let the heap, and so the RSS of a backup to S3, grow to twice the live
// part buffers before each collection: 160-200 MB against the 150 MB bound
// of issue 13).
func TestS3UploadsReuseBuffers(t *testing.T) {
	srv := harness.StartS3(t)
	const partSize = 5 << 20
	b, err := storage.NewS3(context.Background(), storage.S3Options{
		Bucket: srv.Bucket, Endpoint: srv.Endpoint, PathStyle: true, Region: srv.Region,
		PartSize: partSize, Concurrency: 2,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
	})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 6*partSize+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	put := func(i int) {
		if err := b.Put(t.Context(), fmt.Sprintf("reuse/%d", i), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	// No collection during the measurement: a sync.Pool keeps what it
	// holds until one runs, and TotalAlloc counts every byte allocated.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	put(0)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const objects = 4
	for i := 1; i <= objects; i++ {
		put(i)
	}
	runtime.ReadMemStats(&after)
	// Fresh buffers per object would be at least (Concurrency+1) parts per
	// object: 60 MB here. Requests themselves allocate far less than a part.
	if got := after.TotalAlloc - before.TotalAlloc; got > partSize {
		t.Errorf("%d multipart uploads of %d bytes allocated %.1f MB; want the part buffers reused (under %d MB)",
			objects, len(data), float64(got)/1e6, partSize>>20)
	}
	for i := 0; i <= objects; i++ {
		info, err := b.Stat(t.Context(), fmt.Sprintf("reuse/%d", i))
		if err != nil || info.Size != int64(len(data)) {
			t.Errorf("reuse/%d: %+v, %v", i, info, err)
		}
	}
}
