package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
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
	stopProfile := startCPUProfile(os.Getenv(cpuProfileEnv))
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
