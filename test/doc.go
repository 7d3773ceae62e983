// Package test holds walkeeper's end-to-end tests: they build the walkeeper
// binary, start real PostgreSQL 15 clusters and a real S3 server through
// test/harness, and check the results with PostgreSQL's own tools
// (pg_receivewal, pg_waldump, pg_verifybackup) as oracles.
package test
