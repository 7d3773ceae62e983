package restore

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// extractor writes one tar archive below root, refusing anything that would
// land outside it; the data-directory writer makes the changes.
type extractor struct {
	root string
	dd   *dataDir
	// hold, when it returns true for an entry name, receives that entry's
	// content instead of the file system (pg_control, tablespace_map).
	hold func(name string, r io.Reader) (bool, error)
	// links are the symbolic links this extractor created: nothing may be
	// written through them.
	links map[string]bool
	// incremental, when set, may write a regular file itself (an
	// INCREMENTAL file of an incremental backup) and then returns true.
	incremental func(rel string, size int64, r io.Reader) (bool, error)
	// keep, when set and true for a regular file's name, leaves the
	// existing file as it is (a delta restore found it equal); the
	// entry's content is read past.
	keep func(rel string) bool
	// wrote, when set, is called after each regular file is written (or
	// kept); for a file stored as parts, once, when it is complete.
	wrote func()
	// parts holds the files stored as parts being written, shared by the
	// extractors of all chunks (parts.go).
	parts *partFiles
}

// ErrUnsafeArchive marks an archive entry that would escape the target.
var ErrUnsafeArchive = errors.New("unsafe archive entry")

func (x *extractor) unsafe(name, why string) error {
	return fmt.Errorf("%w %q: %s; nothing was written outside %s", ErrUnsafeArchive, name, why, x.root)
}

// clean validates an archive path and returns it cleaned, relative, with
// forward slashes.
func (x *extractor) clean(name string) (string, error) {
	if name == "" {
		return "", x.unsafe(name, "empty name")
	}
	if strings.HasPrefix(name, "/") || filepath.IsAbs(name) {
		return "", x.unsafe(name, "absolute path")
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", x.unsafe(name, "path leaves the target directory")
	}
	return c, nil
}

// checkParents refuses a path whose parent directories include a link.
func (x *extractor) checkParents(rel string) error {
	dir := path.Dir(rel)
	for dir != "." && dir != "/" {
		if x.links[dir] {
			return x.unsafe(rel, "would be written through the link "+dir)
		}
		if st, err := os.Lstat(filepath.Join(x.root, filepath.FromSlash(dir))); err == nil && st.Mode()&os.ModeSymlink != 0 {
			return x.unsafe(rel, "would be written through the link "+dir)
		}
		dir = path.Dir(dir)
	}
	return nil
}

// inside reports whether p (absolute, cleaned) is root or below it.
func inside(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

func (x *extractor) mkdirAll(rel string) error {
	if rel == "." || rel == "" {
		return nil
	}
	if err := x.mkdirAll(path.Dir(rel)); err != nil {
		return err
	}
	p := filepath.Join(x.root, filepath.FromSlash(rel))
	st, err := os.Lstat(p)
	switch {
	case err == nil && st.IsDir():
		return nil
	case err == nil:
		return x.unsafe(rel, "a directory is expected where another entry exists")
	}
	err = x.dd.mkdir(p)
	if os.IsExist(err) {
		// Another chunk's extractor created it in the meantime.
		if st, serr := os.Lstat(p); serr == nil && st.IsDir() {
			return nil
		}
		return x.unsafe(rel, "a directory is expected where another entry exists")
	}
	return err
}

// extract reads the whole archive.
func (x *extractor) extract(ctx context.Context, r io.Reader) error {
	if x.links == nil {
		x.links = map[string]bool{}
	}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		if err := x.entry(h, tr); err != nil {
			return err
		}
	}
}

func (x *extractor) entry(h *tar.Header, r io.Reader) error {
	rel, err := x.clean(h.Name)
	if err != nil {
		return err
	}
	if rel == "." {
		return nil
	}
	if err := x.checkParents(rel); err != nil {
		return err
	}
	target := filepath.Join(x.root, filepath.FromSlash(rel))
	switch h.Typeflag {
	case tar.TypeDir:
		return x.mkdirAll(rel)
	case tar.TypeReg:
		if off, size, ok, err := partOf(h); err != nil {
			return err
		} else if ok {
			return x.writePart(h, rel, target, off, size, r)
		}
		if x.incremental != nil {
			if err := x.checkParents(rel); err != nil {
				return err
			}
			done, err := x.incremental(rel, h.Size, r)
			if done && err == nil && x.wrote != nil {
				x.wrote()
			}
			if done || err != nil {
				return err
			}
		}
		if x.hold != nil {
			held, err := x.hold(rel, r)
			if held && err == nil && x.wrote != nil {
				x.wrote()
			}
			if held || err != nil {
				return err
			}
		}
		if x.keep != nil && x.keep(rel) {
			if x.wrote != nil {
				x.wrote()
			}
			return nil // the tar reader reads past the content
		}
		if err := x.mkdirAll(path.Dir(rel)); err != nil {
			return err
		}
		f, err := x.dd.create(target)
		if err != nil {
			return err
		}
		buf := writeBufs.Get().(*[]byte) // 1 MiB writes, not io.Copy's 32 kB
		n, err := io.CopyBuffer(x.dd.newFileWriter(f, 0), r, (*buf)[:writeBufSize])
		writeBufs.Put(buf)
		if err == nil && n != h.Size {
			err = fmt.Errorf("%d bytes, archive says %d", n, h.Size)
		}
		if err != nil {
			x.dd.abort(f)
			return fmt.Errorf("write %s: %w", target, err)
		}
		if err := x.dd.commit(f, target); err != nil {
			return err
		}
		if x.wrote != nil {
			x.wrote()
		}
		return nil
	case tar.TypeSymlink:
		dest := h.Linkname
		resolved := dest
		if !filepath.IsAbs(dest) {
			resolved = filepath.Join(filepath.Dir(target), filepath.FromSlash(dest))
		}
		if !inside(x.root, filepath.Clean(resolved)) {
			return x.unsafe(rel, "symbolic link to "+dest+" points outside the target directory")
		}
		if err := x.mkdirAll(path.Dir(rel)); err != nil {
			return err
		}
		if err := x.dd.symlink(dest, target); err != nil {
			return err
		}
		x.links[rel] = true
		return nil
	case tar.TypeLink:
		src, err := x.clean(h.Linkname)
		if err != nil {
			return x.unsafe(rel, "hard link to "+h.Linkname+" points outside the target directory")
		}
		if err := x.checkParents(src); err != nil {
			return err
		}
		srcPath := filepath.Join(x.root, filepath.FromSlash(src))
		st, err := os.Lstat(srcPath)
		if err != nil || !st.Mode().IsRegular() {
			return x.unsafe(rel, "hard link to "+h.Linkname+", which is not a file extracted before it")
		}
		if err := x.mkdirAll(path.Dir(rel)); err != nil {
			return err
		}
		return x.dd.link(srcPath, target)
	}
	return x.unsafe(rel, fmt.Sprintf("unsupported entry type %q", h.Typeflag))
}
