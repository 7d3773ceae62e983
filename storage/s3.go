package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// S3Options configures the S3 backend. Credentials come from the standard
// AWS chain (environment, shared files, profiles, instance roles).
type S3Options struct {
	Bucket string
	// Prefix is prepended to every key; "" or a path ending in "/".
	Prefix string
	// Endpoint, when set, points the client at an S3-compatible server.
	Endpoint string
	// Region defaults to the AWS chain's region, else us-east-1.
	Region string
	// PathStyle addresses buckets as endpoint/bucket instead of bucket.endpoint.
	PathStyle bool
	// PartSize is the multipart part size (default 8 MiB, minimum 5 MiB).
	// Each Put holds one part buffer, and the backend's multipart
	// uploads share Concurrency more: (Puts at once + Concurrency) ×
	// PartSize in all.
	PartSize int64
	// Concurrency is how many parts of one object upload at once, and how
	// many part buffers the backend's uploads share (default 4).
	Concurrency int
	// MaxAttempts is the number of tries per request, with exponential
	// backoff and jitter between them (default 6).
	MaxAttempts int
	// Timeout bounds every single request, a part upload included
	// (default 5 minutes). A streaming download is cancelled when no byte
	// arrives for this long.
	Timeout time.Duration
	// Credentials, when set, replace the AWS credential chain (programs
	// embedding the backend, tests running in parallel: no environment).
	Credentials aws.CredentialsProvider
}

const (
	defaultPartSize = 8 << 20
	minPartSize     = 5 << 20
	maxParts        = 10000
)

// S3 is a Backend on an S3 bucket.
type S3 struct {
	client *s3.Client
	opts   S3Options
	// bufs holds the part buffers (see partPool).
	bufs *partPool
}

// NewS3 builds a client from the AWS credential chain and opts. It makes no
// network call.
func NewS3(ctx context.Context, opts S3Options) (*S3, error) {
	if opts.Bucket == "" {
		return nil, Permanent(errors.New("S3 repository needs a bucket: use s3://BUCKET/PREFIX"))
	}
	if opts.Prefix != "" && !strings.HasSuffix(opts.Prefix, "/") {
		opts.Prefix += "/"
	}
	if opts.PartSize == 0 {
		opts.PartSize = defaultPartSize
	}
	if opts.PartSize < minPartSize {
		return nil, Permanent(fmt.Errorf("S3 part size %d is below the S3 minimum of 5 MiB", opts.PartSize))
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 6
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Minute
	}
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		t.TLSHandshakeTimeout = 10 * time.Second
		t.ResponseHeaderTimeout = opts.Timeout
		t.MaxIdleConnsPerHost = opts.Concurrency * 2
	})
	loadOpts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = opts.MaxAttempts
				o.MaxBackoff = 20 * time.Second
			})
		}),
	}
	if opts.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(opts.Region))
	}
	if opts.Credentials != nil {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(opts.Credentials))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, Permanent(fmt.Errorf("load AWS configuration: %w", err))
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		o.UsePathStyle = opts.PathStyle
		// S3-compatible servers differ in their support of the newer
		// flexible checksums; walkeeper checks content with its own SHA-256.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return &S3{client: client, opts: opts, bufs: newPartPool(opts.PartSize, opts.Concurrency)}, nil
}

func (b *S3) String() string { return "s3://" + b.opts.Bucket + "/" + b.opts.Prefix }

func (b *S3) key(key string) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", Permanent(err)
	}
	return b.opts.Prefix + key, nil
}

// classifyS3 maps S3 errors onto the package's error classes.
func classifyS3(op, key string, err error) error {
	if err == nil {
		return nil
	}
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nf) {
		return fmt.Errorf("%s %s: %w", op, key, ErrNotFound)
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		code := re.HTTPStatusCode()
		if code == http.StatusNotFound {
			var ae smithy.APIError
			if errors.As(err, &ae) && ae.ErrorCode() == "NoSuchBucket" {
				return Permanent(fmt.Errorf("%s %s: bucket does not exist: create it or fix --repo: %w", op, key, err))
			}
			return fmt.Errorf("%s %s: %w: %w", op, key, ErrNotFound, err)
		}
		if code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests {
			return Permanent(fmt.Errorf("%s %s: %w", op, key, err))
		}
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}

func (b *S3) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.opts.Timeout)
}

// partSize grows the part size as an upload gets long so an object can
// exceed PartSize × 10000: it doubles every 2000 parts.
func (b *S3) partSize(partNumber int) int64 {
	return b.opts.PartSize << ((partNumber - 1) / 2000)
}

// Put uploads small objects with one PutObject and larger ones as a
// multipart upload with at most Concurrency parts in flight. Memory is one
// part buffer of its own plus its share of the backend's Concurrency shared
// ones (partPool). Any failure aborts the upload, so
// no object becomes visible.
func (b *S3) Put(ctx context.Context, key string, r io.Reader) error {
	k, err := b.key(key)
	if err != nil {
		return err
	}
	r = ctxReader{ctx: ctx, r: r}
	first := b.bufs.get(b.partSize(1))
	n, err := io.ReadFull(r, first)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		defer b.bufs.put(first)
		cctx, cancel := b.callCtx(ctx)
		defer cancel()
		_, err := b.client.PutObject(cctx, &s3.PutObjectInput{
			Bucket:        aws.String(b.opts.Bucket),
			Key:           aws.String(k),
			Body:          bytes.NewReader(first[:n]),
			ContentLength: aws.Int64(int64(n)),
		})
		return classifyS3("upload", key, err)
	}
	if err != nil {
		b.bufs.put(first)
		return fmt.Errorf("upload %s: read: %w", key, err)
	}
	return b.multipart(ctx, key, k, r, first)
}

// partPool holds the part buffers of one S3 backend. Every upload owns one
// buffer, its first part (most objects' only one: WAL segments, partials,
// history files). The parts a multipart upload has in flight beyond that
// one take a buffer of a budget of Concurrency shared by every upload of
// the backend. Memory is therefore (uploads at once + Concurrency) ×
// PartSize, not (Concurrency + 1) × PartSize per upload, and buffers are
// reused from object to object instead of being allocated for each (which
// let the heap of a backup to S3 grow to twice its live part buffers
// between collections). An upload never needs the shared budget to make
// progress: its own buffer comes back when its own part request ends.
type partPool struct {
	size   int64
	idle   chan []byte   // buffers of size not in use
	shared chan struct{} // one token per shared buffer in use
}

func newPartPool(size int64, shared int) *partPool {
	return &partPool{size: size, idle: make(chan []byte, shared+4), shared: make(chan struct{}, shared)}
}

// get returns a buffer of n bytes, an idle one when n is the part size.
func (p *partPool) get(n int64) []byte {
	if n == p.size {
		select {
		case buf := <-p.idle:
			return buf[:n]
		default:
		}
	}
	return make([]byte, n)
}

// put keeps buf for the next get, if it has the part size and the pool
// has room.
func (p *partPool) put(buf []byte) {
	if int64(cap(buf)) != p.size {
		return
	}
	select {
	case p.idle <- buf[:cap(buf)]:
	default:
	}
}

func (b *S3) multipart(ctx context.Context, key, k string, r io.Reader, first []byte) (err error) {
	cctx, cancel := b.callCtx(ctx)
	out, err := b.client.CreateMultipartUpload(cctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(b.opts.Bucket),
		Key:    aws.String(k),
	})
	cancel()
	if err != nil {
		return classifyS3("start upload", key, err)
	}
	uploadID := out.UploadId
	defer func() {
		if err == nil {
			return
		}
		// Abort even when ctx is cancelled: the upload must not linger.
		abort := func() {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_, _ = b.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
				Bucket: aws.String(b.opts.Bucket), Key: aws.String(k), UploadId: uploadID,
			})
		}
		if ctx.Err() != nil {
			// The caller gave up (a deadline, a shutdown): do not hold it
			// for a server that may not answer.
			go abort()
			return
		}
		abort()
	}()

	uctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu       sync.Mutex
		parts    []types.CompletedPart
		firstErr error
		wg       sync.WaitGroup
	)
	fail := func(e error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = e
		}
		mu.Unlock()
		stop()
	}
	// own is this upload's own buffer when no part request holds it;
	// parts in shared buffers give them back to b.bufs with their token.
	own := make(chan []byte, 1)
	defer func() {
		// Every part goroutine has ended (wg.Wait below).
		select {
		case buf := <-own:
			b.bufs.put(buf)
		default:
		}
	}()
	// release gives back a part buffer no request holds any more.
	release := func(data []byte, shared bool) {
		if shared {
			b.bufs.put(data)
			<-b.bufs.shared
		} else {
			own <- data[:cap(data)]
		}
	}
	sem := make(chan struct{}, b.opts.Concurrency)
	buf, last, shared := first, false, false
	for num := int32(1); ; num++ {
		select {
		case sem <- struct{}{}:
		case <-uctx.Done():
		}
		if uctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(num int32, data []byte, shared bool) {
			defer wg.Done()
			defer func() {
				<-sem
				release(data, shared)
			}()
			pctx, cancel := b.callCtx(uctx)
			defer cancel()
			res, err := b.client.UploadPart(pctx, &s3.UploadPartInput{
				Bucket: aws.String(b.opts.Bucket), Key: aws.String(k), UploadId: uploadID,
				PartNumber: aws.Int32(num), Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
			})
			if err != nil {
				fail(classifyS3(fmt.Sprintf("upload part %d of", num), key, err))
				return
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{ETag: res.ETag, PartNumber: aws.Int32(num)})
			mu.Unlock()
		}(num, buf, shared)
		if last {
			break
		}
		if num >= maxParts {
			fail(Permanent(fmt.Errorf("upload %s: object exceeds %d parts: raise the S3 part size", key, maxParts)))
			break
		}
		// The next part goes into the own buffer if no request holds it,
		// else into a shared one, else whichever is free first.
		size := b.partSize(int(num) + 1)
		var next []byte
		select {
		case next = <-own:
			shared = false
		default:
			select {
			case next = <-own:
				shared = false
			case b.bufs.shared <- struct{}{}:
				next, shared = b.bufs.get(size), true
			case <-uctx.Done():
			}
		}
		if next == nil {
			break // failed or cancelled
		}
		if int64(cap(next)) < size {
			next = make([]byte, size) // parts grow after 2000 of them
		}
		next = next[:size]
		n, rerr := io.ReadFull(r, next)
		if rerr != nil && rerr != io.ErrUnexpectedEOF {
			release(next, shared) // not sent
			if rerr != io.EOF {
				fail(fmt.Errorf("upload %s: read: %w", key, rerr))
			}
			break
		}
		buf, last = next[:n], rerr == io.ErrUnexpectedEOF
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	cctx, cancel = b.callCtx(ctx)
	defer cancel()
	_, err = b.client.CompleteMultipartUpload(cctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(b.opts.Bucket), Key: aws.String(k), UploadId: uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	return classifyS3("complete upload", key, err)
}

// Get streams a range of the object. The download is cancelled when no
// data arrives for the configured Timeout.
func (b *S3) Get(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	k, err := b.key(key)
	if err != nil {
		return nil, err
	}
	in := &s3.GetObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(k)}
	if off > 0 || length >= 0 {
		if length == 0 {
			return io.NopCloser(bytes.NewReader(nil)), nil
		}
		rng := fmt.Sprintf("bytes=%d-", off)
		if length > 0 {
			rng += fmt.Sprint(off + length - 1)
		}
		in.Range = aws.String(rng)
	}
	gctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(b.opts.Timeout, cancel)
	out, err := b.client.GetObject(gctx, in)
	if err != nil {
		timer.Stop()
		cancel()
		var re *awshttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusRequestedRangeNotSatisfiable {
			return io.NopCloser(bytes.NewReader(nil)), nil
		}
		return nil, classifyS3("download", key, err)
	}
	return &idleReader{body: out.Body, timer: timer, idle: b.opts.Timeout, cancel: cancel}, nil
}

// idleReader cancels a download that makes no progress for idle.
type idleReader struct {
	body   io.ReadCloser
	timer  *time.Timer
	idle   time.Duration
	cancel context.CancelFunc
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if n > 0 {
		r.timer.Reset(r.idle)
	}
	return n, err
}

func (r *idleReader) Close() error {
	r.timer.Stop()
	err := r.body.Close()
	r.cancel()
	return err
}

// Stat issues a HeadObject.
func (b *S3) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	k, err := b.key(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	cctx, cancel := b.callCtx(ctx)
	defer cancel()
	out, err := b.client.HeadObject(cctx, &s3.HeadObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(k)})
	if err != nil {
		return ObjectInfo{}, classifyS3("stat", key, err)
	}
	info := ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength)}
	if out.LastModified != nil {
		info.ModTime = *out.LastModified
	}
	return info, nil
}

// List pages through ListObjectsV2 (1000 keys a page).
func (b *S3) List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error {
	return b.ListFrom(ctx, prefix, "", fn)
}

// ListFrom starts ListObjectsV2 after the key after (StartAfter), so the
// keys before it cost nothing.
func (b *S3) ListFrom(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error {
	in := &s3.ListObjectsV2Input{
		Bucket: aws.String(b.opts.Bucket),
		Prefix: aws.String(b.opts.Prefix + prefix),
	}
	if after != "" {
		in.StartAfter = aws.String(b.opts.Prefix + after)
	}
	p := s3.NewListObjectsV2Paginator(b.client, in)
	for p.HasMorePages() {
		cctx, cancel := b.callCtx(ctx)
		page, err := p.NextPage(cctx)
		cancel()
		if err != nil {
			return classifyS3("list", prefix, err)
		}
		for _, o := range page.Contents {
			info := ObjectInfo{
				Key:  strings.TrimPrefix(aws.ToString(o.Key), b.opts.Prefix),
				Size: aws.ToInt64(o.Size),
			}
			if o.LastModified != nil {
				info.ModTime = *o.LastModified
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes the object; S3 treats a missing key as success too.
func (b *S3) Delete(ctx context.Context, key string) error {
	k, err := b.key(key)
	if err != nil {
		return err
	}
	cctx, cancel := b.callCtx(ctx)
	defer cancel()
	_, err = b.client.DeleteObject(cctx, &s3.DeleteObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(k)})
	err = classifyS3("delete", key, err)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// deleteBatch is the most keys one DeleteObjects request takes.
const deleteBatch = 1000

// DeleteMany removes keys with DeleteObjects, up to 1000 keys a request.
// A key the server reports it could not delete is an error.
func (b *S3) DeleteMany(ctx context.Context, keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), deleteBatch)
		batch := keys[:n]
		keys = keys[n:]
		ids := make([]types.ObjectIdentifier, 0, len(batch))
		for _, key := range batch {
			k, err := b.key(key)
			if err != nil {
				return err
			}
			ids = append(ids, types.ObjectIdentifier{Key: aws.String(k)})
		}
		cctx, cancel := b.callCtx(ctx)
		out, err := b.client.DeleteObjects(cctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(b.opts.Bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		cancel()
		if err != nil {
			return classifyS3("delete", batch[0], err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return fmt.Errorf("delete %s: %s: %s (%d of %d keys of the request failed)",
				strings.TrimPrefix(aws.ToString(e.Key), b.opts.Prefix), aws.ToString(e.Code), aws.ToString(e.Message), len(out.Errors), len(batch))
		}
	}
	return nil
}

// classifyConditional maps the answers to a conditional request: 412
// Precondition Failed, and 409 ConditionalRequestConflict (AWS: another
// conditional write of the key was in flight), are ErrPrecondition; 501 Not
// Implemented is ErrConditionalUnsupported.
func classifyConditional(op, key string, err error) error {
	if err == nil {
		return nil
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusPreconditionFailed, http.StatusConflict:
			return fmt.Errorf("%s %s: %w: %w", op, key, ErrPrecondition, err)
		case http.StatusNotImplemented:
			return fmt.Errorf("%s %s: %w: %w", op, key, ErrConditionalUnsupported, err)
		}
	}
	return classifyS3(op, key, err)
}

// putConditional is one PutObject of small data with a condition header.
func (b *S3) putConditional(ctx context.Context, op, key string, data []byte, ifNoneMatch, ifMatch *string) (Version, error) {
	k, err := b.key(key)
	if err != nil {
		return "", err
	}
	cctx, cancel := b.callCtx(ctx)
	defer cancel()
	out, err := b.client.PutObject(cctx, &s3.PutObjectInput{
		Bucket:        aws.String(b.opts.Bucket),
		Key:           aws.String(k),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
		IfNoneMatch:   ifNoneMatch,
		IfMatch:       ifMatch,
	})
	if err != nil {
		err = classifyConditional(op, key, err)
		if errors.Is(err, ErrNotFound) {
			// If-Match on a missing key: S3 answers 404 NoSuchKey.
			err = fmt.Errorf("%s %s: %w: it is missing", op, key, ErrPrecondition)
		}
		return "", err
	}
	if out.ETag == nil {
		return "", fmt.Errorf("%s %s: the server returned no ETag", op, key)
	}
	return Version(*out.ETag), nil
}

// PutIfAbsent is PutObject with If-None-Match: *.
func (b *S3) PutIfAbsent(ctx context.Context, key string, data []byte) (Version, error) {
	return b.putConditional(ctx, "create", key, data, aws.String("*"), nil)
}

// PutIfMatch is PutObject with If-Match: the ETag v.
func (b *S3) PutIfMatch(ctx context.Context, key string, data []byte, v Version) (Version, error) {
	return b.putConditional(ctx, "replace", key, data, nil, aws.String(string(v)))
}

// DeleteIfMatch is DeleteObject with If-Match: the ETag v. Servers without
// conditional deletes answer 501 (ErrConditionalUnsupported) or ignore the
// header; Repository.Lock probes which.
func (b *S3) DeleteIfMatch(ctx context.Context, key string, v Version) error {
	k, err := b.key(key)
	if err != nil {
		return err
	}
	cctx, cancel := b.callCtx(ctx)
	defer cancel()
	_, err = b.client.DeleteObject(cctx, &s3.DeleteObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(k), IfMatch: aws.String(string(v))})
	err = classifyConditional("delete", key, err)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// GetVersioned is one GetObject: the body and the ETag of that body.
func (b *S3) GetVersioned(ctx context.Context, key string) ([]byte, Version, error) {
	k, err := b.key(key)
	if err != nil {
		return nil, "", err
	}
	cctx, cancel := b.callCtx(ctx)
	defer cancel()
	out, err := b.client.GetObject(cctx, &s3.GetObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(k)})
	if err != nil {
		return nil, "", classifyS3("download", key, err)
	}
	defer out.Body.Close()
	data, err := io.ReadAll(io.LimitReader(out.Body, maxVersioned+1))
	if err != nil {
		return nil, "", classifyS3("download", key, err)
	}
	if len(data) > maxVersioned {
		return nil, "", fmt.Errorf("read %s: larger than %d bytes", key, maxVersioned)
	}
	return data, Version(aws.ToString(out.ETag)), nil
}
