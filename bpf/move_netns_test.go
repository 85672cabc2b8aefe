package bpf

import (
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// TestNetnsMovesLoseNothing: real traffic over veth while the collector
// moves the counts out of the kernel every few milliseconds. Every
// datagram and every answer must be counted exactly once, whatever move it
// straddled: the generation flip plus the RCU grace period leave no window
// in which a packet is counted into a map being emptied.
func TestNetnsMovesLoseNothing(t *testing.T) {
	const (
		datagrams = 60000
		window    = 64 // datagrams in flight: far below the veth ring (256)
		minMoves  = 50
		chunk     = datagrams / (2 * minMoves) // answers between waits for a move
	)
	a, b := testenv.NewPair(t)
	var c *Collector
	if err := a.Do(func() (err error) { c, err = Open(Options{SocketsKnown: true}); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Attach(a.Iface, AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := netip.AddrPortFrom(a.IPv4, 1514)
	var pc net.PacketConn
	if err := a.Do(func() (err error) { pc, err = net.ListenPacket("udp", svc.String()); return }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := c.RefreshSockets(); err != nil {
		t.Fatal(err)
	}
	// The appliance answers every datagram (so both hooks count).
	echoed := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		for i := 0; i < datagrams; i++ {
			pc.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				echoed <- fmt.Errorf("echo %d: %w", i, err)
				return
			}
			if _, err := pc.WriteTo(buf[:n], from); err != nil {
				echoed <- err
				return
			}
		}
		echoed <- nil
	}()

	// Moves as fast as the kernel allows, until the traffic is done.
	var stop atomic.Bool
	var done atomic.Int64 // moves completed so far
	moves := make(chan int, 1)
	moveErr := make(chan error, 1)
	go func() {
		n := 0
		for !stop.Load() {
			if _, err := c.Move(); err != nil {
				moveErr <- err
				break
			}
			n++
			done.Store(int64(n))
			time.Sleep(2 * time.Millisecond)
		}
		moves <- n
		close(moveErr)
	}()

	deadline := time.Now().Add(2 * time.Minute) // bound: the loop ends on count or time
	err := b.Do(func() error {
		conn, err := net.Dial("udp", svc.String())
		if err != nil {
			return err
		}
		defer conn.Close()
		buf := make([]byte, 64)
		sent, got := 0, 0
		seen := done.Load()
		for got < datagrams {
			if time.Now().After(deadline) {
				return fmt.Errorf("timed out: %d sent, %d answered", sent, got)
			}
			// The traffic waits for a move after every chunk of answers,
			// so at least 2*minMoves-1 moves fall inside it however fast
			// the box sends (on a slow one the traffic had outrun the
			// moves: 44-48 of them in 1.4 s).
			if got > 0 && got%chunk == 0 {
				for done.Load() == seen {
					if time.Now().After(deadline) {
						return fmt.Errorf("timed out waiting for a move: %d sent, %d answered", sent, got)
					}
					time.Sleep(time.Millisecond)
				}
				seen = done.Load()
			}
			for sent < datagrams && sent-got < window {
				if _, err := conn.Write([]byte("log line")); err != nil {
					return err
				}
				sent++
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
			if _, err := conn.Read(buf); err != nil {
				return fmt.Errorf("answer %d: %w", got, err)
			}
			got++
		}
		return nil
	})
	stop.Store(true)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-echoed; err != nil {
		t.Fatal(err)
	}
	n := <-moves
	if err := <-moveErr; err != nil {
		t.Fatal(err)
	}
	if n < minMoves {
		t.Fatalf("only %d moves during the traffic, want at least %d", n, minMoves)
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	var f *snapshot.Flow
	for i := range r.Flows {
		g := &r.Flows[i]
		if g.Direction == snapshot.Inbound && g.Proto == snapshot.UDP && g.Port == 1514 && g.Peer == b.IPv4 {
			f = g
		}
	}
	if f == nil {
		t.Fatalf("no inbound udp/1514 flow from %s: %+v", b.IPv4, r.Flows)
	}
	t.Logf("%d moves; udp/1514: in %d out %d; stats %+v", n, f.PacketsIn, f.PacketsOut, r.Stats)
	if f.PacketsIn != datagrams || f.PacketsOut != datagrams {
		t.Errorf("counted %d in and %d out across %d moves, sent %d each way", f.PacketsIn, f.PacketsOut, n, datagrams)
	}
	// ReadMaps moved once more.
	if r.Stats.FlowInsertFailed != 0 || r.Stats.OverflowInsertFailed != 0 || r.Stats.Moves != uint64(n)+1 {
		t.Errorf("stats %+v after %d moves", r.Stats, n)
	}
}
