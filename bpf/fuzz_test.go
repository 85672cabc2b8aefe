package bpf_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/replay"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// FuzzDatapath feeds arbitrary bytes through the XDP, TC egress and TC
// ingress programs with BPF_PROG_TEST_RUN, one after the other on the same
// maps, and checks what must hold for any input:
//
//   - every run passes the frame on (XDP_PASS, TCX_NEXT); test_run refuses
//     only what the kernel documents (no Ethernet header; for skb programs
//     an IPv4/IPv6 ethertype without the whole fixed header);
//   - every packet is accounted exactly once: the packets the programs saw
//     equal the flow packets plus the non-IP packets, and the bytes add up
//     to the frame lengths;
//   - no flow key is impossible: ports only for TCP/UDP/SCTP/ICMP(v6),
//     fragments and portless flows have no direction, the heuristic flag
//     only where a port decided, echo replies never get a key of their
//     own, evidence only on the side it belongs to.
//
// Seeds: the frames under testdata/fuzz/FuzzDatapath, and when tcpdump's
// test corpus is present (../shared/corpus/tcpdump-tests, or
// $FLOWAUDIT_CORPUS), the first frames of every capture replay reads.
//
//	go test ./bpf -run '^$' -fuzz FuzzDatapath -fuzztime 10m
func FuzzDatapath(f *testing.F) {
	testenv.RequireBPF(f)
	dir := os.Getenv("FLOWAUDIT_CORPUS")
	if dir == "" {
		dir = filepath.Join("..", "..", "shared", "corpus", "tcpdump-tests")
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.pcap*"))
	sort.Strings(files)
	seeds := 0
	for _, path := range files {
		n := 0
		replay.Frames(path, func(frame []byte) bool { //nolint:errcheck // unreadable files add no seeds
			f.Add(append([]byte(nil), frame...))
			n++
			return n < 4
		})
		seeds += n
	}
	f.Logf("%d seed frames from %d captures in %s", seeds, len(files), dir)

	var (
		once sync.Once
		c    *bpf.Collector
		err  error
	)
	f.Fuzz(func(t *testing.T, frame []byte) {
		once.Do(func() {
			c, err = bpf.Open(bpf.Options{EphemeralPorts: replay.DefaultEphemeralPorts, FlowEntries: 4096})
		})
		if err != nil {
			t.Fatal(err)
		}
		checkFrame(t, c, frame)
	})
}

// fuzzListening: a few local services, so the socket rule is exercised.
var fuzzListening = []snapshot.Socket{{Proto: snapshot.TCP, Port: 22}, {Proto: snapshot.UDP, Port: 514}, {Proto: snapshot.SCTP, Port: 3868}}

func checkFrame(t *testing.T, c *bpf.Collector, frame []byte) {
	if len(frame) > replay.MaxFrame {
		frame = frame[:replay.MaxFrame]
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetLocalPorts(fuzzListening); err != nil {
		t.Fatal(err)
	}
	var runs, bytes uint64
	for _, h := range []bpf.Hook{bpf.HookXDP, bpf.HookTCEgress, bpf.HookTCIngress} {
		ret, err := c.Run(h, frame)
		refused := len(frame) < 14
		if h != bpf.HookXDP && !refused {
			et := binary.BigEndian.Uint16(frame[12:14])
			refused = (et == 0x0800 && len(frame) < 34) || (et == 0x86dd && len(frame) < 54)
		}
		switch {
		case refused && errors.Is(err, unix.EINVAL):
			continue
		case refused:
			t.Fatalf("%s: %d-byte frame accepted (err %v), test_run should refuse it", h, len(frame), err)
		case err != nil:
			t.Fatalf("%s: %v", h, err)
		}
		want := uint32(2) // XDP_PASS
		if h != bpf.HookXDP {
			want = 0xffffffff // TCX_NEXT
		}
		if ret != want {
			t.Fatalf("%s: verdict %#x, want %#x: the programs never drop", h, ret, want)
		}
		runs++
		bytes += uint64(len(frame))
	}
	r, err := c.ReadMaps()
	if err != nil {
		t.Fatal(err)
	}
	st := r.Stats
	if seen := st.PacketsIngress + st.PacketsEgress; seen != runs {
		t.Errorf("programs saw %d packets, %d were run", seen, runs)
	}
	if st.FlowInsertFailed != 0 || st.ConnInsertFailed != 0 || st.Truncated > runs {
		t.Errorf("stats %+v", st)
	}
	var pk, by uint64
	for _, ctr := range st.NonIP {
		pk += ctr.Packets
		by += ctr.Bytes
	}
	for _, fl := range r.Flows {
		pk += fl.Packets()
		by += fl.Bytes()
		if msg := impossible(&fl); msg != "" {
			t.Errorf("impossible flow %s: %+v", msg, fl)
		}
	}
	if pk != runs || by != bytes {
		t.Errorf("accounted %d packets / %d bytes, ran %d packets / %d bytes", pk, by, runs, bytes)
	}
	steer(r)
}

// steer shows the fuzzer, whose coverage sees Go code only and not the
// BPF programs, what the programs made of an input: one branch per kind
// of outcome, so an input reaching a new kind of key is kept and mutated.
func steer(r *bpf.Read) (n int) {
	for _, f := range r.Flows {
		switch f.Proto {
		case snapshot.TCP:
			n++
		case snapshot.UDP:
			n += 2
		case snapshot.SCTP:
			n += 3
		case snapshot.ICMP:
			n += 4
		case snapshot.ICMPv6:
			n += 5
		case snapshot.GRE, snapshot.ESP, snapshot.AH:
			n += 6
		default:
			n += 7
		}
		switch f.Direction {
		case snapshot.Inbound:
			n++
		case snapshot.Outbound:
			n += 2
		default:
			n += 3
		}
		switch {
		case f.Fragment:
			n++
		case f.DirectionInferred:
			n += 2
		case f.Packets() == 0:
			n += 3 // evidence only
		}
		ev := f.Evidence
		if ev.SynIn+ev.SynOut > 0 {
			n++
		}
		if ev.SynAckIn+ev.SynAckOut > 0 {
			n++
		}
		if ev.RstIn+ev.RstOut > 0 {
			n++
		}
		if ev.ICMPClosedIn+ev.ICMPClosedOut > 0 {
			n++
		}
		if ev.ICMPFilteredIn+ev.ICMPFilteredOut > 0 {
			n++
		}
	}
	for et := range r.Stats.NonIP {
		switch et {
		case "0x0800", "0x86dd":
			n++
		case "0x8100", "0x88a8":
			n += 2
		default:
			n += 3
		}
	}
	if r.Stats.Truncated > 0 {
		n++
	}
	return n
}

// impossible names what is wrong with a flow key, or returns "".
func impossible(f *snapshot.Flow) string {
	p := f.Proto
	switch {
	case !f.Peer.IsValid():
		return "no peer"
	case f.Direction > snapshot.Outbound:
		return "direction out of range"
	case !p.HasPorts() && !p.IsICMP() && (f.Port != 0 || f.Direction != snapshot.Unknown):
		return "portless protocol with a port or a direction"
	case f.Fragment && (f.Port != 0 || f.Direction != snapshot.Unknown || f.DirectionInferred):
		return "fragment with a port or a direction"
	case f.DirectionInferred && (!p.HasPorts() || f.Direction == snapshot.Unknown):
		return "heuristic flag without a port decision"
	case p.HasPorts() && f.Direction == snapshot.Unknown && f.Port != 0:
		// Unknown direction only when the ports were not there.
		return "port without a direction"
	case p.IsICMP() && isEcho(f) != (f.Direction != snapshot.Unknown):
		return "ICMP direction for a non-echo key or none for echo"
	case p == snapshot.ICMP && f.Port>>8 == 0 && f.Port != 0, p == snapshot.ICMPv6 && f.Port>>8 == 129:
		// (ICMP port 0 is an ICMP header too short for its type.)
		return "echo reply with a key of its own"
	}
	ev := f.Evidence
	in := ev.SynIn + ev.SynAckOut + ev.RstOut + ev.ICMPClosedOut + ev.ICMPFilteredOut
	out := ev.SynOut + ev.SynAckIn + ev.RstIn + ev.ICMPClosedIn + ev.ICMPFilteredIn
	tcpEv := ev.SynIn + ev.SynAckOut + ev.RstOut + ev.SynOut + ev.SynAckIn + ev.RstIn
	switch {
	case in > 0 && f.Direction != snapshot.Inbound:
		return "inbound evidence on a flow that is not inbound"
	case out > 0 && f.Direction != snapshot.Outbound:
		return "outbound evidence on a flow that is not outbound"
	case tcpEv > 0 && p != snapshot.TCP:
		return "TCP evidence on another protocol"
	case in+out > tcpEv && !p.HasPorts():
		return "ICMP error evidence on a portless protocol"
	case f.Packets() == 0 && in+out == 0:
		return "empty flow"
	}
	return ""
}

func isEcho(f *snapshot.Flow) bool {
	return (f.Proto == snapshot.ICMP && f.Port == 8<<8) || (f.Proto == snapshot.ICMPv6 && f.Port == 128<<8)
}

// TestFuzzInvariantsCatchMistakes: the invariant check rejects the flows a
// broken parser would produce (so FuzzDatapath can fail).
func TestFuzzInvariantsCatchMistakes(t *testing.T) {
	ok := snapshot.Flow{Direction: snapshot.Inbound, Proto: snapshot.TCP, Port: 22, PacketsIn: 1}
	ok.Peer = netip.MustParseAddr("192.0.2.1")
	if msg := impossible(&ok); msg != "" {
		t.Fatalf("a good flow is rejected: %s", msg)
	}
	bad := map[string]func(f *snapshot.Flow){
		"gre with a port":           func(f *snapshot.Flow) { f.Proto, f.Port, f.Direction = snapshot.GRE, 7, snapshot.Unknown },
		"fragment with a port":      func(f *snapshot.Flow) { f.Fragment = true },
		"inferred icmp":             func(f *snapshot.Flow) { f.Proto, f.Port, f.DirectionInferred = snapshot.ICMP, 8<<8, true },
		"tcp unknown with port":     func(f *snapshot.Flow) { f.Direction = snapshot.Unknown },
		"echo reply key":            func(f *snapshot.Flow) { f.Proto, f.Port = snapshot.ICMPv6, 129<<8 },
		"icmp error with direction": func(f *snapshot.Flow) { f.Proto, f.Port = snapshot.ICMP, 3<<8|3 },
		"outbound evidence inbound": func(f *snapshot.Flow) { f.Evidence.SynOut = 1 },
		"syn evidence on udp":       func(f *snapshot.Flow) { f.Proto, f.Evidence.SynIn = snapshot.UDP, 1 },
		"icmp evidence on gre": func(f *snapshot.Flow) {
			f.Proto, f.Port, f.Direction, f.Evidence.ICMPClosedIn = snapshot.GRE, 0, snapshot.Unknown, 1
		},
		"empty": func(f *snapshot.Flow) { f.PacketsIn = 0 },
	}
	for name, mutate := range bad {
		f := ok
		mutate(&f)
		if impossible(&f) == "" {
			t.Errorf("%s: not caught: %+v", name, f)
		}
	}
}
