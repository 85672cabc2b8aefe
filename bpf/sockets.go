package bpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
)

// tcpListen is TCP_LISTEN in the kernel's tcp_states.h; TCP_CLOSE (7) is
// what an unconnected UDP socket reports.
const (
	tcpListen = 10
	udpClose  = 7
)

// dumpRetries bounds retries of a sock_diag dump interrupted by concurrent
// socket changes (NLM_F_DUMP_INTR).
const dumpRetries = 5

// ListSockets returns the local services: listening TCP sockets and bound,
// unconnected UDP sockets, IPv4 and IPv6, from sock_diag in the collector's
// network namespace. UDP sockets bound inside the ephemeral range are left
// out: they are almost always clients using sendto(), and counting them as
// services would turn client traffic into "inbound" flows.
func (c *Collector) ListSockets() ([]snapshot.Socket, error) {
	var out []snapshot.Socket
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		tcp, err := retryDump(func() ([]*netlink.Socket, error) { return c.nl.SocketDiagTCP(fam) })
		if err != nil {
			return nil, fmt.Errorf("sock_diag tcp: %w", err)
		}
		for _, s := range tcp {
			if s.State == tcpListen {
				out = append(out, toSocket(snapshot.TCP, s))
			}
		}
		udp, err := retryDump(func() ([]*netlink.Socket, error) { return c.nl.SocketDiagUDP(fam) })
		if err != nil {
			return nil, fmt.Errorf("sock_diag udp: %w", err)
		}
		for _, s := range udp {
			if s.State != udpClose || s.ID.DestinationPort != 0 {
				continue // connected: a client
			}
			if p := s.ID.SourcePort; p >= c.ephemeral[0] && p <= c.ephemeral[1] {
				continue
			}
			out = append(out, toSocket(snapshot.UDP, s))
		}
	}
	snapshot.SortSockets(out)
	return dedupSockets(out), nil
}

func dedupSockets(in []snapshot.Socket) []snapshot.Socket {
	out := in[:0]
	for i, s := range in {
		if i > 0 && s == in[i-1] {
			continue
		}
		out = append(out, s)
	}
	return out
}

func retryDump(fn func() ([]*netlink.Socket, error)) ([]*netlink.Socket, error) {
	var err error
	for i := 0; i < dumpRetries; i++ {
		var socks []*netlink.Socket
		socks, err = fn()
		if err == nil {
			return socks, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("dump interrupted %d times: %w", dumpRetries, err)
}

func toSocket(p snapshot.Proto, s *netlink.Socket) snapshot.Socket {
	a, _ := netip.AddrFromSlice(s.ID.Source)
	if s.ID.Source == nil || s.ID.Source.Equal(net.IPv4zero) {
		a = netip.IPv4Unspecified()
	}
	return snapshot.Socket{Proto: p, Addr: a.Unmap(), Port: s.ID.SourcePort}
}

// SetLocalPorts replaces the local-service port set the programs consult
// first when deciding a packet's direction.
func (c *Collector) SetLocalPorts(socks []snapshot.Socket) error {
	var set flowauditLocalPortSet
	for _, s := range socks {
		var words *[1024]uint64
		switch s.Proto {
		case snapshot.TCP:
			words = &set.Tcp
		case snapshot.UDP:
			words = &set.Udp
		case snapshot.SCTP:
			words = &set.Sctp
		default:
			continue
		}
		words[s.Port>>6] |= 1 << (s.Port & 63)
	}
	c.portsMu.Lock()
	defer c.portsMu.Unlock()
	if err := c.objs.LocalPorts.Update(uint32(0), &set, 0); err != nil {
		return fmt.Errorf("update local ports: %w", err)
	}
	// After the update: a fast-path stamp taken before it is now stale
	// (ports_epoch_user in flowaudit.c). Only this function writes it.
	var epoch uint64
	if err := c.objs.PortsEpochUser.Get(&epoch); err != nil {
		return fmt.Errorf("read ports epoch: %w", err)
	}
	if err := c.objs.PortsEpochUser.Set(epoch + 1); err != nil {
		return fmt.Errorf("bump ports epoch: %w", err)
	}
	return nil
}

// RefreshSockets lists the local services and loads them into the kernel.
func (c *Collector) RefreshSockets() ([]snapshot.Socket, error) {
	socks, err := c.ListSockets()
	if err != nil {
		return nil, err
	}
	return socks, c.SetLocalPorts(socks)
}

// SocketRefresher keeps the kernel's local-port set current and remembers
// every service socket seen while it ran, and when it was last seen.
type SocketRefresher struct {
	c    *Collector
	seen map[snapshot.Socket]time.Time
	done chan struct{}
	stop context.CancelFunc
	// failures counts refreshes that failed (each is logged; the
	// previous socket set stays in force).
	failures atomic.Uint64
}

// StartSocketRefresh refreshes now (an error here is returned) and then
// every interval until Stop.
func (c *Collector) StartSocketRefresh(interval time.Duration) (*SocketRefresher, error) {
	r := &SocketRefresher{c: c, seen: map[snapshot.Socket]time.Time{}, done: make(chan struct{})}
	socks, err := c.RefreshSockets()
	if err != nil {
		return nil, err
	}
	r.add(socks)
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() {
		defer close(r.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				socks, err := c.RefreshSockets()
				if err != nil {
					r.failures.Add(1)
					c.log.Warn("refresh local sockets", zap.Error(err))
					continue
				}
				r.add(socks)
			}
		}
	}()
	return r, nil
}

func (r *SocketRefresher) add(socks []snapshot.Socket) {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	now := time.Now()
	for _, s := range socks {
		r.seen[s] = now
	}
}

// Seen returns every service socket seen so far, sorted.
func (r *SocketRefresher) Seen() []snapshot.Socket { return r.SeenSince(time.Time{}) }

// SeenSince returns the service sockets seen at t or later, sorted: the
// sockets of a sliding window.
func (r *SocketRefresher) SeenSince(t time.Time) []snapshot.Socket {
	r.c.mu.Lock()
	out := make([]snapshot.Socket, 0, len(r.seen))
	for s, last := range r.seen {
		if !last.Before(t) {
			out = append(out, s)
		}
	}
	r.c.mu.Unlock()
	snapshot.SortSockets(out)
	return out
}

// Failures is how many periodic refreshes failed so far.
func (r *SocketRefresher) Failures() uint64 { return r.failures.Load() }

// Stop ends the refresh loop and waits for it.
func (r *SocketRefresher) Stop() {
	r.stop()
	<-r.done
}
