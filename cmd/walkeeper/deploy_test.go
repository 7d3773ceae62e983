package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/urfave/cli/v2"
)

const exampleConfig = "../../deploy/walkeeper.toml"

// TestExampleConfigLoads runs the binary with deploy/walkeeper.toml: the
// loader rejects unknown keys, so this proves every active key is a flag.
func TestExampleConfigLoads(t *testing.T) {
	bin := buildBinary(t)
	_, stderr, code := run(t, bin, nil, "--config", exampleConfig)
	if code != 0 {
		t.Fatalf("walkeeper --config %s: exit %d: %s", exampleConfig, code, stderr)
	}
	_, stderr, code = run(t, bin, nil, "list", "--config", exampleConfig, "--repo", t.TempDir())
	if code != 0 {
		t.Fatalf("walkeeper list --config %s: exit %d: %s", exampleConfig, code, stderr)
	}
}

// TestExampleConfigCommentedKeys checks the commented-out examples too: each
// "# key = value" line, uncommented, must name a flag and hold a value that
// flag accepts, so an operator can uncomment any of them.
func TestExampleConfigCommentedKeys(t *testing.T) {
	data, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	app := newApp()
	flags := map[string]cli.Flag{}
	for _, f := range app.Flags {
		flags[f.Names()[0]] = f
	}
	for _, cmd := range app.Commands {
		for _, f := range cmd.Flags {
			flags[f.Names()[0]] = f
		}
	}
	setting := regexp.MustCompile(`^#?\s*([a-z0-9-]+)\s*=\s*(.*)$`)
	seen := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		m := setting.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		// Drop a trailing comment; values here hold no " #".
		kv := m[1] + " = " + strings.TrimSpace(strings.SplitN(m[2], " #", 2)[0])
		var values map[string]any
		if _, err := toml.Decode(kv, &values); err != nil {
			t.Errorf("line %d %q: not valid TOML when uncommented: %v", i+1, line, err)
			continue
		}
		key := m[1]
		seen[key] = true
		f, ok := flags[key]
		if !ok {
			t.Errorf("line %d: unknown setting %q", i+1, key)
			continue
		}
		fs := flag.NewFlagSet(key, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		if err := f.Apply(fs); err != nil {
			t.Fatal(err)
		}
		items, isList := values[key].([]any)
		if !isList {
			items = []any{values[key]}
		}
		for _, item := range items {
			if err := fs.Set(key, fmt.Sprint(item)); err != nil {
				t.Errorf("line %d: %s = %v: %v", i+1, key, item, err)
			}
		}
	}
	// Every flag is documented in the example (config is the file itself).
	for name := range flags {
		if !seen[name] && name != configFlag.Name && name != lockFDFlag.Name && name != keygenOutputFlag.Name && name != "help" {
			t.Errorf("flag --%s is missing from %s", name, exampleConfig)
		}
	}
}
