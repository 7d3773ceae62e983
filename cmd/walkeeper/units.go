package main

import "github.com/walkeeper/walkeeper/internal/units"

// parseSize parses "16MB", "512kB", "1GiB" or a plain number of bytes
// (units.ParseSize; the monitor package parses ?max-lag= with it too).
func parseSize(s string) (int64, error) { return units.ParseSize(s) }
