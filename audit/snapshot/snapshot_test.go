package snapshot

import (
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sample() *Snapshot {
	s := &Snapshot{Version: FormatVersion, Source: "live",
		Start: time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC), End: time.Date(2026, 11, 26, 8, 10, 0, 0, time.UTC),
		Interfaces: []Interface{{Name: "eth0", Index: 2, Ingress: "xdp-native", Egress: "tcx", Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}},
		Listening:  []Socket{{Proto: TCP, Addr: netip.IPv4Unspecified(), Port: 22}},
		Stats:      Stats{FlowCapacity: 10, FlowEntries: 2, NonIP: map[string]Counter{"0x0806": {Packets: 1, Bytes: 60}}},
		Flows: []Flow{
			{Interface: "eth0", Direction: Inbound, Proto: TCP, Port: 22, Peer: netip.MustParseAddr("192.0.2.7"), PacketsIn: 3, Evidence: Evidence{SynIn: 1}},
			{Interface: "eth0", Direction: Unknown, Proto: GRE, Peer: netip.MustParseAddr("2001:db8::7"), PacketsIn: 1},
		}}
	s.Tool.Name, s.Tool.Version = "flowaudit", "test"
	return s
}

func TestRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	in := sample()
	if err := WriteFile(p, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if out.Flows[0].Peer != in.Flows[0].Peer || out.Flows[1].Proto != GRE || out.Listening[0] != in.Listening[0] ||
		out.Stats.NonIP["0x0806"].Bytes != 60 || !out.Start.Equal(in.Start) || out.Flows[0].Evidence.SynIn != 1 {
		t.Errorf("round trip changed the snapshot:\n%+v\n%+v", in, out)
	}
	// No temporary files are left next to the snapshot.
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(ents))
	}
}

func TestAtomicWriteKeepsOldFileOnError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := AtomicWrite(p, func(w io.Writer) error {
		w.Write([]byte("partial")) //nolint:errcheck
		return errors.New("disk full")
	})
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("old file replaced by %q", b)
	}
	if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
		t.Errorf("temporary file left behind: %d entries", len(ents))
	}
}

func TestReadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string // substrings of the error
	}{
		{"syntax", "{\n  \"version\": 1,\n  \"flows\": [\n    {\"peer\": \"192.0.2.1\",}\n  ]\n}", []string{"line 4"}},
		{"bad peer", "{\n  \"version\": 1,\n  \"flows\": [\n    {\"peer\": \"192.0.2.1\"},\n    {\"peer\": \"300.1.1.1\"}\n  ]\n}", []string{"line 5", "flows[1]", "300.1.1.1"}},
		{"bad protocol", "{\"version\": 1,\n\"flows\": [{\"peer\": \"192.0.2.1\",\n \"proto\": \"tcpx\"}]}", []string{"line 2", "flows[0]", "tcpx"}},
		{"bad direction", "{\"version\": 1,\n\"flows\": [{\"peer\": \"192.0.2.1\", \"direction\": \"sideways\"}]}", []string{"line 2", "sideways"}},
		{"bad listening address", "{\"version\": 1,\n\"listening\": [\n{\"addr\": \"x\"}]}", []string{"line 3", "listening[0]"}},
		{"wrong type", "{\"version\": 1,\n\"flows\": [{\"peer\": \"192.0.2.1\", \"port\": \"22\"}]}", []string{"line 2", "port"}},
		{"port out of range", "{\"version\": 1,\n\"flows\": [{\"peer\": \"192.0.2.1\", \"port\": 70000}]}", []string{"line 2", "70000"}},
		{"unknown field and a bad value", "{\"version\": 1,\n\"flowz\": [],\n\"flows\": [{\"peer\": \"300.1.1.1\"}]}", []string{"line 3", "flows[0]", "300.1.1.1"}},
		{"version 0", "{\"version\": 0}", []string{"malformed", "version 0", "versions 1 to 2"}},
		{"trailing data", "{\"version\": 1} {}", []string{"trailing"}},
		{"missing peer", "{\"version\": 1, \"flows\": [{\"port\": 22, \"proto\": \"tcp\"}]}", []string{"flows[0]", "missing peer"}},
		{"port on a portless protocol", "{\"version\": 1, \"flows\": [{\"peer\": \"192.0.2.1\", \"proto\": \"gre\", \"port\": 5}]}", []string{"gre", "port is 5"}},
		{"end before start", "{\"version\": 1, \"start\": \"2026-01-02T00:00:00Z\", \"end\": \"2026-01-01T00:00:00Z\"}", []string{"before start"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Read(strings.NewReader(tc.doc), "snap.json")
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range append(tc.want, "snap.json") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestParseProto(t *testing.T) {
	for in, want := range map[string]Proto{"tcp": TCP, "UDP": UDP, "gre": GRE, "47": GRE, "ip-99": 99, "icmpv6": ICMPv6} {
		got, err := ParseProto(in)
		if err != nil || got != want {
			t.Errorf("ParseProto(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "tcpx", "256", "ip--1"} {
		if _, err := ParseProto(bad); err == nil {
			t.Errorf("ParseProto(%q) accepted", bad)
		}
	}
	if Proto(99).String() != "ip-99" || SCTP.String() != "sctp" {
		t.Error("String")
	}
}

func TestSketchEstimate(t *testing.T) {
	for _, n := range []int{1, 10, 100, 1000, 10000, 100000} {
		var s PeerSketch
		for i := 0; i < n; i++ {
			a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			s.Add(a)
			s.Add(a) // duplicates do not count
		}
		est := float64(s.Estimate())
		// 128 registers: standard error 1.04/√128 ≈ 9.2 %; allow 3 sigma.
		if d := (est - float64(n)) / float64(n); d > 0.276 || d < -0.276 {
			t.Errorf("n=%d: estimate %.0f (%.0f %%)", n, est, 100*d)
		}
	}
	var empty PeerSketch
	if empty.Estimate() != 0 || !empty.Empty() {
		t.Error("empty sketch")
	}
}

func TestSketchMergeAndText(t *testing.T) {
	var a, b, both PeerSketch
	for i := 0; i < 3000; i++ {
		x := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i), 14: byte(i >> 8)})
		if i < 2000 {
			a.Add(x)
		}
		if i >= 1000 {
			b.Add(x)
		}
		both.Add(x)
	}
	a.Merge(&b)
	if a != both {
		t.Fatal("merge differs from the sketch of the union")
	}
	txt, _ := a.MarshalText()
	var back PeerSketch
	if err := back.UnmarshalText(txt); err != nil || back != a {
		t.Fatalf("text round trip: %v", err)
	}
	bad := append([]byte(nil), txt...)
	bad[0] = '/' // register 0 becomes 0xfc or so: above the maximum rank
	if err := back.UnmarshalText(bad); err == nil || !strings.Contains(err.Error(), "register 0") {
		t.Errorf("bad register: %v", err)
	}
	if err := back.UnmarshalText([]byte("AAAA")); err == nil || !strings.Contains(err.Error(), "3 registers") {
		t.Errorf("short sketch: %v", err)
	}
}

// TestSketchHashVector pins the hash the BPF program must reproduce
// (bpf/flowaudit.c overflow_sketch); TestOverflowSketchMatchesGo in bpf
// checks the kernel side against the same function.
func TestSketchHashVector(t *testing.T) {
	for _, c := range []struct {
		addr string
		want uint64
		idx  int
		rank uint8
	}{
		{"192.0.2.1", 0x589b6c30f6f8ebfb, 123, 1},
		{"::ffff:192.0.2.1", 0x589b6c30f6f8ebfb, 123, 1}, // IPv4 is hashed in its mapped form
		{"2001:db8::1", 0x539d4d6582f788ea, 106, 1},
		{"0.0.0.0", 0x3ce2d5e837337788, 8, 1},
	} {
		h := SketchHash(netip.MustParseAddr(c.addr))
		idx, rank := sketchSlot(h)
		if h != c.want || idx != c.idx || rank != c.rank {
			t.Errorf("%s: hash %#x slot %d rank %d, want %#x %d %d", c.addr, h, idx, rank, c.want, c.idx, c.rank)
		}
	}
	if _, r := sketchSlot(0x7f); r != maxRank {
		t.Errorf("all-zero rank bits: rank %d, want %d", r, maxRank)
	}
	if _, r := sketchSlot(1 << 10); r != 4 {
		t.Errorf("rank of 1<<10: %d, want 4 (three zero bits above the index)", r)
	}
}

func TestReadVersion1(t *testing.T) {
	v1 := `{"version":1,"tool":{"name":"flowaudit","version":"old"},"source":"live","interfaces":[],
"start":"2026-11-26T08:00:00Z","end":"2026-11-26T08:10:00Z","ephemeral_ports":[32768,60999],
"stats":{"flow_capacity":4,"flow_entries":4,"flow_insert_failed":7,"flow_evictions":0,"conn_insert_failed":0,
"packets_ingress":9,"packets_egress":0,"truncated":0},
"flows":[{"iface":"eth0","direction":"inbound","proto":"tcp","port":22,"peer":"192.0.2.7","packets_in":2,"bytes_in":120,
"packets_out":0,"bytes_out":0,"first_seen":"2026-11-26T08:00:01Z","last_seen":"2026-11-26T08:00:02Z","evidence":{}}]}`
	s, err := Read(strings.NewReader(v1), "old.json")
	if err != nil {
		t.Fatal(err)
	}
	// Version 1 had no overflow map: its failed inserts were lost packets.
	if s.Version != FormatVersion || s.Stats.OverflowInsertFailed != 7 || !s.Stats.Lossy() {
		t.Errorf("upgraded v1: version %d stats %+v", s.Version, s.Stats)
	}
	withPrefix := strings.Replace(v1, `"peer":"192.0.2.7"`, `"peer_prefix":"192.0.2.0/24"`, 1)
	if _, err := Read(strings.NewReader(withPrefix), "old.json"); err == nil || !strings.Contains(err.Error(), "need version 2") {
		t.Errorf("v1 with a v2 field: %v", err)
	}
}

// TestReadUnknownFields: SNAPSHOT.md promises that a new field does not
// bump the version, so a reader must take a file with fields it does not
// know, read the fields it knows, and list the others.
func TestReadUnknownFields(t *testing.T) {
	var b strings.Builder
	if err := Write(&b, sample()); err != nil {
		t.Fatal(err)
	}
	doc := b.String()
	doc = strings.Replace(doc, `"source":`, `"recorder_uptime": 12, "source":`, 1)
	doc = strings.Replace(doc, `"packets_in":`, `"retransmits": {"in": 3}, "packets_in":`, 1)
	doc = strings.Replace(doc, `"flow_capacity":`, `"ringbuf_drops": 0, "flow_capacity":`, 1)
	doc = strings.Replace(doc, `"iface":`, `"IFACE_INDEX": 2, "iface":`, 2) // twice: listed once
	s, err := Read(strings.NewReader(doc), "newer-fields.json")
	if err != nil {
		t.Fatalf("a version %d file with new fields was refused: %v", FormatVersion, err)
	}
	want := []string{"flows[].IFACE_INDEX", "flows[].retransmits", "recorder_uptime", "stats.ringbuf_drops"}
	if strings.Join(s.Unknown, " ") != strings.Join(want, " ") {
		t.Errorf("unknown fields %q, want %q", s.Unknown, want)
	}
	ref := sample()
	if s.Source != ref.Source || len(s.Flows) != len(ref.Flows) || s.Flows[0].PacketsIn != ref.Flows[0].PacketsIn ||
		s.Stats.FlowCapacity != ref.Stats.FlowCapacity {
		t.Errorf("known fields not read: %+v", s)
	}
	// A case-insensitive match is a known field, as encoding/json reads it.
	s, err = Read(strings.NewReader(strings.Replace(b.String(), `"source":`, `"Source":`, 1)), "case.json")
	if err != nil || len(s.Unknown) != 0 || s.Source != ref.Source {
		t.Errorf("Source: %v, unknown %q, source %q", err, s.Unknown, s.Source)
	}
	// A file without unknown fields lists none.
	s, err = Read(strings.NewReader(b.String()), "plain.json")
	if err != nil || s.Unknown != nil {
		t.Errorf("plain file: %v, unknown %q", err, s.Unknown)
	}
}

// TestReadNewerVersion: a file of a later format version is not
// "malformed": a newer flowaudit wrote it, whatever its fields hold.
func TestReadNewerVersion(t *testing.T) {
	doc := `{"version": 3, "flows": {"changed": "shape"}, "stats": 7}`
	_, err := Read(strings.NewReader(doc), "future.json")
	if !errors.Is(err, ErrNewerVersion) || errors.Is(err, ErrFormat) {
		t.Fatalf("error %v: want ErrNewerVersion, not ErrFormat", err)
	}
	for _, w := range []string{"future.json", "written by a newer flowaudit (version 3)", "versions 1 to 2"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "malformed") {
		t.Errorf("error %q calls a newer file malformed", err)
	}
	s := sample()
	s.Version = FormatVersion + 1
	if err := s.Validate(); !errors.Is(err, ErrNewerVersion) {
		t.Errorf("Validate: %v", err)
	}
}

func TestValidateV2(t *testing.T) {
	pfx := netip.MustParsePrefix("198.51.100.0/24")
	for name, c := range map[string]struct {
		mod  func(s *Snapshot)
		want string
	}{
		"peer and prefix": {func(s *Snapshot) { s.Flows[0].PeerPrefix = pfx }, "both peer and peer_prefix"},
		"no peer":         {func(s *Snapshot) { s.Flows[0].Peer = netip.Addr{} }, "flows[0]: missing peer"},
		"host bits": {func(s *Snapshot) {
			s.Flows[0].Peer, s.Flows[0].PeerPrefix = netip.Addr{}, netip.MustParsePrefix("198.51.100.7/24")
		}, "host bits"},
		"overflow peer": {func(s *Snapshot) {
			s.Overflow = []Flow{{Interface: "eth0", Direction: Inbound, Proto: TCP, Port: 22, Peer: netip.MustParseAddr("192.0.2.9")}}
		}, "overflow[0]: an overflow entry has no peer"},
		"overflow port": {func(s *Snapshot) { s.Overflow = []Flow{{Interface: "eth0", Proto: GRE, Port: 3}} }, "overflow[0]: protocol gre carries no port"},
		"interruption":  {func(s *Snapshot) { s.Interrupted = &Interruption{} }, "interrupted: missing signal"},
	} {
		s := sample()
		c.mod(s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// A folded entry and an overflow entry round-trip.
	s := sample()
	var sk PeerSketch
	sk.Add(netip.MustParseAddr("198.51.100.9"))
	s.Flows = append(s.Flows, Flow{Interface: "eth0", Direction: Inbound, Proto: TCP, Port: 22, PeerPrefix: pfx, Peers: 1, PeerSketch: &sk, PacketsIn: 5})
	s.Overflow = []Flow{{Interface: "eth0", Direction: Inbound, Proto: UDP, Port: 1514, PacketsIn: 9, Peers: 1, PeerSketch: &sk}}
	s.Interrupted = &Interruption{Signal: "SIGTERM", At: s.End}
	p := filepath.Join(t.TempDir(), "v2.json")
	if err := WriteFile(p, s); err != nil {
		t.Fatal(err)
	}
	back, err := ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if f := back.Flows[2]; !f.Folded() || f.PeerPrefix != pfx || *f.PeerSketch != sk || f.Peer.IsValid() {
		t.Errorf("folded flow: %+v", f)
	}
	if o := back.Overflow[0]; o.Peer.IsValid() || o.PacketsIn != 9 || back.Interrupted.Signal != "SIGTERM" {
		t.Errorf("overflow %+v interrupted %+v", o, back.Interrupted)
	}
	raw, _ := os.ReadFile(p)
	if strings.Count(string(raw), `"peer":`) != 2 {
		t.Errorf("folded and overflow entries must not carry a peer key:\n%s", raw)
	}
}
