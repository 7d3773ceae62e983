// Package monitor answers "is it healthy?" for an operator and for the
// machines around walkeeper: the status report (repository, server, slot,
// stream), the doctor's prerequisite checks, the HTTP health agent HAProxy
// polls, the haproxy.cfg generator, and node-exporter textfile metrics for
// the commands run from cron.
//
// Everything here only reads: the repository, the server's catalog views and
// the stream's heartbeat. Nothing in this package changes the repository or
// the server, except doctor's S3 probe, which writes, reads and deletes one
// object of its own under locks/.
package monitor
