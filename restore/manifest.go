package restore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/walkeeper/walkeeper/basebackup"
	"github.com/walkeeper/walkeeper/storage"
)

// The data directory restored from an incremental chain is a full backup:
// its backup_label loses the INCREMENTAL FROM lines (PostgreSQL refuses to
// start from "an incremental backup, not a data directory"), and its
// backup_manifest is the newest member's with every INCREMENTAL.<name>
// entry replaced by <name> (the reconstructed file's size and CRC-32C),
// backup_label's entry by the rewritten label's, and a new
// Manifest-Checksum: what pg_combinebackup writes, and what pg_verifybackup
// checks. The manifest is rewritten line by line (the server writes one
// file per line), so it is never held in memory whole.

// fullLabel is backup_label without the lines that mark an incremental
// backup.
func fullLabel(label []byte) []byte {
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(label), "\n") {
		if strings.HasPrefix(line, "INCREMENTAL FROM LSN: ") || strings.HasPrefix(line, "INCREMENTAL FROM TLI: ") {
			continue
		}
		out.WriteString(line)
	}
	return out.Bytes()
}

// crc32cHex is a CRC-32C as PostgreSQL prints it in a manifest: its bytes
// in memory (little-endian) order.
func crc32cHex(sum uint32) string {
	return hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, sum))
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type fileSum struct {
	name string // the reconstructed file's manifest path
	size int64
	crc  string
}

// rebuiltSums reads every reconstructed file back and sums it.
func (r *restorer) rebuiltSums(ctx context.Context) (map[string]fileSum, error) {
	out := make(map[string]fileSum, len(r.chain.rebuilt))
	type res struct {
		key string
		sum fileSum
	}
	results := make(chan res, len(r.chain.rebuilt))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Parallel)
	for key, p := range r.chain.rebuilt {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			n, sum, _, err := manifestSum("CRC32C", f)
			if err != nil {
				return fmt.Errorf("checksum %s: %w", p, err)
			}
			bare, _ := basebackup.IncrementalTarget(key)
			results <- res{key, fileSum{bare, n, sum}}
			return nil
		})
	}
	err := g.Wait()
	close(results)
	for x := range results {
		out[x.key] = x.sum
	}
	return out, err
}

// manifestFile is the part of a manifest's file line the rewrite reads.
type manifestFile struct {
	Path         string `json:"Path"`
	Size         int64  `json:"Size"`
	LastModified string `json:"Last-Modified"`
	Algorithm    string `json:"Checksum-Algorithm"`
	Checksum     string `json:"Checksum"`
}

func jsonString(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

// line renders a file line as PostgreSQL writes it.
func (f manifestFile) line() string {
	s := fmt.Sprintf(`{ "Path": %s, "Size": %d, "Last-Modified": %s`, jsonString(f.Path), f.Size, jsonString(f.LastModified))
	if f.Algorithm != "" {
		s += fmt.Sprintf(`, "Checksum-Algorithm": %s, "Checksum": %s`, jsonString(f.Algorithm), jsonString(f.Checksum))
	}
	return s + " }"
}

// writeFullManifest writes target/backup_manifest from the newest
// member's manifest object obj; label is the rewritten backup_label.
func (r *restorer) writeFullManifest(ctx context.Context, obj basebackup.Object, label []byte) error {
	sums, err := r.rebuiltSums(ctx)
	if err != nil {
		return err
	}
	rd, err := r.opts.Repo.Open(ctx, obj.Key)
	if err != nil {
		return fmt.Errorf("open %s: %w", obj.Key, err)
	}
	defer rd.Close()
	dest := filepath.Join(r.target, "backup_manifest")
	f, err := r.dd.create(dest)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		r.dd.abort(f)
		return fmt.Errorf("restore %s: %w", obj.Key, err)
	}
	h := sha256.New()
	out := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<16)
	in := bufio.NewReaderSize(rd, 1<<16)
	replaced, done := 0, false
	for !done {
		line, err := in.ReadString('\n')
		if err == io.EOF && line == "" {
			break
		}
		if err != nil && err != io.EOF {
			return fail(err)
		}
		if strings.HasPrefix(line, `"Manifest-Checksum"`) {
			if err := out.Flush(); err != nil {
				return fail(err)
			}
			if _, err := fmt.Fprintf(f, "\"Manifest-Checksum\": \"%x\"}\n", h.Sum(nil)); err != nil {
				return fail(err)
			}
			done = true
			break
		}
		if strings.HasPrefix(line, `{ "Path": `) {
			body, nl := strings.CutSuffix(line, "\n")
			body, comma := strings.CutSuffix(body, ",")
			var mf manifestFile
			if err := json.Unmarshal([]byte(body), &mf); err != nil {
				return fail(fmt.Errorf("manifest line %q: %w", body, err))
			}
			changed := false
			if s, ok := sums[mf.Path]; ok {
				mf.Path, mf.Size, mf.Checksum = s.name, s.size, s.crc
				changed = true
				replaced++
			} else if mf.Path == "backup_label" && label != nil {
				mf.Size, mf.Checksum = int64(len(label)), crc32cHex(crc32.Checksum(label, castagnoli))
				changed = true
			}
			if changed {
				switch mf.Algorithm {
				case "CRC32C":
				case "", "NONE":
					mf.Algorithm, mf.Checksum = "", ""
				default:
					return fail(fmt.Errorf("manifest of backup %s uses checksum algorithm %s; walkeeper rewrites CRC32C manifests only", r.meta.ID, mf.Algorithm))
				}
				line = mf.line()
				if comma {
					line += ","
				}
				if nl {
					line += "\n"
				}
			}
		}
		if _, err := out.WriteString(line); err != nil {
			return fail(err)
		}
	}
	if !done {
		return fail(fmt.Errorf("%w: the manifest has no Manifest-Checksum line", storage.ErrCorrupt))
	}
	if replaced != len(sums) {
		return fail(fmt.Errorf("the manifest lists %d of the backup's %d incremental files", replaced, len(sums)))
	}
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return fail(err)
	}
	if m := rd.Meta(); obj.SHA256 != "" && (m.Hex() != obj.SHA256 || m.Size != obj.Size) {
		return fail(fmt.Errorf("%w: the object is not the one backup %s stored", storage.ErrCorrupt, r.meta.ID))
	}
	return r.dd.commit(f, dest)
}
