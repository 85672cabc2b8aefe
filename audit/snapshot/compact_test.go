package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// filler sets every exported field of a value to a distinct non-zero
// value, whatever its type, so a field the compact encoding forgets (one
// added to Snapshot or Flow later, by another change) shows as a
// difference after a round trip.
type filler struct{ n int }

var (
	timeType   = reflect.TypeFor[time.Time]()
	addrType   = reflect.TypeFor[netip.Addr]()
	prefixType = reflect.TypeFor[netip.Prefix]()
)

func (fl *filler) fill(v reflect.Value, path string) {
	fl.n++
	n := fl.n
	switch v.Type() {
	case reflect.TypeFor[PeerSketch]():
		for i := range v.Len() {
			v.Index(i).SetUint(uint64(1 + (n+i)%maxRank))
		}
		return
	case timeType:
		v.Set(reflect.ValueOf(time.Unix(1_790_000_000+int64(n)*61, int64(n)*1_000_003).UTC()))
		return
	case addrType:
		v.Set(reflect.ValueOf(netip.AddrFrom4([4]byte{192, 0, 2, byte(n)})))
		return
	case prefixType:
		v.Set(reflect.ValueOf(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, byte(n), 0}), 24)))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d", n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(n % 100))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(n % 200))
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(n) + 0.5)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fl.fill(p.Elem(), path)
		v.Set(p)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fl.fill(s.Index(i), path+"[]")
		}
		v.Set(s)
	case reflect.Array:
		for i := range v.Len() {
			fl.fill(v.Index(i), path+"[]")
		}
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for range 2 {
			k := reflect.New(v.Type().Key()).Elem()
			e := reflect.New(v.Type().Elem()).Elem()
			fl.fill(k, path+"{}")
			fl.fill(e, path+"[]")
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() || f.Tag.Get("json") == "-" {
				continue
			}
			fl.fill(v.Field(i), path+"."+f.Name)
		}
	default:
		panic("filler: no rule for " + path + " of kind " + v.Kind().String())
	}
}

// unsetFields lists the exported fields (as paths) that are zero in every
// element they occur in: the filled snapshot must leave none.
func unsetFields(v reflect.Value, path string, set map[string]bool) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			unsetFields(v.Elem(), path, set)
		}
		return
	case reflect.Slice, reflect.Array:
		if v.Type() == reflect.TypeFor[PeerSketch]() {
			break
		}
		for i := range v.Len() {
			unsetFields(v.Index(i), path+"[]", set)
		}
		return
	case reflect.Struct:
		if v.Type() == timeType || v.Type() == addrType || v.Type() == prefixType {
			break
		}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() || f.Tag.Get("json") == "-" {
				continue
			}
			// Keyed by type, so the flows and the overflow entries
			// count together.
			p := v.Type().Name() + "." + f.Name
			if _, ok := set[p]; !ok {
				set[p] = false
			}
			if !v.Field(i).IsZero() {
				set[p] = true
			}
			unsetFields(v.Field(i), p, set)
		}
		return
	}
}

// fullSnapshot is a valid snapshot in which every field of Snapshot, and
// every field of Flow, holds a non-zero value somewhere.
func fullSnapshot(t *testing.T) *Snapshot {
	t.Helper()
	var s Snapshot
	(&filler{}).fill(reflect.ValueOf(&s).Elem(), "")
	// The invariants Validate checks.
	s.Version = FormatVersion
	s.Start = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	s.End = s.Start.Add(time.Hour)
	var fl filler
	fl.n = 500
	mk := func(dir Direction, proto Proto) Flow {
		var f Flow
		fl.fill(reflect.ValueOf(&f).Elem(), "flow")
		f.Direction, f.Proto = dir, proto
		return f
	}
	exact := mk(Inbound, TCP)
	exact.PeerPrefix, exact.PeerSketch, exact.Peers = netip.Prefix{}, nil, 0
	exact.Peer = netip.MustParseAddr("fe80::7%eth1") // a zone travels too
	v6 := mk(Outbound, UDP)
	v6.PeerPrefix, v6.PeerSketch = netip.Prefix{}, nil
	v6.Peer = netip.MustParseAddr("2001:db8::1:7")
	mapped := mk(Inbound, SCTP)
	mapped.PeerPrefix = netip.Prefix{}
	mapped.Peer = netip.MustParseAddr("::ffff:192.0.2.9")
	mapped.FirstSeen = time.Time{} // an evidence-only entry without a first time
	folded := mk(Unknown, ICMP)
	folded.Peer = netip.Addr{}
	folded.PeerPrefix = netip.MustParsePrefix("2001:db8:aa::/48")
	ancient := mk(Inbound, Proto(253))
	ancient.PeerPrefix, ancient.Port = netip.Prefix{}, 0
	ancient.FirstSeen = time.Date(1, 1, 1, 0, 0, 1, 5, time.UTC) // far from Start, both ways
	ancient.LastSeen = time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)
	s.Flows = []Flow{exact, v6, mapped, folded, ancient}
	over := mk(Inbound, TCP)
	over.Peer, over.PeerPrefix = netip.Addr{}, netip.Prefix{}
	over.Interface = "eth9"
	s.Overflow = []Flow{over}
	if err := s.Validate(); err != nil {
		t.Fatalf("the full snapshot is not valid: %v", err)
	}
	set := map[string]bool{}
	unsetFields(reflect.ValueOf(&s).Elem(), "", set)
	for p, ok := range set {
		if !ok {
			t.Errorf("the full snapshot leaves %s unset: the round trip cannot check it", p)
		}
	}
	return &s
}

// TestCompactCarriesEveryField fails when a field of Snapshot or Flow does
// not survive the compact encoding: a field added to either struct must be
// added to the encoding (the header carries every field but the flows as
// JSON; a new Flow field needs a place in the record).
func TestCompactCarriesEveryField(t *testing.T) {
	in := fullSnapshot(t)
	for _, enc := range []Encoding{Compact, JSON} {
		p := filepath.Join(t.TempDir(), "full.fas")
		if err := WriteFileAs(p, in, enc); err != nil {
			t.Fatal(err)
		}
		out, err := ReadFile(p)
		if err != nil {
			t.Fatalf("encoding %d: %v", enc, err)
		}
		if len(out.Unknown) != 0 {
			t.Errorf("encoding %d: unknown fields %v", enc, out.Unknown)
		}
		if !reflect.DeepEqual(in, out) {
			t.Errorf("encoding %d: round trip differs:\n in: %+v\nout: %+v", enc, in, out)
			for i := range in.Flows {
				if !reflect.DeepEqual(in.Flows[i], out.Flows[i]) {
					t.Errorf("flows[%d]:\n in: %+v\nout: %+v", i, in.Flows[i], out.Flows[i])
				}
			}
		}
	}
}

// TestCompactReadsLikeJSON: every snapshot fixture of the repository (a
// version 1 file among them) reads the same from its JSON and from its
// compact encoding.
func TestCompactReadsLikeJSON(t *testing.T) {
	fixtures, _ := filepath.Glob("../rules/testdata/*.snapshot.json")
	if len(fixtures) == 0 {
		t.Fatal("no snapshot fixture found")
	}
	for _, fx := range fixtures {
		js, err := ReadFile(fx)
		if err != nil {
			t.Fatalf("%s: %v", fx, err)
		}
		p := filepath.Join(t.TempDir(), "fx.fas")
		if err := WriteFile(p, js); err != nil {
			t.Fatal(err)
		}
		head, _ := os.ReadFile(p)
		if !IsCompact(head) {
			t.Fatalf("%s: WriteFile of a name not ending in .json did not write the compact encoding", p)
		}
		back, err := ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(js, back) {
			t.Errorf("%s: compact round trip differs:\n%+v\n%+v", fx, js, back)
		}
	}
	// And a name ending in .json gets JSON.
	p := filepath.Join(t.TempDir(), "s.JSON")
	if err := WriteFile(p, sample()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); !bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")) {
		t.Errorf("%s: not JSON: %.20q", p, b)
	}
}

func compactBytes(t testing.TB, s *Snapshot) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := WriteCompact(&b, s); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestCompactErrors(t *testing.T) {
	good := compactBytes(t, fullSnapshot(t))
	if _, err := Read(bytes.NewReader(good), "ok.fas"); err != nil {
		t.Fatal(err)
	}
	// Every truncation is refused as malformed, naming the file.
	for _, n := range []int{len(compactMagic), len(compactMagic) + 1, len(good) / 2, len(good) - 1} {
		_, err := Read(bytes.NewReader(good[:n]), "cut.fas")
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "cut.fas") {
			t.Errorf("cut at %d of %d: %v, want a malformed-snapshot error naming the file", n, len(good), err)
		}
	}
	// A newer container is refused as such.
	newer := append([]byte{}, good...)
	newer[len(compactMagic)] = CompactVersion + 1
	if _, err := Read(bytes.NewReader(newer), "new.fas"); !errors.Is(err, ErrNewerVersion) {
		t.Errorf("newer container: %v, want ErrNewerVersion", err)
	}
	// A record that breaks an invariant names its entry and offset.
	bad := sample()
	bad.Flows[0].Peer = netip.Addr{}
	_, err := Read(bytes.NewReader(compactBytes(t, bad)), "bad.fas")
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "flows[0]: missing peer") {
		t.Errorf("flow without peer: %v", err)
	}
	// A header from a newer writer is refused with ErrNewerVersion.
	nv := sample()
	nv.Version = FormatVersion + 1
	if _, err := Read(bytes.NewReader(compactBytes(t, nv)), "nv.fas"); !errors.Is(err, ErrNewerVersion) {
		t.Errorf("newer header version: %v", err)
	}
}

func TestCompactUnknownHeaderFields(t *testing.T) {
	// Fields of a newer writer in the header are listed, as in JSON.
	var b bytes.Buffer
	b.Write(compactMagic)
	b.WriteByte(CompactVersion)
	zw, err := zstd.NewWriter(&b)
	if err != nil {
		t.Fatal(err)
	}
	hj := []byte(`{"version":2,"tool":{"name":"x","version":"y"},"source":"live","interfaces":[],"start":"2026-11-26T08:00:00Z","end":"2026-11-26T08:00:00Z","ephemeral_ports":[1,2],"stats":{"flow_capacity":1,"flow_entries":0,"flow_insert_failed":0,"overflow_insert_failed":0,"flow_evictions":0,"conn_insert_failed":0,"packets_ingress":0,"packets_egress":0,"truncated":0},"flows":null,"dns_names":{"192.0.2.1":["a.example"]}}`)
	zw.Write(binary.AppendUvarint([]byte{'H'}, uint64(len(hj))))
	zw.Write(hj)
	zw.Write([]byte{'Z'})
	zw.Close()
	out, err := Read(bytes.NewReader(b.Bytes()), "u.fas")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(out.Unknown) != "[dns_names]" {
		t.Errorf("unknown = %v, want [dns_names]", out.Unknown)
	}
}

func TestCompactSize(t *testing.T) {
	// 10 000 flows of the benchmark's mix (distinct peers, times across an
	// hour) take at most 80 bytes each (issue 16's target for 1 M).
	s := syntheticFlows(10_000)
	b := compactBytes(t, s)
	if per := float64(len(b)) / 10_000; per > 80 {
		t.Errorf("%.1f bytes per flow, want ≤ 80", per)
	} else {
		t.Logf("%.1f bytes per flow", per)
	}
	out, err := Read(bytes.NewReader(b), "syn.fas")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, out) {
		for i := range s.Flows {
			if !reflect.DeepEqual(s.Flows[i], out.Flows[i]) {
				t.Fatalf("flows[%d] changed in the round trip:\n%+v\n%+v", i, s.Flows[i], out.Flows[i])
			}
		}
		t.Errorf("synthetic snapshot changed in the round trip:\n%+v\n%+v", s, out)
	}
}

// syntheticFlows builds n flows like audit/benchflows (which imports this
// package, so it cannot be used here).
func syntheticFlows(n int) *Snapshot {
	s := sample()
	s.Flows = nil
	for i := range n {
		f := Flow{Interface: "eth0", Direction: Inbound, Proto: TCP, Port: uint16(9000 + i%7),
			Peer:      netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
			PacketsIn: uint64(1 + i%50), PacketsOut: uint64(1 + i%50), Evidence: Evidence{SynIn: 1, SynAckOut: 1}}
		if i%5 == 0 {
			f.Peer = netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, 0xff, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		}
		f.BytesIn, f.BytesOut = f.PacketsIn*120, f.PacketsOut*90
		f.FirstSeen = s.Start.Add(time.Duration(i%3600)*time.Second + time.Duration(i)*time.Millisecond)
		f.LastSeen = f.FirstSeen.Add(time.Duration(i%600) * time.Second)
		s.Flows = append(s.Flows, f)
	}
	SortFlows(s.Flows)
	return s
}

// TestSortFlowsByKeys: the packed-key sort gives flowLess's order on a mix
// of interfaces, directions, families, folded prefixes and flags.
func TestSortFlowsByKeys(t *testing.T) {
	var flows []Flow
	addrs := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("::ffff:10.0.0.1"),
		netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("0.0.0.1"), netip.MustParseAddr("::")}
	prefixes := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("::/0"), netip.MustParsePrefix("2001:db8::/48")}
	for i := range 3000 {
		f := Flow{Interface: []string{"eth1", "eth0", "lo", "eth10"}[i%4], Direction: Direction(i / 4 % 3), Proto: []Proto{TCP, UDP, ICMP, GRE}[i/12%4],
			Port: uint16(i / 48 % 5), Fragment: i%7 == 0, DirectionInferred: i%11 == 0}
		switch {
		case i%13 == 0: // an overflow entry: neither peer nor prefix
		case i%5 == 0:
			f.PeerPrefix = prefixes[i/5%len(prefixes)]
		default:
			f.Peer = addrs[i%len(addrs)]
		}
		flows = append(flows, f)
	}
	rand := func(i int) int { return (i*7919 + 13) % len(flows) }
	for i := range flows { // deterministic shuffle
		j := rand(i)
		flows[i], flows[j] = flows[j], flows[i]
	}
	want := slices.Clone(flows)
	sortFlowsPlain(want)
	got := slices.Clone(flows)
	if !sortByKeys(got) {
		t.Fatal("sortByKeys refused flows without zones")
	}
	for i := range want {
		// Equal keys may come in any order: compare by flowLess both ways.
		if flowLess(&got[i], &want[i]) || flowLess(&want[i], &got[i]) {
			t.Fatalf("position %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for i := 1; i < len(got); i++ {
		if flowLess(&got[i], &got[i-1]) {
			t.Fatalf("not sorted at %d", i)
		}
	}
}

// A flow list longer than the reader allocates up front grows block by
// block (growFactor) and arrives whole and in order: with preallocLimit at
// 7, 50 000 flows in ~17 blocks grow the slice several times, the later
// growths copying more than one piece (growPiece) of flows.
func TestCompactGrowsPastPreallocLimit(t *testing.T) {
	old := preallocLimit
	preallocLimit = 7
	t.Cleanup(func() { preallocLimit = old })
	want := syntheticFlows(50_000)
	if len(want.Flows) < 2*growPiece+1 {
		t.Fatalf("%d flows do not span three pieces of %d", len(want.Flows), growPiece)
	}
	got, err := Read(bytes.NewReader(compactBytes(t, want)), "grow.fas")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Flows) != len(want.Flows) {
		t.Fatalf("read %d flows, wrote %d", len(got.Flows), len(want.Flows))
	}
	for i := range want.Flows {
		if !reflect.DeepEqual(got.Flows[i], want.Flows[i]) {
			t.Fatalf("flow %d:\n got %+v\nwant %+v", i, got.Flows[i], want.Flows[i])
		}
	}
}

// growFlows keeps every flow, in order, across piece boundaries, and makes
// room for the asked count.
func TestGrowFlows(t *testing.T) {
	for _, n := range []int{0, 1, growPiece - 1, growPiece, growPiece + 1, 3*growPiece + 5} {
		s := make([]Flow, n)
		for i := range s {
			s[i].PacketsIn = uint64(i + 1)
			s[i].Interface = fmt.Sprint("if", i%3)
		}
		g := growFlows(s, 2*n+1)
		if len(g) != n || cap(g) < 2*n+1 {
			t.Fatalf("n=%d: len %d cap %d, want len %d cap ≥ %d", n, len(g), cap(g), n, 2*n+1)
		}
		for i := range g {
			if g[i] != s[i] {
				t.Fatalf("n=%d: flow %d is %+v, want %+v", n, i, g[i], s[i])
			}
		}
	}
}
