package testenv

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// balancerDialTimeout is how long the balancer waits for one backend to
// accept before it tries the next.
const balancerDialTimeout = time.Second

// Balancer is a TCP load balancer, as production puts in front of a
// distributed store: it hands each client connection to the next backend
// in turn that accepts one, skipping those that refuse (a dead node), and
// copies bytes both ways until either side closes.
type Balancer struct {
	ln       net.Listener
	backends []string

	mu    sync.Mutex
	next  int
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewBalancer listens on host's free port ("host:0") and serves in the
// background until Close.
func NewBalancer(host string, backends []string) (*Balancer, error) {
	if len(backends) == 0 {
		return nil, errors.New("balancer: no backends")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("balancer: %w", err)
	}
	b := &Balancer{ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

// Addr is host:port the balancer listens on.
func (b *Balancer) Addr() string { return b.ln.Addr().String() }

// Close stops listening, closes every connection and waits for them.
func (b *Balancer) Close() error {
	err := b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.conns = nil
	b.mu.Unlock()
	b.wg.Wait()
	return err
}

func (b *Balancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		if !b.track(c) {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.handle(c)
		}()
	}
}

// track records c for Close; it closes c and reports false once the
// listener is closed.
func (b *Balancer) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns == nil {
		c.Close()
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *Balancer) untrack(c net.Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
	c.Close()
}

// dial connects to the next backend in turn that accepts.
func (b *Balancer) dial() (net.Conn, error) {
	b.mu.Lock()
	start := b.next
	b.next = (b.next + 1) % len(b.backends)
	b.mu.Unlock()
	var errs []error
	for i := range b.backends {
		addr := b.backends[(start+i)%len(b.backends)]
		c, err := net.DialTimeout("tcp", addr, balancerDialTimeout)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func (b *Balancer) handle(client net.Conn) {
	defer b.untrack(client)
	server, err := b.dial()
	if err != nil {
		return
	}
	if !b.track(server) {
		return
	}
	defer b.untrack(server)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// Half-close: the other direction may still have bytes to send.
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	<-done
}
