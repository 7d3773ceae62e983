// Package units parses the quantities operators type: sizes like "16MB",
// with PostgreSQL's meaning of the units.
package units
