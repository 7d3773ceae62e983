package harness

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
)

// Gate is a TCP forwarder on 127.0.0.1 in front of a server port: a test
// puts Port() in a client's connection string instead of the server's and
// can then cut the network between them (a partition) without stopping
// the server. While open, every new connection is forwarded to the target;
// while shut, new connections are accepted and closed at once (the client
// sees the server hang up during start-up, as with a dead host behind a
// proxy) and the connections being forwarded are cut. It is closed when
// the test ends.
type Gate struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	open  bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartGate starts an open gate forwarding to 127.0.0.1:targetPort.
func StartGate(t testing.TB, targetPort int) *Gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("harness: gate: %v", err)
	}
	g := &Gate{ln: ln, target: "127.0.0.1:" + strconv.Itoa(targetPort), open: true, conns: map[net.Conn]struct{}{}}
	g.wg.Add(1)
	go g.accept()
	t.Cleanup(func() {
		ln.Close()
		g.Shut()
		g.wg.Wait()
	})
	return g
}

// Port is the port clients connect to.
func (g *Gate) Port() int { return g.ln.Addr().(*net.TCPAddr).Port }

// Shut refuses new connections and cuts the open ones.
func (g *Gate) Shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = false
	for c := range g.conns {
		c.Close()
	}
}

// Open forwards new connections again.
func (g *Gate) Open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = true
}

func (g *Gate) accept() {
	defer g.wg.Done()
	for {
		c, err := g.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		g.wg.Add(1)
		go g.forward(c)
	}
}

// track registers c as a forwarded connection; false when the gate is
// shut (c is then not registered).
func (g *Gate) track(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.open {
		return false
	}
	g.conns[c] = struct{}{}
	return true
}

func (g *Gate) untrack(c net.Conn) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.conns, c)
	c.Close()
}

func (g *Gate) forward(client net.Conn) {
	defer g.wg.Done()
	if !g.track(client) {
		client.Close()
		return
	}
	defer g.untrack(client)
	server, err := net.Dial("tcp", g.target)
	if err != nil {
		return
	}
	if !g.track(server) {
		server.Close()
		return
	}
	defer g.untrack(server)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// One direction ended: end both, as a proxy does.
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	<-done
}
