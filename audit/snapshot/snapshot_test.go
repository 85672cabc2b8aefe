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
		{"unknown field", "{\"version\": 1,\n\"flowz\": []}", []string{"line 2", "flowz"}},
		{"version", "{\"version\": 2}", []string{"version 2"}},
		{"trailing data", "{\"version\": 1} {}", []string{"trailing"}},
		{"missing peer", "{\"version\": 1, \"flows\": [{\"port\": 22, \"proto\": \"tcp\"}]}", []string{"flow 0", "missing peer"}},
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
