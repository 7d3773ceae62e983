package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/walkeeper/walkeeper/storage"
)

// Exit codes, documented in --help and README.md.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitLocked   = 3
	exitNotFound = 4   // wal-fetch: the requested file is not in the repository
	exitProblems = 5   // verify, status, doctor: the check ran and found problems
	exitFatal    = 126 // wal-fetch --fatal-errors: any other failure; PostgreSQL aborts recovery
)

// usageError is a mistake on the command line or in the configuration.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitCode maps an error returned by a command onto the documented codes.
func exitCode(err error) int {
	var ue usageError
	var fe fatalError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, storage.ErrNotFound) && errors.Is(err, errWALFetch):
		return exitNotFound
	case errors.As(err, &fe):
		return exitFatal
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, storage.ErrLocked):
		return exitLocked
	case errors.Is(err, errProblems):
		return exitProblems
	}
	return exitFailure
}

// errProblems marks the result of a check that ran to the end and found
// something wrong (verify, status, doctor): exit code 5, so monitoring can
// tell "unhealthy" from "could not check" (1). Wrap it:
// fmt.Errorf("%w: 2 problems, see the report above", errProblems).
var errProblems = errors.New("problems found")

// errWALFetch marks wal-fetch's errors, whose not-found has its own code.
var errWALFetch = errors.New("wal-fetch")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	setMemoryLimit(defaultMemoryLimit)
	stopCPU := startCPUProfile(os.Getenv(cpuProfileEnv))
	stopProfile := func() {
		stopCPU()
		writeHeapProfile(os.Getenv(heapProfileEnv))
	}
	err := newApp().RunContext(ctx, os.Args)
	stopProfile()
	stop()
	code := exitCode(err)
	if err != nil && code != exitNotFound {
		// One line, whatever the error wraps.
		msg := strings.ReplaceAll(err.Error(), "\n", "; ")
		fmt.Fprintln(os.Stderr, "walkeeper: "+msg)
	}
	os.Exit(code)
}

// cpuProfileEnv names a file to write a CPU profile of the run to
// (go tool pprof reads it). For measuring, not for production: it is an
// environment variable so that it never lands in a config file.
const cpuProfileEnv = "WALKEEPER_CPU_PROFILE"

// defaultMemoryLimit is the Go runtime's soft memory limit (see
// runtime/debug.SetMemoryLimit) unless GOMEMLIMIT sets one. What the
// commands keep live is bounded and does not grow with the database (a
// backup to S3, the largest, about 85 MB: two objects' part buffers and
// encoders, the receive queue); without a limit the collector still lets
// the heap grow to twice that before it runs, and short-lived garbage (one
// context per protocol message) gets it there on a large database. With
// the limit it collects earlier instead, so the peak RSS of stream, backup
// and restore stays under 150 MB (issue 13) at the cost of a collection
// every few hundred MB of garbage.
const defaultMemoryLimit = 112 << 20

// setMemoryLimit sets the soft memory limit to n bytes unless the operator
// chose one with GOMEMLIMIT. A restore with many workers raises it (its
// live memory grows with --parallel).
func setMemoryLimit(n int64) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(n)
	}
}

// heapProfileEnv names a file to write a heap profile to when the command
// ends: what was allocated where over the run (alloc_space) and what was
// live at the last collection (inuse_space). For measuring, like
// cpuProfileEnv.
const heapProfileEnv = "WALKEEPER_HEAP_PROFILE"

func writeHeapProfile(path string) {
	if path == "" {
		return
	}
	runtime.GC() // the profile counts what was allocated up to the last collection
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "walkeeper: %s: %v\n", heapProfileEnv, err)
	}
}

// startCPUProfile starts profiling into path ("" : not at all) and returns
// the function that stops it and writes the file.
func startCPUProfile(path string) func() {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "walkeeper: %s: %v (running without a profile)\n", cpuProfileEnv, err)
		if f != nil {
			f.Close()
		}
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
