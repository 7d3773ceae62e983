// Package archive is walkeeper's one model of the WAL side of the
// repository: the objects under wal/ and what they mean for recovery. It is
// the only code that parses wal/ keys; the stream, wal-push, wal-fetch,
// backup, retention, verify and status ask it instead of reading keys.
//
// # Names
//
// A WAL file name is PostgreSQL's: a segment "TTTTTTTTXXXXXXXXYYYYYYYY"
// (timeline, then the segment number split at 4 GB), its unfinished prefix
// "<segment>.partial", a timeline history file "TTTTTTTT.history" and a
// backup history file "<segment>.OOOOOOOO.backup". ParseName and Name.File
// are a matched pair. Where a name is stored is the repository's Layout
// (its format version): "wal/" + name in format 1, "wal/" + the first 16
// digits + "/" + name for segments, partials and backup history files in
// format 2 (history files stay at the top), then the codec's extension
// (Layout.Key, NameOfKey, which reads either).
//
// # Timelines
//
// A history file lists a timeline's ancestors and where each ended (its
// switch point). The Graph holds them; Path is the line of timelines
// recovery follows to one timeline. On a path, segment S belongs to the
// newest timeline that began at or before S (Path.Owner, as PostgreSQL's
// XLogFileReadAnyTLI): the segment holding a switch point is read from the
// new timeline, and WAL an old timeline holds past its switch point (the
// tail a crashed primary wrote after its standby forked) is off the path.
// A segment of one timeline never fills a hole of another.
//
// # Questions and their cost
//
//   - One file (wal-fetch, wal-push, the stream storing a segment, the
//     backup waiting for its WAL): Find, LookupSegment, ForFetch, Reaches.
//     A fixed number of requests, whatever the archive holds.
//   - From a segment on (status, the stream's start): LoadFrom probes the
//     history files and lists each timeline from that segment on, so the
//     cost follows the WAL listed, not the objects before it (S3 starts
//     the listing there; the local directory reads names only).
//   - Everything (verify, retention): Load.
//
// On an Index: EndOn is the newest WAL along a path; Gaps the segments a
// path needs and lacks; Target how far a path must reach (an ancestor's
// abandoned tail with nothing of the new timeline counts as missing WAL of
// the new one, since recovery to 'latest' would replay it); ContinueAt
// where a stream continues the archive after the run of WAL that starts at
// an anchor (the newest backup on the server's path).
//
// # Invariants
//
//   - Ingest writes here and nowhere else outside the stream: PushWAL
//     (archive_command's wal-push: checks the file's page header against
//     walkeeper.json, stores it once, never overwrites different content)
//     and RemovePartials, which deletes the .partial objects a stored
//     complete segment supersedes. Every other function only reads.
//   - An index from LoadFrom answers only for segments from its From on.
//   - The wal-fetch rule: a segment stored complete is served as is; one
//     stored only as .partial is served zero-padded (it is a prefix of the
//     segment's WAL, so recovery stops at the zeros as at the end of WAL).
package archive
