package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildBinary compiles walkeeper once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "walkeeper")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// run executes the binary with a clean WALKEEPER_* environment.
func run(t *testing.T, bin string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WALKEEPER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestCLIUsageErrors(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	badConfig := filepath.Join(dir, "bad.toml")
	os.WriteFile(badConfig, []byte("repo = \"/tmp/x\"\nrepository = \"typo\"\n"), 0o600)
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"unknown flag", nil, []string{"--bogus"}, "flag provided but not defined: -bogus"},
		{"unknown command", nil, []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"bad repo scheme", nil, []string{"--repo", "ftp://host/x"}, `unsupported scheme "ftp"`},
		{"relative repo", nil, []string{"--repo", "relative/dir"}, "invalid --repo"},
		{"s3 without bucket", nil, []string{"--repo", "s3:///prefix"}, "missing bucket"},
		{"bad repo from env", []string{"WALKEEPER_REPO=gs://x"}, nil, `unsupported scheme "gs"`},
		{"bad compression", nil, []string{"--compression", "rar"}, `unknown compression "rar"`},
		{"bad log level", nil, []string{"--log-level", "loud"}, "--log-level"},
		{"unknown config key", nil, []string{"--config", badConfig}, `unknown setting "repository"`},
		{"missing config file", nil, []string{"--config", filepath.Join(dir, "nope.toml")}, "config file"},
		{"bad part size", nil, []string{"--s3-part-size", "lots"}, "invalid size"},
		{"restore command without %p", nil, []string{"restore", "--repo", dir, "--target-dir", filepath.Join(dir, "t"), "--restore-command", "cp /x"}, "has no %p"},
		{"target time without zone", nil, []string{"restore", "--repo", dir, "--target-dir", filepath.Join(dir, "t"), "--target-time", "2026-11-26 14:30:00"}, "has no time zone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := run(t, bin, tc.env, tc.args...)
			if code != exitUsage {
				t.Errorf("exit code %d, want %d (stderr %q)", code, exitUsage, stderr)
			}
			if strings.Count(strings.TrimRight(stderr, "\n"), "\n") != 0 || !strings.HasPrefix(stderr, "walkeeper: ") {
				t.Errorf("stderr is not one line starting with 'walkeeper: ': %q", stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr, tc.want)
			}
			if stdout != "" {
				t.Errorf("stdout not empty: %q", stdout)
			}
		})
	}
}

func TestCLIHelpAndVersion(t *testing.T) {
	bin := buildBinary(t)
	stdout, _, code := run(t, bin, nil, "--version")
	if code != 0 || !strings.HasPrefix(stdout, "walkeeper version ") {
		t.Errorf("--version: code %d, %q", code, stdout)
	}
	stdout, _, code = run(t, bin, nil, "--help")
	if code != 0 {
		t.Errorf("--help exit %d", code)
	}
	for _, want := range []string{"Exit codes:", "WALKEEPER_REPO", "--s3-endpoint", "3  another walkeeper run holds"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

// TestCLIPrecedence proves default < config < environment < flag with a
// setting whose bad value is observable (a usage error names it).
func TestCLIPrecedence(t *testing.T) {
	bin := buildBinary(t)
	cfg := filepath.Join(t.TempDir(), "walkeeper.toml")
	os.WriteFile(cfg, []byte("repo = \"ftp://from-config\"\n"), 0o600)

	_, stderr, code := run(t, bin, nil, "--config", cfg)
	if code != exitUsage || !strings.Contains(stderr, "from-config") {
		t.Errorf("config value not applied: code %d, %q", code, stderr)
	}
	_, stderr, code = run(t, bin, []string{"WALKEEPER_CONFIG=" + cfg}, "--repo", "/tmp/from-flag")
	if code != 0 {
		t.Errorf("flag should override config: code %d, %q", code, stderr)
	}
	_, stderr, code = run(t, bin, []string{"WALKEEPER_REPO=/tmp/from-env"}, "--config", cfg)
	if code != 0 {
		t.Errorf("environment should override config: code %d, %q", code, stderr)
	}
	_, stderr, code = run(t, bin, []string{"WALKEEPER_REPO=/tmp/from-env"}, "--config", cfg, "--repo", "ftp://from-flag")
	if code != exitUsage || !strings.Contains(stderr, "from-flag") {
		t.Errorf("flag should override environment: code %d, %q", code, stderr)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "8MB": 8 << 20, "16 MB": 16 << 20, "1GiB": 1 << 30, "64kB": 64 << 10, "2TB": 2 << 40, "10B": 10} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "-1", "1.5GB", "12XB", "99999999999TB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}
