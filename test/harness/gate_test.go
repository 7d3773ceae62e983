package harness_test

import (
	"bufio"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/walkeeper/walkeeper/test/harness"
)

// TestGate forwards through an open gate, cuts a forwarded connection and
// hangs up on new ones while shut, and forwards again once reopened.
func TestGate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // a line echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	g := harness.StartGate(t, ln.Addr().(*net.TCPAddr).Port)
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(g.Port()))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	echo := func(c net.Conn, r *bufio.Reader) error {
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return err
		}
		_, err := r.ReadString('\n')
		return err
	}

	c1, r1 := dial()
	defer c1.Close()
	if err := echo(c1, r1); err != nil {
		t.Fatalf("open gate: %v", err)
	}
	g.Shut()
	if err := echo(c1, r1); err == nil {
		t.Fatal("a forwarded connection survived Shut")
	}
	c2, r2 := dial()
	defer c2.Close()
	if err := echo(c2, r2); err == nil {
		t.Fatal("a new connection was forwarded through a shut gate")
	}
	g.Open()
	c3, r3 := dial()
	defer c3.Close()
	if err := echo(c3, r3); err != nil {
		t.Fatalf("reopened gate: %v", err)
	}
}
