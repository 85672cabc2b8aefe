package replay

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/flowaudit/flowaudit/audit/snapshot"
	"github.com/flowaudit/flowaudit/bpf"
	"github.com/flowaudit/flowaudit/bpf/testenv"
)

// corpusFiles lists the tcpdump corpus captures (skipping, or failing
// where BPF tests are required, when there are none).
func corpusFiles(t *testing.T) []string {
	t.Helper()
	dir := corpusDir(t)
	files, _ := filepath.Glob(filepath.Join(dir, "*.pcap"))
	ng, _ := filepath.Glob(filepath.Join(dir, "*.pcapng"))
	files = append(files, ng...)
	sort.Strings(files)
	if len(files) == 0 {
		if testenv.Required() {
			t.Fatalf("no captures in %s (set FLOWAUDIT_CORPUS)", dir)
		}
		t.Skipf("no captures in %s (set FLOWAUDIT_CORPUS)", dir)
	}
	return files
}

// TestReplayPathsAgreeOnCorpus replays every capture of the tcpdump corpus
// through the per-packet path and the batch path and requires the same
// snapshot: every flow key and counter, the overflow entries, the stats,
// every DNS row; first/last seen of the batch path (exact) must lie within
// the per-packet path's (time slices around the true value).
func TestReplayPathsAgreeOnCorpus(t *testing.T) {
	if testing.Short() {
		t.Skip("replays the whole tcpdump corpus twice")
	}
	files := corpusFiles(t)
	testenv.RequireBPF(t)
	const parallel = 2
	problems := make([][]string, len(files))
	compared := make([]bool, len(files))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		c, err := bpf.Open(bpf.Options{EphemeralPorts: DefaultEphemeralPorts, Programs: bpf.LoadLive | bpf.LoadReplay})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				compared[i], problems[i] = comparePaths(c, files[i])
			}
		}()
	}
	for i := range files {
		next <- i
	}
	close(next)
	wg.Wait()
	n, bad := 0, 0
	for i, p := range problems {
		if compared[i] {
			n++
		}
		if len(p) > 0 {
			bad++
			if bad <= 20 {
				t.Errorf("%s:\n\t%s", filepath.Base(files[i]), fmt.Sprint(p))
			}
		}
	}
	t.Logf("%d captures compared, %d differ (of %d files; the rest have no supported link type)", n, bad, len(files))
	if n < len(files)/2 {
		t.Errorf("only %d of %d captures could be compared", n, len(files))
	}
}

// comparePaths replays one capture both ways; compared is false when the
// capture has no supported link type.
func comparePaths(c *bpf.Collector, path string) (compared bool, problems []string) {
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	old, err := Run(context.Background(), c, path, Options{Workers: 1, PerPacket: true})
	var lte *LinkTypeError
	if errors.As(err, &lte) {
		return false, nil
	}
	if err != nil {
		fail("per-packet: %v", err)
		return true, problems
	}
	nw, err := Run(context.Background(), c, path, Options{Workers: 1})
	if err != nil {
		fail("batch: %v", err)
		return true, problems
	}
	if nw.Packets != old.Packets || nw.Replayed != old.Replayed || fmt.Sprint(nw.Skipped) != fmt.Sprint(old.Skipped) ||
		nw.Cut != old.Cut || nw.MissingBytes != old.MissingBytes {
		fail("counts: batch %d/%d %v cut %d missing %d, per-packet %d/%d %v cut %d missing %d", nw.Packets, nw.Replayed, nw.Skipped,
			nw.Cut, nw.MissingBytes, old.Packets, old.Replayed, old.Skipped, old.Cut, old.MissingBytes)
	}
	o, s := old.Snapshot, nw.Snapshot
	if statsText(o.Stats) != statsText(s.Stats) {
		fail("stats: batch %s, per-packet %s", statsText(s.Stats), statsText(o.Stats))
	}
	if !o.Start.Equal(s.Start) || !o.End.Equal(s.End) {
		fail("window: batch %s..%s, per-packet %s..%s", s.Start, s.End, o.Start, o.End)
	}
	for _, set := range []struct {
		name string
		o, s []snapshot.Flow
	}{{"flows", o.Flows, s.Flows}, {"overflow", o.Overflow, s.Overflow}} {
		if d := diffText(flowsText(set.o), flowsText(set.s)); d != "" {
			fail("%s differ (-per-packet +batch):\n%s", set.name, d)
			continue
		}
		times := map[string]snapshot.Flow{}
		for _, f := range set.o {
			times[flowsText([]snapshot.Flow{f})] = f
		}
		for _, f := range set.s {
			of := times[flowsText([]snapshot.Flow{f})]
			if !within(f.FirstSeen, f.LastSeen, of.FirstSeen, of.LastSeen) {
				fail("%s %s: batch seen %s..%s outside per-packet %s..%s", set.name, flowsText([]snapshot.Flow{f}),
					f.FirstSeen, f.LastSeen, of.FirstSeen, of.LastSeen)
			}
		}
	}
	switch {
	case (o.DNS == nil) != (s.DNS == nil):
		fail("DNS: batch %v, per-packet %v", s.DNS, o.DNS)
	case o.DNS != nil:
		od, sd := *o.DNS, *s.DNS
		if len(od.Names) != len(sd.Names) {
			fail("DNS: batch %d names, per-packet %d", len(sd.Names), len(od.Names))
			break
		}
		for i := range od.Names {
			on, sn := od.Names[i], sd.Names[i]
			if !within(sn.FirstSeen, sn.LastSeen, on.FirstSeen, on.LastSeen) {
				fail("DNS %s %s: batch seen %s..%s outside per-packet %s..%s", sn.Addr, sn.Name, sn.FirstSeen, sn.LastSeen, on.FirstSeen, on.LastSeen)
			}
			on.FirstSeen, on.LastSeen, sn.FirstSeen, sn.LastSeen = time.Time{}, time.Time{}, time.Time{}, time.Time{}
			if fmt.Sprintf("%+v", on) != fmt.Sprintf("%+v", sn) {
				fail("DNS row: batch %+v, per-packet %+v", sn, on)
			}
		}
		od.Names, sd.Names = nil, nil
		if fmt.Sprintf("%+v", od) != fmt.Sprintf("%+v", sd) {
			fail("DNS: batch %+v, per-packet %+v", sd, od)
		}
	}
	return true, problems
}

// within: first is not before lo (the start of the time slice the
// per-packet path saw the flow's first packet in) and last not after hi
// (the end of the last packet's slice). Both paths take first and last in
// file order, so in a capture whose time goes backwards (kday4.pcap) last
// may be before first on either.
func within(first, last, lo, hi time.Time) bool {
	return !first.Before(lo) && !hi.Before(last)
}

// TestReplayPeerOnTwoWorkers: a peer talking to two local addresses has
// one flow per service fed by two conversations; a frame goes to its
// peer's worker, so no batch needs to run early (Result.Flushes) and the
// snapshot, first/last seen included, is the same for every worker count.
func TestReplayPeerOnTwoWorkers(t *testing.T) {
	c := openCollector(t)
	hostA2 := netip.MustParseAddr("192.0.2.11")
	var pkts []pkt
	for i := 0; i < 3000; i++ {
		p := netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 40)})
		local := hostA
		if (i/40)%2 == 1 {
			local = hostA2
		}
		ts := epoch.Add(time.Duration(i) * 7 * time.Millisecond)
		if i%2 == 0 {
			pkts = append(pkts, pkt{ts: ts, frame: ipFrame(t, p, local, udpDgram(41000, 514, 20)...)})
		} else {
			pkts = append(pkts, pkt{ts: ts, frame: ipFrame(t, local, p, udpDgram(514, 41000, 20)...)})
		}
	}
	path := filepath.Join(t.TempDir(), "two.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, pkts)
	local := []netip.Prefix{netip.PrefixFrom(hostA, 32), netip.PrefixFrom(hostA2, 32)}
	sameForWorkers(t, c, path, local, func(workers int, res *Result) {
		if res.Flushes != 0 {
			t.Errorf("workers=%d: %d batches ran early, though each peer's frames go to one worker", workers, res.Flushes)
		}
		if len(res.Snapshot.Flows) != 40 {
			t.Errorf("workers=%d: %d flows, want 40 (one per peer)", workers, len(res.Snapshot.Flows))
		}
	})
}

// sameForWorkers replays path with 1 to 4 workers on the batch path, hands
// each result to check, and fails when a snapshot, first/last seen
// included, differs from the one-worker snapshot.
func sameForWorkers(t *testing.T, c *bpf.Collector, path string, local []netip.Prefix, check func(workers int, res *Result)) {
	t.Helper()
	var one string
	for _, workers := range []int{1, 2, 3, 4} {
		res, err := Run(context.Background(), c, path, Options{Local: local, Workers: workers})
		if err != nil {
			t.Fatal(err)
		}
		check(workers, res)
		all := fullText(res.Snapshot)
		if one == "" {
			one = all
			continue
		}
		if d := diffText(one, all); d != "" {
			t.Errorf("workers=%d: snapshot differs from workers=1 (-1 +%d):\n%s", workers, workers, d)
		}
	}
}

// TestReplayQuotedPeerOnAnotherWorker: a router's ICMP errors quote
// packets this host sent to other peers, so each error touches the flows
// of two peers, which may belong to two workers: the quoted peer is lent
// to the error's worker, or, when it already has frames in the batch, the
// batch runs first. Every worker count gives the snapshot of one worker,
// and the flows of feeding the frames one by one.
func TestReplayQuotedPeerOnAnotherWorker(t *testing.T) {
	c := openCollector(t)
	router := netip.MustParseAddr("203.0.113.1")
	var pkts []pkt
	ts := epoch
	add := func(f []byte) {
		ts = ts.Add(3 * time.Millisecond)
		pkts = append(pkts, pkt{ts: ts, frame: f})
	}
	for round := 0; round < 3; round++ {
		for i := 0; i < 64; i++ {
			p := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
			sent := ipFrame(t, hostA, p, udpDgram(41000+uint16(i), 514, 20)...)
			if (i+round)%3 != 0 { // some peers have frames in the batch before the error
				add(ipFrame(t, p, hostA, udpDgram(514, 41000+uint16(i), 20)...))
			}
			add(sent)
			add(ser(t, &layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeIPv4},
				&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: router.AsSlice(), DstIP: hostA.AsSlice()},
				&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 1)}, gopacket.Payload(sent[14:14+28])))
			if i%2 == 0 { // and after it
				add(sent)
			}
		}
	}
	path := filepath.Join(t.TempDir(), "quoted.pcap")
	writePcap(t, path, layers.LinkTypeEthernet, pkts)
	ref := reference(t, c, pkts)
	sameForWorkers(t, c, path, localPrefixes, func(workers int, res *Result) {
		if workers > 1 && res.Flushes == 0 {
			t.Errorf("workers=%d: no batch ran early, though errors quote peers with frames on other workers", workers)
		}
		if d := diffText(flowsText(ref.Flows), flowsText(res.Snapshot.Flows)); d != "" {
			t.Errorf("workers=%d: flows differ from the direct feed (-direct +replay):\n%s", workers, d)
		}
	})
}

// TestShardForKeepsPeersOnOneWorker: within a batch every address whose
// flows a frame touches (its peer, and the far end an ICMP error quotes)
// goes to one worker, whatever the order of the frames; a batch ends early
// only when an error's quoted address already has frames on another
// worker. Deterministic, unlike the outcome on the kernel: two workers
// feeding one flow give a wrong result only when their timing says so.
func TestShardForKeepsPeersOnOneWorker(t *testing.T) {
	const workers = 3
	r := &replayer{present: make([][presentBits / 64]uint64, workers), lent: map[netip.Addr]int{}}
	router := netip.MustParseAddr("203.0.113.1")
	owner := map[netip.Addr]int{} // this batch
	flushes, lent := 0, 0
	for i := 0; i < 3000; i++ {
		p := netip.AddrFrom4([4]byte{198, 51, 100, byte(i / 4 % 37)})
		var fi frameInfo
		egress := false
		switch i % 4 {
		case 0:
			fi = frameInfo{ip: true, src: p, dst: hostA}
		case 1:
			fi, egress = frameInfo{ip: true, src: hostA, dst: p}, true
		default: // a router's error about a packet this host sent to p
			fi = frameInfo{ip: true, src: router, dst: hostA, quoted: true, qsrc: hostA, qdst: p}
		}
		touched := []netip.Addr{fi.src}
		if egress {
			touched[0] = fi.dst
		}
		if fi.quoted {
			touched = append(touched, fi.qdst)
		}
		shard, flush := r.shardFor(&fi, egress)
		if flush {
			flushes++
			clear(r.present)
			clear(r.lent)
			clear(owner)
			if shard, flush = r.shardFor(&fi, egress); flush {
				t.Fatalf("frame %d: a flush asked for in an empty batch", i)
			}
		}
		if fi.quoted {
			if h, _ := r.peerShard(router); h == shard && int(addrHash(p)%workers) != shard && r.lent[p] == shard {
				lent++
			}
		}
		for _, a := range touched {
			if s, ok := owner[a]; ok && s != shard {
				t.Fatalf("frame %d: %s on worker %d, its earlier frames in the batch on %d", i, a, shard, s)
			}
			owner[a] = shard
		}
		if i%500 == 499 { // a full batch runs
			clear(r.present)
			clear(r.lent)
			clear(owner)
		}
	}
	if flushes == 0 || lent == 0 {
		t.Errorf("%d batches run early and %d addresses lent: the test did not reach both ways", flushes, lent)
	}
}
