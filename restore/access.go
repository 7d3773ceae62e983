package restore

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// Can the restored server read the repository?
//
// restore_command runs as the server's OS user (the owner restore gives
// the files to), not as the user running restore. A local repository
// written by root is private to root (directories 0700, files 0600): the
// server then fails at its first restore_command with "could not restore
// file", after the whole backup was restored. So before anything is
// written, restore checks with the permission bits, for that user's uid,
// primary group and supplementary groups, that it can enter every directory
// from / down to the repository, list wal/, read walkeeper.json and the
// first WAL segment the backup needs, and run the binary restore_command
// names. A path with a POSIX ACL is not judged (its bits do not tell), and
// root is never refused.

// permBits are the classic permission bits.
type permBits uint32

const (
	permX permBits = 1
	permW permBits = 2
	permR permBits = 4
)

// osUser is who is checked: uid and every group it belongs to.
type osUser struct {
	name   string
	uid    int
	groups map[int]bool
}

// lookupOSUser finds the name and groups of the owner's uid.
func lookupOSUser(own *owner) osUser {
	u := osUser{name: "uid " + strconv.Itoa(own.uid), uid: own.uid, groups: map[int]bool{own.gid: true}}
	if pw, err := user.LookupId(strconv.Itoa(own.uid)); err == nil {
		u.name = pw.Username + " (uid " + pw.Uid + ")"
		if gids, err := pw.GroupIds(); err == nil {
			for _, g := range gids {
				if n, err := strconv.Atoi(g); err == nil {
					u.groups[n] = true
				}
			}
		}
	}
	return u
}

// entry is what the check reads of one path.
type entry struct {
	mode     fs.FileMode
	uid, gid int
	acl      bool // has a POSIX access ACL
}

// statEntry reads p's entry, following symbolic links as the server's
// lookups do.
func statEntry(p string) (entry, error) {
	st, err := os.Stat(p)
	if err != nil {
		return entry{}, err
	}
	sys := st.Sys().(*syscall.Stat_t)
	e := entry{mode: st.Mode(), uid: int(sys.Uid), gid: int(sys.Gid)}
	if _, err := syscall.Getxattr(p, "system.posix_acl_access", nil); err == nil {
		e.acl = true
	}
	return e, nil
}

// allows reports whether u may access e for want, as the kernel decides
// from the bits: the owner class for the owner, else the group class for a
// member of the file's group, else the other class.
func (e entry) allows(u osUser, want permBits) bool {
	if u.uid == 0 || e.acl {
		return true
	}
	bits := permBits(e.mode.Perm())
	switch {
	case u.uid == e.uid:
		bits >>= 6
	case u.groups[e.gid]:
		bits >>= 3
	}
	return bits&want == want
}

func (e entry) describe(p string) string {
	return fmt.Sprintf("%s is %v %s:%s", p, e.mode, ownerName(e.uid), groupName(e.gid))
}

func ownerName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}

func groupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return g.Name
	}
	return strconv.Itoa(gid)
}

// accessChecker walks paths for one user; stat is statEntry but for tests.
type accessChecker struct {
	u    osUser
	stat func(string) (entry, error)
}

// need checks that u can enter every directory above p and access p for
// want, and says why not ("" when it can). A missing path is not this
// check's business.
func (c accessChecker) need(p string, want permBits, what string) string {
	p = filepath.Clean(p)
	var dirs []string
	for d := filepath.Dir(p); ; d = filepath.Dir(d) {
		dirs = append([]string{d}, dirs...)
		if d == filepath.Dir(d) {
			break
		}
	}
	for _, d := range dirs {
		e, err := c.stat(d)
		if err != nil {
			return ""
		}
		if !e.allows(c.u, permX) {
			return fmt.Sprintf("it cannot enter %s, on the way to %s (%s)", d, what, e.describe(d))
		}
	}
	e, err := c.stat(p)
	if err != nil {
		return ""
	}
	if !e.allows(c.u, want) {
		verb := map[permBits]string{permX: "enter", permR: "read", permR | permX: "list"}[want]
		if want == permX && !e.mode.IsDir() {
			verb = "run"
		}
		return fmt.Sprintf("it cannot %s %s (%s)", verb, what, e.describe(p))
	}
	return ""
}

// checkServerAccess refuses a restore whose restore_command the server's OS
// user could not run: the binary, the key files it reads (keyFiles: the
// identity or passphrase file), a local repository (repoDir, "" for S3)
// and the first WAL segment the backup needs (firstWAL, a path below
// repoDir, "" when not stored there).
func checkServerAccess(own *owner, repoDir, binary string, keyFiles, firstWAL []string) error {
	if own == nil || own.uid == 0 {
		return nil
	}
	c := accessChecker{u: lookupOSUser(own), stat: statEntry}
	if binary != "" {
		if why := c.need(binary, permX, binary); why != "" {
			return fmt.Errorf("the restored server's OS user %s cannot run restore_command, which calls %s: %s; install walkeeper where that user can run it (e.g. /usr/local/bin), or give your own --restore-command",
				c.u.name, binary, why)
		}
	}
	// The identity or passphrase file, which restore_command names by its
	// path: unreadable, recovery would fail at its first segment.
	for _, f := range keyFiles {
		if why := c.need(f, permR, f); why != "" {
			return fmt.Errorf("the restored server's OS user %s cannot read the key file %s, which its restore_command reads: %s; give that user read access (e.g. chown %s %s; keep it mode 0600)",
				c.u.name, f, why, ownerName(own.uid), f)
		}
	}
	if repoDir == "" {
		return nil
	}
	checks := []struct {
		p    string
		want permBits
	}{
		{repoDir, permX},
		{filepath.Join(repoDir, "walkeeper.json"), permR},
		{filepath.Join(repoDir, "wal"), permR | permX},
	}
	for _, f := range firstWAL {
		checks = append(checks, struct {
			p    string
			want permBits
		}{f, permR})
	}
	for _, ck := range checks {
		if why := c.need(ck.p, ck.want, ck.p); why != "" {
			return fmt.Errorf("the restored server's OS user %s cannot read the repository %s, which its restore_command reads: %s; give that user access (e.g. chown -R %s %s, or chmod/setfacl), run walkeeper stream and backup as that user, or give your own --restore-command",
				c.u.name, repoDir, why, ownerName(own.uid), repoDir)
		}
	}
	return nil
}
