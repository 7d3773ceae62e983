package restore

import (
	"io/fs"
	"os"
	"strings"
	"testing"
)

func TestAccessFollowsThePermissionBits(t *testing.T) {
	pg := osUser{name: "postgres (uid 105)", uid: 105, groups: map[int]bool{110: true, 4: true}}
	dir := func(mode fs.FileMode, uid, gid int) entry { return entry{mode: fs.ModeDir | mode, uid: uid, gid: gid} }
	file := func(mode fs.FileMode, uid, gid int) entry { return entry{mode: mode, uid: uid, gid: gid} }
	for _, tc := range []struct {
		name string
		e    entry
		want permBits
		ok   bool
	}{
		{"root's private directory", dir(0o700, 0, 0), permX, false},
		{"world-enterable", dir(0o711, 0, 0), permX, true},
		{"owned by the user", dir(0o700, 105, 0), permR | permX, true},
		{"owner class wins over group", dir(0o070, 105, 110), permX, false},
		{"primary group", dir(0o750, 0, 110), permR | permX, true},
		{"supplementary group", file(0o640, 0, 4), permR, true},
		{"group without read", file(0o620, 0, 4), permR, false},
		{"other class for strangers", file(0o604, 0, 0), permR, true},
		{"root's private file", file(0o600, 0, 0), permR, false},
		{"an ACL is not judged", entry{mode: 0o600, acl: true}, permR, true},
	} {
		if got := tc.e.allows(pg, tc.want); got != tc.ok {
			t.Errorf("%s: allows = %v, want %v", tc.name, got, tc.ok)
		}
	}
	if !(entry{mode: 0o000}).allows(osUser{uid: 0}, permR) {
		t.Error("root is refused")
	}
}

func TestAccessCheckerNamesTheBlockingPath(t *testing.T) {
	pg := osUser{name: "postgres (uid 105)", uid: 105, groups: map[int]bool{110: true}}
	tree := map[string]entry{
		"/":                        {mode: fs.ModeDir | 0o755},
		"/srv":                     {mode: fs.ModeDir | 0o755},
		"/srv/repo":                {mode: fs.ModeDir | 0o700},
		"/srv/repo/walkeeper.json": {mode: 0o600},
		"/srv/open":                {mode: fs.ModeDir | 0o755, uid: 105},
		"/srv/open/walkeeper.json": {mode: 0o600, uid: 105},
		"/srv/open/wal":            {mode: fs.ModeDir | 0o700},
		"/usr":                     {mode: fs.ModeDir | 0o755},
		"/usr/local/bin/walkeeper": {mode: 0o755},
		"/usr/local":               {mode: fs.ModeDir | 0o755},
		"/usr/local/bin":           {mode: fs.ModeDir | 0o755},
		"/root":                    {mode: fs.ModeDir | 0o700},
		"/root/go/bin/walkeeper":   {mode: 0o755},
		"/root/go":                 {mode: fs.ModeDir | 0o755},
		"/root/go/bin":             {mode: fs.ModeDir | 0o755},
		"/srv/private-bin":         {mode: 0o700},
	}
	c := accessChecker{u: pg, stat: func(p string) (entry, error) {
		if e, ok := tree[p]; ok {
			return e, nil
		}
		return entry{}, os.ErrNotExist
	}}
	for _, tc := range []struct {
		path string
		want permBits
		why  string // "" when allowed
	}{
		{"/srv/repo", permX, "it cannot enter /srv/repo (/srv/repo is drwx------ root:root)"},
		{"/srv/repo/walkeeper.json", permR, "it cannot enter /srv/repo, on the way to /srv/repo/walkeeper.json"},
		{"/srv/open/walkeeper.json", permR, ""},
		{"/srv/open/wal", permR | permX, "it cannot list /srv/open/wal"},
		{"/srv/open/missing", permR, ""},
		{"/usr/local/bin/walkeeper", permX, ""},
		{"/root/go/bin/walkeeper", permX, "it cannot enter /root, on the way to /root/go/bin/walkeeper"},
		{"/srv/private-bin", permX, "it cannot run /srv/private-bin"},
	} {
		got := c.need(tc.path, tc.want, tc.path)
		if tc.why == "" && got != "" || tc.why != "" && !strings.HasPrefix(got, tc.why) {
			t.Errorf("%s: %q, want %q", tc.path, got, tc.why)
		}
	}
}
