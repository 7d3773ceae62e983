package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walkeeper/walkeeper/storage"
)

var keygenOutputFlag = &cli.StringFlag{
	Name:    "output",
	Aliases: []string{"o"},
	Usage:   "write the private key to `FILE` (created with mode 0600, never overwritten) and print only the public key",
}

func init() {
	commands = append(commands, &cli.Command{
		Name:  "keygen",
		Usage: "generate an age key pair for an encrypted repository",
		Description: `Prints a new age key pair: the private key as an age identity file (what
--identity-file reads; age-keygen writes the same format) with the public
key in a comment. With --output FILE the private key goes into FILE (mode
0600; an existing file is never overwritten) and only the public key
(age1..., what --encrypt-to takes) is printed.

Give the database host only the public key: stream, backup and wal-push
encrypt with it but cannot decrypt. Keep the private key where restores
run, and a copy offline: without it the repository cannot be read.
Details: docs/encryption.md.`,
		Flags:  []cli.Flag{keygenOutputFlag},
		Action: keygenAction,
	})
}

func keygenAction(c *cli.Context) error {
	if c.NArg() != 0 {
		return usagef("keygen takes no arguments")
	}
	identity, recipient, err := storage.GenerateKeyPair()
	if err != nil {
		return err
	}
	file := fmt.Sprintf("# created: %s\n# public key: %s\n%s\n", time.Now().UTC().Format(time.RFC3339), recipient, identity)
	path := c.String(keygenOutputFlag.Name)
	if path == "" {
		_, err := fmt.Fprint(c.App.Writer, file)
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists: refusing to overwrite a key; choose another --output", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(file); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.App.Writer, recipient)
	return err
}
