package storage

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
)

// Location is a parsed --repo value.
type Location struct {
	// Scheme is "file" or "s3".
	Scheme string
	// Path is the directory of a file repository.
	Path string
	// Bucket and Prefix locate an S3 repository.
	Bucket, Prefix string
}

// ParseLocation parses "/abs/path", "file:///abs/path" or
// "s3://bucket/prefix". Errors say what a valid value looks like.
func ParseLocation(s string) (Location, error) {
	const hint = "use /abs/path, file:///abs/path or s3://bucket/prefix"
	if s == "" {
		return Location{}, fmt.Errorf("no repository given: set --repo or WALKEEPER_REPO (%s)", hint)
	}
	if strings.HasPrefix(s, "/") {
		return Location{Scheme: "file", Path: filepath.Clean(s)}, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return Location{}, fmt.Errorf("invalid --repo %q: %s", s, hint)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" || !strings.HasPrefix(u.Path, "/") {
			return Location{}, fmt.Errorf("invalid --repo %q: a file URL needs an absolute path (file:///abs/path)", s)
		}
		return Location{Scheme: "file", Path: filepath.Clean(u.Path)}, nil
	case "s3":
		if u.Host == "" {
			return Location{}, fmt.Errorf("invalid --repo %q: missing bucket (s3://bucket/prefix)", s)
		}
		if u.RawQuery != "" || u.User != nil {
			return Location{}, fmt.Errorf("invalid --repo %q: no credentials or options in the URL; use the AWS environment and --s3-* flags", s)
		}
		prefix := strings.Trim(u.Path, "/")
		if prefix != "" {
			if err := ValidateKey(prefix); err != nil {
				return Location{}, fmt.Errorf("invalid --repo %q: bad prefix: %v", s, err)
			}
			prefix += "/"
		}
		return Location{Scheme: "s3", Bucket: u.Host, Prefix: prefix}, nil
	}
	return Location{}, fmt.Errorf("invalid --repo %q: unsupported scheme %q: %s", s, u.Scheme, hint)
}

// Options is everything needed to open a repository.
type Options struct {
	// Repo is the --repo value.
	Repo string
	// Compression is the codec name for new objects (default zstd).
	Compression string
	// S3 carries the S3 settings; Bucket and Prefix come from Repo.
	S3 S3Options
	// Keys are the encryption keys (none: an unencrypted repository).
	Keys Keys
}

// Open assembles a Repository from opts: the one place where backends and
// layers are put together. It makes no network call.
func Open(ctx context.Context, opts Options) (*Repository, error) {
	loc, err := ParseLocation(opts.Repo)
	if err != nil {
		return nil, err
	}
	if opts.Compression == "" {
		opts.Compression = "zstd"
	}
	codec, err := ParseCodec(opts.Compression)
	if err != nil {
		return nil, err
	}
	if err := CheckKeys(opts.Keys); err != nil {
		return nil, err
	}
	var b Backend
	switch loc.Scheme {
	case "file":
		b, err = NewLocal(loc.Path)
	case "s3":
		o := opts.S3
		o.Bucket, o.Prefix = loc.Bucket, loc.Prefix
		b, err = NewS3(ctx, o)
	}
	if err != nil {
		return nil, err
	}
	// Compression and encryption are layers of the object envelope
	// (object.go): compress, then encrypt, in one stream per object.
	return NewRepository(b, codec).WithKeys(opts.Keys), nil
}
