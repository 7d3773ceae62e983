package harness

import "testing"

// RestoreTarget prepares a cluster whose data directory (DataDir, not yet
// created) a test fills with `walkeeper restore`. Its parent directory
// belongs to the postgres OS user, so a restore running as root gives the
// restored files to postgres. StartRestored starts it.
func (c *Cluster) RestoreTarget(t testing.TB, name string) *Cluster {
	t.Helper()
	r := c.sibling(t, name)
	return r
}

// StartRestored points the restored data directory's harness settings (port,
// socket directory) at this cluster and starts it. It returns once the
// server accepts connections (for a standby or a recovery in progress: once
// it is consistent).
func (c *Cluster) StartRestored(t testing.TB) {
	t.Helper()
	if err := c.writeHarnessConf(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	c.Start(t)
}

// SetEnv adds variables to the server's environment from its next start,
// e.g. AWS_* for a restore_command that reads S3.
func (c *Cluster) SetEnv(env []string) { c.env = append(c.env, env...) }
