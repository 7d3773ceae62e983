// Package test holds walkeeper's end-to-end tests: they build the walkeeper
// binary, start real PostgreSQL clusters and a real S3 server through
// test/harness, and check the results with PostgreSQL's own tools
// (pg_receivewal, pg_waldump, pg_verifybackup) as oracles on PostgreSQL 15.
// TestCompat (compat_test.go) runs the operations on every supported major
// (15 to 18) with the server itself as the oracle (docs/compatibility.md).
package test
