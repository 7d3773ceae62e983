package storage_test

import (
	"context"
	"testing"

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
